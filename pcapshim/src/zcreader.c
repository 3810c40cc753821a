/*
 * zcreader.c: the consumer of one queue of a zcfabric region, format
 * version 2 (ivshmem/doc.go), in C: what libzcpcap.so (zcpcap.c, which
 * includes this file) and the fuzz harness (fuzz/fuzz_reader.c, which
 * links it) share. See zcreader.h.
 *
 * Memory faults. A region is a shared mapping of a file that another
 * process can truncate (or, in a guest, a BAR that goes away); touching a
 * page past the file's new end raises SIGBUS, which would kill the tool.
 * The reader installs one SIGBUS handler when it first maps a region and
 * keeps a table of the regions it mapped. A fault inside one of them:
 *  - during a reader call (every public function here is guarded: a
 *    per-thread guard set with sigsetjmp) jumps back out of the call
 *    (siglongjmp), which fails the queue with "cluster N gone (region
 *    memory fault ...)" and never touches its memory again;
 *  - anywhere else (the tool's callback reading a packet, or a packet kept
 *    from pcap_next_ex) cannot jump, since that would abandon the tool's
 *    code half-way (a stdio lock held, say): the handler puts zero pages
 *    in place of the whole mapping (what an unplugged BAR reads) and
 *    returns, so the tool reads zeros, and the reader's next call fails
 *    the queue as gone.
 * Any other SIGBUS (another mapping, or one sent with kill) goes to the
 * handler that was installed before, or kills the process as SIGBUS does
 * by default. The Go consumer does the same with debug.SetPanicOnFault
 * (fault.go).
 */
#define _GNU_SOURCE
#include "zcreader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static inline uint32_t ld32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline uint64_t ld64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline void st32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
static inline void st64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
static inline uint32_t le32(const uint8_t *b) { uint32_t v; memcpy(&v, b, 4); return v; }
static inline uint64_t le64(const uint8_t *b) { uint64_t v; memcpy(&v, b, 8); return v; }
static inline int pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }
static uint64_t desc_ring_bytes(uint32_t s) { return align_up(RING_HDR + (uint64_t)DESC_SIZE * s, LINE); }
static uint64_t ret_ring_bytes(uint32_t s) { return align_up(RING_HDR + 4ull * s, LINE); }

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[i] = c;
	}
}

/* crc32c is CRC-32C (Castagnoli), as hash/crc32 computes it. */
static uint32_t crc32c(const uint8_t *b, size_t n)
{
	if (crc_table[1] == 0)
		crc_init();
	uint32_t c = ~0u;
	for (size_t i = 0; i < n; i++)
		c = crc_table[(c ^ b[i]) & 0xff] ^ (c >> 8);
	return ~c;
}

int64_t zcr_now_ns(int clk)
{
	struct timespec ts;
	clock_gettime((clockid_t)clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

int zcr_parse_header(const uint8_t *hdr, uint64_t size, uint32_t q, const uint8_t *qd, struct zcr_layout *l, char *err, size_t errlen)
{
	if (memcmp(hdr, "ZCFABRIC", 8) != 0) {
		snprintf(err, errlen, le64(hdr) == 0 ? "region closed (magic is zero)" : "not a zcfabric region (bad magic)");
		return -1;
	}
	uint32_t v = le32(hdr + 8);
	if (v != 2) {
		snprintf(err, errlen, "region format version %u, this library reads version 2 (host and guest binaries must read the same format version)", v);
		return -1;
	}
	uint32_t sum = crc32c(hdr, 108), want = le32(hdr + 108);
	if (sum != want) {
		snprintf(err, errlen, "bad region: header checksum %#08x, computed %#08x", want, sum);
		return -1;
	}
	if (le32(hdr + 12) != HDR_SIZE || le32(hdr + 44) != QDESC_SIZE || le32(hdr + 64) != META_SIZE) {
		snprintf(err, errlen, "bad region: header, queue descriptor or metadata size");
		return -1;
	}
	l->size = le64(hdr + 16);
	l->cluster = le32(hdr + 24);
	l->flags = le32(hdr + 28);
	l->generation = le64(hdr + 32);
	l->nqueues = le32(hdr + 40);
	l->qtable = le64(hdr + 48);
	l->bufsize = le32(hdr + 56);
	l->numbufs = le32(hdr + 60);
	uint32_t efirst = le32(hdr + 68), ecount = le32(hdr + 72);
	l->metaoff = le64(hdr + 80);
	l->bufoff = le64(hdr + 88);
	if (l->size != size || l->nqueues == 0 || l->nqueues > MAX_QUEUES || !pow2(l->bufsize) || l->bufsize < MIN_BUF ||
	    l->bufsize > MAX_BUF || l->numbufs == 0 || l->numbufs > MAX_BUFS || l->qtable < HDR_SIZE || l->qtable % LINE != 0 ||
	    (uint64_t)efirst + ecount > l->numbufs) {
		snprintf(err, errlen, "bad region: geometry (size %llu of %llu mapped, %u queues, %u buffers of %u bytes)",
			 (unsigned long long)l->size, (unsigned long long)size, l->nqueues, l->numbufs, l->bufsize);
		return -1;
	}
	/* Bounded above, so these cannot overflow. */
	uint64_t tend = l->qtable + (uint64_t)l->nqueues * QDESC_SIZE;
	uint64_t mend = l->metaoff + (uint64_t)l->numbufs * META_SIZE;
	uint64_t bend = l->bufoff + (uint64_t)l->numbufs * l->bufsize;
	if (l->metaoff > size || l->bufoff > size || tend > size || l->metaoff % 8 != 0 || l->metaoff < tend || mend > size ||
	    l->bufoff % 4096 != 0 || l->bufoff < mend || bend > size) {
		snprintf(err, errlen, "bad region: table, metadata or buffers outside the region");
		return -1;
	}
	if (qd == NULL)
		return 0;
	if (q >= l->nqueues) {
		snprintf(err, errlen, "no such queue: cluster %u has %u queues", l->cluster, l->nqueues);
		return -2;
	}
	l->slots = le32(qd + 4);
	l->dring = le64(qd + 8);
	l->rring = le64(qd + 16);
	if (le32(qd) != q || !pow2(l->slots) || l->slots < 2 || l->slots > MAX_SLOTS) {
		snprintf(err, errlen, "bad region: queue %u descriptor", q);
		return -1;
	}
	uint64_t db = desc_ring_bytes(l->slots), rb = ret_ring_bytes(l->slots);
	const uint64_t offs[2] = {l->dring, l->rring}, sizes[2] = {db, rb};
	for (int i = 0; i < 2; i++) {
		if (offs[i] % LINE != 0 || offs[i] < tend || offs[i] > l->metaoff || sizes[i] > l->metaoff - offs[i]) {
			snprintf(err, errlen, "bad region: queue %u ring outside the ring area", q);
			return -1;
		}
	}
	if (l->dring < l->rring + rb && l->rring < l->dring + db) {
		snprintf(err, errlen, "bad region: queue %u rings overlap", q);
		return -1;
	}
	return 0;
}

void zcr_seterr(struct zcr *z, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(z->err, sizeof z->err, "%s: ", z->name);
	va_start(ap, fmt);
	vsnprintf(z->err + n, sizeof z->err - n, fmt, ap);
	va_end(ap);
}

int zcr_parse_name(const char *s, uint32_t *c, uint32_t *q)
{
	if (s == NULL || strncmp(s, "zc:", 3) != 0)
		return 0;
	const char *p = s + 3;
	unsigned long long v[2];
	for (int i = 0; i < 2; i++) {
		if (*p < '0' || *p > '9')
			return -1;
		char *end;
		errno = 0;
		v[i] = strtoull(p, &end, 10);
		if (errno != 0 || v[i] > 0xffffffffull)
			return -1;
		p = end;
		if (i == 0 && *p++ != '@')
			return -1;
	}
	if (*p != 0)
		return -1;
	*c = (uint32_t)v[0];
	*q = (uint32_t)v[1];
	return 1;
}

static const char *zc_dir(void)
{
	const char *d = getenv("ZC_DIR");
	return d != NULL && *d != 0 ? d : "/dev/shm";
}

static int device_gone(struct zcr *z);

/* region_ok is ivshmem's Layout.Check: the region is still the
 * incarnation we attached to and ready. In a guest, the device must still
 * be in sysfs too: an unplugged BAR's stale mapping reads zeros (the
 * magic check), and its sysfs directory vanishes first. */
static int region_ok(struct zcr *z)
{
	if (z->faulted) {
		zcr_seterr(z, "cluster %u gone (region memory fault: its file was truncated or replaced under the mapping)", z->cluster);
		return 0;
	}
	if (device_gone(z)) {
		zcr_seterr(z, "cluster %u gone (region unplugged: its ivshmem device left %s)", z->cluster, z->devdir);
		return 0;
	}
	if (memcmp(z->base, "ZCFABRIC", 8) != 0 || ld64(z->base + 32) != z->l.generation) {
		zcr_seterr(z, "cluster %u gone (region unplugged or re-created)", z->cluster);
		return 0;
	}
	if (ld32(z->base + 128) != STATE_READY) {
		zcr_seterr(z, "cluster %u closed by its creator", z->cluster);
		return 0;
	}
	return 1;
}

/* fail marks the queue failed for good; a corrupt ring on a region that
 * went away is reported as gone. */
static int fail(struct zcr *z, const char *what)
{
	if (!z->failed) {
		z->failed = 1;
		if (region_ok(z))
			zcr_seterr(z, "%s (broken or hostile producer)", what);
		else
			z->gone = 1;
	}
	return ZCR_ERR;
}

static uint8_t *qdesc(struct zcr *z) { return z->base + z->l.qtable + (uint64_t)z->queue * QDESC_SIZE; }

/* owner_tag is zc's ownerTag: the tag of this process's claims on side.
 * On the host TAG_NONE in the kernel's initial pid namespace, else its
 * namespace's ivshmem.NSTag (its inode's number among namespaces, one
 * up). In a guest TAG_NESTED outside the initial namespace, else
 * ivshmem.BootTag of /proc/sys/kernel/random/boot_id (trimmed): FNV-1a,
 * folded to 1..TAG_NESTED-1; TAG_NONE when it cannot be read. */
static uint32_t owner_tag(uint32_t side)
{
	char ns[64], id[64];
	unsigned long long ino = 0;
	ssize_t k = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
	if (k >= 0)
		ns[k] = 0;
	if (k < 0 || strcmp(ns, "pid:[4026531836]") != 0) {
		if (side != SIDE_HOST || k < 0 || sscanf(ns, "pid:[%llu]", &ino) != 1 || ino < NS_FIRST || ino - NS_FIRST >= TAG_NESTED - 1)
			return TAG_NESTED;
		return (uint32_t)(ino - NS_FIRST) + 1;
	}
	if (side == SIDE_HOST)
		return TAG_NONE;
	FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
	if (f == NULL)
		return TAG_NONE;
	size_t n = fread(id, 1, sizeof id - 1, f);
	fclose(f);
	while (n > 0 && (id[n - 1] == '\n' || id[n - 1] == ' '))
		n--;
	if (n == 0)
		return TAG_NONE;
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)id[i];
		h *= 16777619u;
	}
	return 1 + h % (TAG_NESTED - 1);
}

/* pid_alive is zc's processAlive: kill(pid, 0) finds it, and it is not a
 * zombie. */
static int pid_alive(uint32_t pid)
{
	char path[64], b[512];
	if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
		return 0;
	snprintf(path, sizeof path, "/proc/%u/stat", pid);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return 1;
	size_t n = fread(b, 1, sizeof b - 1, f);
	fclose(f);
	b[n] = 0;
	char *p = strrchr(b, ')');
	return !(p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'));
}

/* nested_alive is zc's nestedAlive: from the initial pid namespace,
 * whether the pid namespace NSTag tag names has a live process whose pid
 * there is pid: one whose last NSpid (/proc/P/status) is pid, in a nested
 * namespace (more than one NSpid), whose /proc/P/ns/pid names it. When
 * /proc cannot be read, or such a process's namespace cannot (a user who
 * may not look at others' processes), it says alive. */
static int nested_alive(uint32_t tag, uint32_t pid)
{
	char want[64], path[64], link[64], line[256];
	DIR *d = opendir("/proc");
	if (d == NULL)
		return 1;
	snprintf(want, sizeof want, "pid:[%llu]", NS_FIRST + (unsigned long long)tag - 1);
	struct dirent *e;
	int alive = 0, unknown = 0;
	while (!alive && (e = readdir(d)) != NULL) {
		char *end;
		unsigned long p = strtoul(e->d_name, &end, 10);
		if (*end != 0 || e->d_name[0] == 0)
			continue;
		snprintf(path, sizeof path, "/proc/%lu/status", p);
		FILE *f = fopen(path, "re");
		if (f == NULL)
			continue;
		int nested = 0;
		while (fgets(line, sizeof line, f) != NULL) {
			if (strncmp(line, "NSpid:", 6) != 0)
				continue;
			char *first = strchr(line, '\t'), *last = strrchr(line, '\t');
			nested = first != NULL && last != first && strtoul(last + 1, NULL, 10) == pid;
			break;
		}
		fclose(f);
		if (!nested)
			continue;
		snprintf(path, sizeof path, "/proc/%lu/ns/pid", p);
		ssize_t k = readlink(path, link, sizeof link - 1);
		if (k < 0) {
			if (errno != ENOENT)
				unknown = 1; /* not ours to look at: it might be the one */
			continue;
		}
		link[k] = 0;
		if (strcmp(link, want) == 0)
			alive = pid_alive((uint32_t)p);
	}
	closedir(d);
	return alive || unknown;
}

/* owner_stale reports whether the holder of an owner word is gone, as
 * zc's region.stale judges it. A host owner seen from a host process: of
 * the same pid namespace (the same tag), by its pid; of a tagged nested
 * namespace seen from the initial one, gone with its namespace or when
 * no process there has its pid. A guest owner seen from the same guest in
 * a region only its VM maps (FLAG_ONE_VM), when both carry a boot tag
 * (ivshmem.GuestOwnerGone): gone when its tag is another boot's, else
 * when its pid is. The host cannot see a guest's processes, nor a guest
 * the host's or another VM's, nor a container the processes outside it. */
static int owner_stale(struct zcr *z, uint64_t cur)
{
	uint32_t side = (uint32_t)(cur >> 32), pid = (uint32_t)cur & ((1u << PID_BITS) - 1);
	uint32_t tag = (uint32_t)cur >> PID_BITS, mine = (uint32_t)z->owner >> PID_BITS;
	if (side != z->side)
		return 0;
	if (side == SIDE_GUEST) {
		if (!(z->l.flags & FLAG_ONE_VM) || mine == TAG_NONE || mine == TAG_NESTED || tag == TAG_NONE || tag == TAG_NESTED)
			return 0;
		if (tag != mine)
			return 1;
		return !pid_alive(pid);
	}
	if (side != SIDE_HOST || tag == TAG_NESTED)
		return 0;
	if (tag == mine)
		return !pid_alive(pid);
	if (mine == TAG_NONE)
		return !nested_alive(tag, pid);
	return 0;
}


/* ---- memory faults (see the top of this file) ---- */

#define MAXMAP 64

/* maps: the regions mapped, for the SIGBUS handler. */
static struct {
	uint8_t *volatile base;
	volatile uint64_t size;
	struct zcr *volatile r; /* NULL: a mapping being listed */
} maps[MAXMAP];

/* guard is a reader call in progress on this thread. */
struct guard {
	sigjmp_buf jb;
	struct guard *prev;
	const uint8_t *base; /* the region it touches */
};
static __thread struct guard *cur_guard __attribute__((tls_model("initial-exec")));

static struct sigaction old_bus;
static int bus_installed;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	if (si != NULL && si->si_code > 0) { /* a fault, not a kill(2) */
		uintptr_t a = (uintptr_t)si->si_addr;
		for (int i = 0; i < MAXMAP; i++) {
			uint8_t *b = __atomic_load_n(&maps[i].base, __ATOMIC_ACQUIRE);
			uint64_t n = maps[i].size;
			if (b == NULL || a < (uintptr_t)b || a - (uintptr_t)b >= n)
				continue;
			int e = errno;
			void *m = mmap(b, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
			errno = e;
			struct zcr *r = maps[i].r;
			if (r != NULL)
				r->faulted = 1;
			struct guard *g = cur_guard;
			if (g != NULL && g->base == b)
				siglongjmp(g->jb, 1);
			if (m != MAP_FAILED)
				return; /* the access is retried, and reads zeros */
			break;
		}
	}
	if (old_bus.sa_flags & SA_SIGINFO) {
		if (old_bus.sa_sigaction != NULL)
			old_bus.sa_sigaction(sig, si, uc);
		return;
	}
	if (old_bus.sa_handler != SIG_DFL && old_bus.sa_handler != SIG_IGN) {
		old_bus.sa_handler(sig);
		return;
	}
	/* The default action (a fault cannot be ignored): die of SIGBUS. */
	signal(SIGBUS, SIG_DFL);
	raise(SIGBUS);
}

/* install_handler installs on_sigbus once, keeping the handler it
 * replaces for the faults that are not ours. SA_NODEFER: SIGBUS stays
 * unblocked after a siglongjmp out of the handler (sigsetjmp saves no
 * mask: that would cost a system call per reader call). */
static void install_handler(void)
{
	if (__atomic_exchange_n(&bus_installed, 1, __ATOMIC_ACQ_REL))
		return;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_bus);
}

/* map_add records a mapping for the handler; it returns its slot, or -1
 * when the table is full (the mapping is then unguarded). */
static int map_add(uint8_t *base, uint64_t size, struct zcr *r)
{
	install_handler();
	for (int i = 0; i < MAXMAP; i++) {
		uint8_t *none = NULL;
		if (__atomic_load_n(&maps[i].base, __ATOMIC_ACQUIRE) != NULL)
			continue;
		maps[i].size = size;
		maps[i].r = r;
		if (__atomic_compare_exchange_n(&maps[i].base, &none, base, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return i;
	}
	return -1;
}

static void map_del(int slot)
{
	if (slot >= 0)
		__atomic_store_n(&maps[slot].base, NULL, __ATOMIC_RELEASE);
}

/* GUARDED runs stmt with faults on z's region jumping to onfault. The
 * variables stmt assigns are read only when it did not fault. */
#define GUARDED(z, onfault, stmt)                                                  \
	do {                                                                       \
		struct guard g_;                                                   \
		g_.prev = cur_guard;                                               \
		g_.base = (z)->base;                                               \
		if (sigsetjmp(g_.jb, 0) != 0) {                                    \
			cur_guard = g_.prev;                                       \
			faulted(z);                                                \
			onfault;                                                   \
		}                                                                  \
		cur_guard = &g_;                                                   \
		stmt;                                                              \
		cur_guard = g_.prev;                                               \
	} while (0)

static void faulted(struct zcr *z)
{
	z->faulted = 1;
	if (!z->gone || !z->failed)
		zcr_seterr(z, "cluster %u gone (region memory fault: its file was truncated or replaced under the mapping)", z->cluster);
	z->failed = z->gone = 1;
}

/* copy_mapped copies n bytes at off of a mapping that is not a reader's
 * (a device being looked at); it returns -1 if that faulted. */
static int copy_mapped(void *dst, uint8_t *base, uint64_t size, uint64_t off, size_t n)
{
	if (off > size || n > size - off)
		return -1;
	struct zcr tmp;
	tmp.base = base;
	tmp.cluster = 0;
	tmp.name[0] = 0;
	int slot = map_add(base, size, NULL);
	int r = -1;
	GUARDED(&tmp, map_del(slot); return -1, memcpy(dst, base + off, n); r = 0);
	map_del(slot);
	return r;
}

/* ---- guests: ivshmem devices (guest.Find, guest.Resolve) ---- */

#define IVSHMEM_VENDOR 0x1af4
#define IVSHMEM_DEVICE 0x1110
#define REG_DOORBELL 12 /* BAR0: peer << 16 | vector rings a peer */

static const char *zc_sysfs(void)
{
	const char *d = getenv("ZC_SYSFS");
	return d != NULL && *d != 0 ? d : "/sys";
}

/* has_id reports whether sysfs attribute dir/name holds want ("0x1af4"). */
static int has_id(const char *dir, const char *name, unsigned long want)
{
	char path[1024], buf[32];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 2)
		return 0;
	buf[n] = 0;
	char *end;
	unsigned long v = strtoul(buf, &end, 16);
	return buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X') && end != buf && (*end == 0 || *end == '\n') && v == want;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* ivshmem_devices lists the ivshmem devices (vendor 0x1af4, device
 * 0x1110) under the sysfs root's bus/pci/devices, sorted by address as
 * guest.Find does: *out is a malloc'd array of malloc'd addresses. It
 * returns how many, 0 when there is no such directory. */
static int ivshmem_devices(char ***out)
{
	char dir[1024];
	snprintf(dir, sizeof dir, "%s/bus/pci/devices", zc_sysfs());
	*out = NULL;
	DIR *d = opendir(dir);
	if (d == NULL)
		return 0;
	char **v = NULL;
	int n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char dev[1300];
		if (e->d_name[0] == '.' || strlen(e->d_name) > 255)
			continue;
		snprintf(dev, sizeof dev, "%s/%s", dir, e->d_name);
		if (!has_id(dev, "vendor", IVSHMEM_VENDOR) || !has_id(dev, "device", IVSHMEM_DEVICE))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 8;
			char **nv = realloc(v, (size_t)cap * sizeof *v);
			if (nv == NULL)
				break;
			v = nv;
		}
		if ((v[n] = strdup(e->d_name)) == NULL)
			break;
		n++;
	}
	closedir(d);
	qsort(v, (size_t)n, sizeof *v, cmp_str);
	*out = v;
	return n;
}

static void free_strs(char **v, int n)
{
	for (int i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* map_file maps path (a region file, or a device's resource2: sysfs
 * gives it the size of its BAR) read-write and shared. It returns 0, or
 * -1 with errno set (EINVAL: a size no region can have; ENODATA: a BAR
 * that is not assigned). */
static int map_file(const char *path, int flags, int *fd, uint8_t **base, uint64_t *size)
{
	*fd = open(path, O_RDWR | O_CLOEXEC | flags);
	if (*fd < 0)
		return -1;
	struct stat st;
	int e = 0;
	if (fstat(*fd, &st) != 0)
		e = errno;
	else if (st.st_size == 0)
		e = ENODATA;
	else if (st.st_size < (off_t)HDR_SIZE || (uint64_t)st.st_size > MAX_REGION)
		e = EINVAL;
	if (e == 0) {
		void *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
		if (m != MAP_FAILED) {
			*base = m;
			*size = (uint64_t)st.st_size;
			return 0;
		}
		e = errno;
	}
	close(*fd);
	*fd = -1;
	errno = e;
	return -1;
}

/* map_device maps the BAR2 of ivshmem device addr (guest.Device.Map): it
 * writes "1" to its enable attribute first (harmless when enabled,
 * absent in fake trees), then maps resource2. */
static int map_device(const char *addr, char *dir, size_t dirlen, int *fd, uint8_t **base, uint64_t *size)
{
	char path[1100];
	if ((size_t)snprintf(dir, dirlen, "%s/bus/pci/devices/%s", zc_sysfs(), addr) >= dirlen) {
		errno = ENAMETOOLONG;
		return -1;
	}
	snprintf(path, sizeof path, "%s/enable", dir);
	int efd = open(path, O_WRONLY | O_CLOEXEC);
	if (efd >= 0) {
		if (write(efd, "1", 1) < 0) {
			/* ignored, as guest.Device.Map does */
		}
		close(efd);
	}
	snprintf(path, sizeof path, "%s/resource2", dir);
	return map_file(path, O_SYNC, fd, base, size);
}

/* region_cluster is guest.ClusterID: the cluster id of a mapped region,
 * read without validating the rest; -1 when it does not start with the
 * magic (an unplugged BAR reads zeros). */
static int64_t region_cluster(const uint8_t *b, uint64_t size)
{
	if (size < 28 || memcmp(b, "ZCFABRIC", 8) != 0)
		return -1;
	return le32(b + 24);
}

/* find_guest is guest.Resolve: the first ivshmem device (by address)
 * whose region names cluster c, left mapped in z. It returns 0, or
 * ZCR_NODEV with why in msg. */
static int find_guest(struct zcr *z, char *msg, size_t msglen)
{
	char **addrs;
	int n = ivshmem_devices(&addrs), skipped = 0, first_err = 0;
	for (int i = 0; i < n; i++) {
		int fd;
		uint8_t *b;
		uint64_t size;
		char dir[sizeof z->devdir];
		if (map_device(addrs[i], dir, sizeof dir, &fd, &b, &size) != 0) {
			if (errno != ENODATA && skipped++ == 0)
				first_err = errno;
			continue;
		}
		uint8_t id[28];
		if (copy_mapped(id, b, size, 0, sizeof id) != 0 || region_cluster(id, size) != (int64_t)z->cluster) {
			munmap(b, size);
			close(fd);
			continue;
		}
		z->fd = fd;
		z->base = b;
		z->size = size;
		z->side = SIDE_GUEST;
		snprintf(z->devdir, sizeof z->devdir, "%s", dir);
		free_strs(addrs, n);
		return 0;
	}
	free_strs(addrs, n);
	if (skipped > 0)
		snprintf(msg, msglen, "no ivshmem device carries it among %d under %s/bus/pci/devices (%d could not be mapped: %s)", n,
			 zc_sysfs(), skipped, strerror(first_err));
	else
		snprintf(msg, msglen, "no ivshmem device carries it among %d under %s/bus/pci/devices", n, zc_sysfs());
	return ZCR_NODEV;
}

/* device_gone reports whether a guest's ivshmem device left sysfs, as it
 * does when the host unplugs it (guest.Gone). */
static int device_gone(struct zcr *z)
{
	struct stat st;
	return z->side == SIDE_GUEST && z->devdir[0] != 0 && stat(z->devdir, &st) != 0 && errno == ENOENT;
}

/* open_bell maps the Doorbell register of a guest's device (BAR0), once:
 * only an ivshmem-doorbell device has one (its MSI-X table is BAR1:
 * resource1). It returns whether the reader can ring the host. */
static int open_bell(struct zcr *z)
{
	if (z->side == SIDE_GUEST && !z->regs_tried) {
		z->regs_tried = 1;
		char path[1100];
		struct stat st;
		snprintf(path, sizeof path, "%s/resource1", z->devdir);
		if (stat(path, &st) != 0)
			return 0;
		snprintf(path, sizeof path, "%s/resource0", z->devdir);
		int fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
		if (fd < 0)
			return 0;
		if (fstat(fd, &st) == 0 && st.st_size >= REG_DOORBELL + 4) {
			void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (m != MAP_FAILED)
				z->regs = m;
		}
		close(fd);
	}
	return z->regs != NULL;
}

/* ring_host rings peer 0 (the host agent), vector 0, through the Doorbell
 * register (guest.Doorbell.Ring): a host producer asleep waiting for our
 * returns, woken by the agent's relay. */
static void ring_host(struct zcr *z)
{
	if (open_bell(z))
		st32(z->regs + REG_DOORBELL, 0);
}

/* ---- guests: a doorbell's interrupts, shared (guest/share.go) ----
 *
 * VFIO lets one process of a guest hold an ivshmem-doorbell device. The
 * Go library's holder passes each interrupt on to the guest's other
 * processes that subscribe (an eventfd each) together with its VFIO
 * descriptors, which they keep. When the last process holding a device
 * closes it, vfio-pci disables and resets it (memory decoding off, then
 * a secondary bus reset), and BAR2 reads zeros for a while: a reader that
 * maps it takes its region for unplugged.
 *
 * So the reader subscribes too, whenever a holder listens (tried at most
 * every SHARE_RETRY_NS while idle or every 256 bursts): it sleeps on its
 * eventfd instead of polling, and keeps the descriptors. When the holder
 * stops and nobody takes over, the reader, holding the device, listens in
 * its place without taking the interrupts (it polls): it only lends the
 * descriptors. It arms the device request (an unplug) so that it lets
 * the device go when asked. A Go reader that connects is handed the
 * descriptors (SHARE_TAKE) and holds the interrupts from then on; another
 * reader of this library says so first (SHARE_SHIM) and gets copies
 * (SHARE_LEND). */

#define SHARE_HELLO 'H' /* holder: an eventfd and the VFIO descriptors */
#define SHARE_GONE 'G'  /* holder: the device is being unplugged */
#define SHARE_TAKE 'T'  /* lender to a Go reader: the VFIO descriptors, take the interrupts */
#define SHARE_SHIM 'S'  /* this library, as it connects: do not hand me the interrupts */
#define SHARE_LEND 'L'  /* lender to this library: copies of the VFIO descriptors */
#define SHARE_RETRY_NS 250000000ll
#define LEND_BACKOFF_NS 2000000000ll

/* share_addr is guest.shareName: the abstract unix socket of the holder
 * of the interrupts of the device at sysfs directory dir,
 * "zcfabric-doorbell-" and the FNV-1a (64-bit) hash of dir in hex. */
static socklen_t share_addr(const char *dir, struct sockaddr_un *a)
{
	uint64_t h = 14695981039346656037ull;
	for (const char *p = dir; *p != 0; p++) {
		h ^= (uint8_t)*p;
		h *= 1099511628211ull;
	}
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "zcfabric-doorbell-%016llx", (unsigned long long)h);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* keep_fds keeps the 3 VFIO descriptors in fds in place of those kept
 * before: the same open device (a holder that took over passes what it
 * was passed), so closing those releases nothing. */
static void keep_fds(struct zcr *z, const int *fds)
{
	for (int i = 0; i < 3; i++) {
		close_fd(&z->vfio_fd[i]);
		z->vfio_fd[i] = fds[i];
	}
}

/* unsubscribe ends the subscription; with all, it also stops lending and
 * closes the VFIO descriptors kept (the device is being unplugged, or the
 * reader detaches). */
static void unsubscribe(struct zcr *z, int all)
{
	close_fd(&z->share_fd);
	close_fd(&z->bell_fd);
	if (all) {
		close_fd(&z->lend_fd);
		close_fd(&z->req_fd);
		for (int i = 0; i < 3; i++)
			close_fd(&z->vfio_fd[i]);
	}
}

/* send_fds sends byte b with the descriptors fds[0:n] on socket s. */
static int send_fds(int s, char b, const int *fds, int n)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} u;
	memset(&u, 0, sizeof u);
	struct iovec iov = {&b, 1};
	struct msghdr m;
	memset(&m, 0, sizeof m);
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = u.buf;
	m.msg_controllen = CMSG_SPACE((size_t)n * sizeof(int));
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN((size_t)n * sizeof(int));
	memcpy(CMSG_DATA(c), fds, (size_t)n * sizeof(int));
	return sendmsg(s, &m, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

/* recv_fds receives one byte into *b and up to 4 descriptors into fds
 * (close-on-exec); it returns how many descriptors, or -1 (none kept). */
static int recv_fds(int s, char *b, int *fds)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} u;
	struct iovec iov = {b, 1};
	struct msghdr m;
	memset(&m, 0, sizeof m);
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = u.buf;
	m.msg_controllen = sizeof u.buf;
	ssize_t n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
	int nfd = 0;
	if (n >= 0)
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
				if (nfd < 4)
					fds[nfd++] = fd;
				else
					close(fd);
			}
		}
	if (n != 1 || (m.msg_flags & MSG_CTRUNC) != 0) {
		for (int i = 0; i < nfd; i++)
			close(fds[i]);
		return -1;
	}
	return nfd;
}

/* subscribe is guest.dialShare: it connects to the process of the guest
 * that listens for the device, if one does, and takes its answer: from a
 * holder of the interrupts SHARE_HELLO, an eventfd and (from holders that
 * pass them) its VFIO descriptors; from a reader lending them, copies of
 * the descriptors (SHARE_LEND), or all of them to take over (SHARE_TAKE,
 * from a lender that does not know this library). */
static void subscribe(struct zcr *z, int64_t now)
{
	if (z->share_fd >= 0 || z->lend_fd >= 0 || now < z->sub_next)
		return;
	z->sub_next = now + SHARE_RETRY_NS;
	struct sockaddr_un a;
	socklen_t alen = share_addr(z->devdir, &a);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return;
	struct timeval tv = {1, 0}; /* whoever listens answers at once */
	char b = SHARE_SHIM;
	if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 || connect(s, (struct sockaddr *)&a, alen) != 0 ||
	    send(s, &b, 1, MSG_NOSIGNAL) != 1) {
		close(s);
		return;
	}
	int fds[4];
	int nfd = recv_fds(s, &b, fds);
	if (b == SHARE_HELLO && (nfd == 1 || nfd == 4)) {
		z->share_fd = s;
		z->bell_fd = fds[0]; /* non-blocking: the holder made it so */
		if (nfd == 4)
			keep_fds(z, fds + 1);
		return;
	}
	if ((b == SHARE_LEND || b == SHARE_TAKE) && nfd == 3) {
		if (z->vfio_fd[0] < 0)
			keep_fds(z, fds);
		else
			for (int i = 0; i < 3; i++)
				close(fds[i]);
		z->sub_next = now + LEND_BACKOFF_NS; /* a lender listens: no interrupts there for a while */
	} else {
		for (int i = 0; i < nfd; i++)
			close(fds[i]);
	}
	close(s);
}

/* arm_request routes the device request (vfio-pci asks for the device
 * back: an unplug) to a fresh eventfd of ours, on the device descriptor
 * kept (guest.vfio.arm does it for the holder). It returns 0 or -1. */
static int arm_request(struct zcr *z)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (fd < 0)
		return -1;
	/* struct vfio_irq_set (argsz, flags, index, start, count) and its
	 * data: one eventfd */
	uint32_t set[6] = {sizeof set, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1,
			   (uint32_t)fd};
	if (ioctl(z->vfio_fd[0], VFIO_DEVICE_SET_IRQS, set) != 0) {
		close(fd);
		return -1;
	}
	close_fd(&z->req_fd);
	z->req_fd = fd;
	return 0;
}

/* lend starts lending the descriptors kept when nobody listens for the
 * device (the name is free: binding it is what makes us the lender) and
 * arms the device request. Without the request armed it lets the device
 * go: an unplug must never wait for a reader. */
static void lend(struct zcr *z, int64_t now)
{
	if (z->vfio_fd[0] < 0 || z->share_fd >= 0 || z->lend_fd >= 0 || now < z->lend_next)
		return;
	z->lend_next = now + SHARE_RETRY_NS;
	struct sockaddr_un a;
	socklen_t alen = share_addr(z->devdir, &a);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return;
	if (bind(s, (struct sockaddr *)&a, alen) != 0 || listen(s, 8) != 0) {
		close(s); /* EADDRINUSE: somebody listens; subscribe to it */
		return;
	}
	z->lend_fd = s;
	if (arm_request(z) != 0)
		unsubscribe(z, 1);
}

/* lend_accept answers whoever connected to the lender: copies of the
 * descriptors to a reader of this library, all of them to a Go reader,
 * which takes the interrupts over (guest.Doorbell.adopt): the lender
 * stops listening first, so that it can listen, then subscribes to it. */
static void lend_accept(struct zcr *z, int64_t now)
{
	for (;;) {
		int c = accept4(z->lend_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			return;
		struct pollfd pf = {c, POLLIN, 0};
		char b = 0;
		if (poll(&pf, 1, 100) == 1 && recv(c, &b, 1, MSG_DONTWAIT) == 1 && b == SHARE_SHIM) {
			send_fds(c, SHARE_LEND, z->vfio_fd, 3);
			close(c);
			continue;
		}
		/* A Go reader: it sends nothing. */
		close_fd(&z->lend_fd);
		close_fd(&z->req_fd); /* the taker arms its own */
		send_fds(c, SHARE_TAKE, z->vfio_fd, 3);
		close(c);
		z->sub_next = now;
		z->lend_next = now + LEND_BACKOFF_NS; /* let the taker listen */
		return;
	}
}

/* share_news reads what the holder sent: an unplug (SHARE_GONE: close
 * everything kept, so that the unplug completes, and never subscribe
 * again), or the end of the connection (the holder closed the doorbell or
 * exited: keep the VFIO descriptors and subscribe to whichever process
 * takes the interrupts over). A lender looks at the device request. */
static void share_news(struct zcr *z)
{
	uint64_t v;
	if (z->req_fd >= 0 && read(z->req_fd, &v, sizeof v) == (ssize_t)sizeof v) {
		unsubscribe(z, 1);
		z->sub_next = INT64_MAX;
		return;
	}
	if (z->share_fd < 0)
		return;
	char b;
	ssize_t n = recv(z->share_fd, &b, 1, MSG_DONTWAIT);
	if (n == 1 && b == SHARE_GONE) {
		unsubscribe(z, 1);
		z->sub_next = INT64_MAX;
	} else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
		unsubscribe(z, 0);
		z->sub_next = 0;
	}
}

/* share_tend is the reader's part in sharing the device (above): news
 * from the holder or the kernel, then subscribing, lending, answering. */
static void share_tend(struct zcr *z)
{
	if (z->side != SIDE_GUEST || z->devdir[0] == 0 || z->sub_next == INT64_MAX)
		return;
	share_news(z);
	if (z->sub_next == INT64_MAX || !open_bell(z))
		return; /* unplugged, or ivshmem-plain: no interrupts to share */
	int64_t now = zcr_now_ns(CLOCK_MONOTONIC);
	if (z->lend_fd >= 0) {
		lend_accept(z, now);
		return;
	}
	subscribe(z, now);
	lend(z, now);
}

/* announce stores our next sleep's number and code in the data ring's
 * wake word (the need_wakeup protocol of ivshmem/doc.go, "Sleeping and
 * waking"), then returns the producer index to look at again: sleep only
 * if it is still z->dpos. withdraw clears the word once awake. */
static uint32_t announce(struct zcr *z, uint32_t code)
{
	uint32_t *wake = (uint32_t *)(z->dr + R_WAKE);
	if (z->sleep_no == 0) /* number our sleeps after the last reader's */
		z->sleep_no = __atomic_load_n(wake, __ATOMIC_SEQ_CST) >> 2;
	z->sleep_no++;
	__atomic_store_n(wake, z->sleep_no << 2 | code, __ATOMIC_SEQ_CST);
	return __atomic_load_n((uint32_t *)(z->dr + R_PROD), __ATOMIC_SEQ_CST);
}

static void withdraw(struct zcr *z)
{
	__atomic_store_n((uint32_t *)(z->dr + R_WAKE), z->sleep_no << 2, __ATOMIC_SEQ_CST);
	z->nap_ns = 0;
}

/* bell_sleep is zc.Queue.sleepBell for a subscribed reader: announce on
 * the data ring (WAKE_DOORBELL), look again, ask the agent to watch the
 * ring when its producer does not ring, then sleep on the eventfd (at
 * most max_ns, and 100 ms: pcap_breakloop and the region are looked at
 * that often), awake early on news from the holder. */
static void bell_sleep(struct zcr *z, int64_t max_ns)
{
	if (announce(z, WAKE_DOORBELL) == z->dpos && max_ns > 0) {
		if (ld32(z->dr + R_RINGS) != 1)
			ring_host(z);
		if (max_ns > 100000000)
			max_ns = 100000000;
		struct pollfd pf[2] = {{z->bell_fd, POLLIN, 0}, {z->share_fd, POLLIN, 0}};
		if (poll(pf, 2, (int)((max_ns + 999999) / 1000000)) > 0) {
			uint64_t v;
			if ((pf[0].revents & POLLIN) != 0 && read(z->bell_fd, &v, sizeof v) < 0) {
				/* EAGAIN: another reader's wake-up took it; nothing to do */
			}
			if (pf[1].revents != 0)
				share_news(z);
		}
		z->sleeps++;
		z->bell_sleeps++;
		z->idle |= 63; /* look at the region on the next empty poll */
	}
	withdraw(z);
}

static int attach_mapped(struct zcr *z, const char *path);

/* unclaim frees the consumer owner word if it is still ours. */
static void unclaim(struct zcr *z)
{
	uint64_t mine = z->owner;
	__atomic_compare_exchange_n((uint64_t *)(qdesc(z) + Q_CONS_OWNER), &mine, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* attach maps the region and claims the consumer end (zc.Open): the host
 * region $ZC_DIR/zc-C, else (in a guest) the ivshmem device that carries
 * cluster C. It returns 0 or a ZCR_ERR code with z->err set. */
static int attach(struct zcr *z)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/zc-%u", zc_dir(), z->cluster);
	z->side = SIDE_HOST;
	if (map_file(path, 0, &z->fd, &z->base, &z->size) != 0) {
		int e = errno;
		if (e == ENOENT) {
			char msg[512];
			if (find_guest(z, msg, sizeof msg) != 0) {
				zcr_seterr(z, "no such cluster %u (no %s; is zchost running with -c %u? %s)", z->cluster, path, z->cluster, msg);
				return ZCR_NODEV;
			}
			snprintf(path, sizeof path, "%s/resource2", z->devdir);
		} else if (e == EINVAL || e == ENODATA) {
			zcr_seterr(z, "%s: not a region (size)", path);
			return ZCR_ERR;
		} else {
			zcr_seterr(z, "open %s: %s", path, strerror(e));
			return e == EACCES || e == EPERM ? ZCR_PERM : ZCR_ERR;
		}
	}
	z->mapped = 1;
	z->fault_slot = map_add(z->base, z->size, z);
	return attach_mapped(z, path);
}

/* attach_mapped is zcr_attach_mapped, guarded by its caller. */
static int attach_mapped(struct zcr *z, const char *path)
{
	uint8_t hdr[HDR_SIZE], qd[QDESC_SIZE];
	memcpy(hdr, z->base, HDR_SIZE);
	char msg[256];
	int r = zcr_parse_header(hdr, z->size, z->queue, NULL, &z->l, msg, sizeof msg);
	if (r == 0 && z->queue < z->l.nqueues) {
		memcpy(qd, qdesc(z), QDESC_SIZE);
		r = zcr_parse_header(hdr, z->size, z->queue, qd, &z->l, msg, sizeof msg);
	} else if (r == 0) {
		snprintf(msg, sizeof msg, "no such queue: cluster %u has %u queues", z->cluster, z->l.nqueues);
		r = -2;
	}
	if (r != 0) {
		zcr_seterr(z, "%s: %s", path, msg);
		return r == -2 ? ZCR_NODEV : ZCR_ERR;
	}
	if (z->l.cluster != z->cluster) {
		zcr_seterr(z, "%s: bad region: it is cluster %u", path, z->l.cluster);
		return ZCR_ERR;
	}
	if (!region_ok(z))
		return ZCR_ERR;

	/* Rings, checked before the claim so a refusal changes nothing. */
	z->dr = z->base + z->l.dring;
	z->rr = z->base + z->l.rring;
	z->dslots = (struct zcr_desc *)(z->dr + RING_HDR);
	z->rslots = (uint32_t *)(z->rr + RING_HDR);

	/* Claim the consumer owner word (ivshmem.Layout.Claim). */
	uint8_t *ow = qdesc(z) + Q_CONS_OWNER;
	uint32_t tag = owner_tag(z->side);
	z->owner = (uint64_t)z->side << 32 | (uint64_t)tag << PID_BITS | ((uint32_t)getpid() & ((1u << PID_BITS) - 1));
	int replaced = 0, ok = 0;
	for (int i = 0; i < 8 && !ok; i++) {
		uint64_t cur = ld64(ow);
		if (cur != 0 && !owner_stale(z, cur)) {
			zcr_seterr(z, "queue taken: the consumer of queue %u is held by %spid %u", z->queue,
				   (uint32_t)(cur >> 32) == SIDE_GUEST ? "guest " : "", (uint32_t)cur & ((1u << PID_BITS) - 1));
			return ZCR_ERR;
		}
		if (__atomic_compare_exchange_n((uint64_t *)ow, &cur, z->owner, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
			replaced = cur != 0;
			ok = 1;
		}
	}
	if (!ok) {
		zcr_seterr(z, "queue taken: consumer of queue %u: claim contended", z->queue);
		return ZCR_ERR;
	}
	/* Take over where the previous consumer stopped. */
	z->dpos = ld32(z->dr + R_CONS);
	z->dcached = ld32(z->dr + R_PROD);
	z->rpos = ld32(z->rr + R_PROD);
	z->rcached = ld32(z->rr + R_CONS);
	if (z->dcached - z->dpos > z->l.slots || z->rpos - z->rcached > z->l.slots) {
		unclaim(z);
		zcr_seterr(z, "queue %u corrupt: ring indices out of range at attach", z->queue);
		return ZCR_ERR;
	}
	for (int i = 0; i < 3; i++)
		z->cstat[i] = ld64(z->dr + R_CONS_STAT + 8 * i);
	z->rstat = ld64(z->rr + R_PROD_STAT);
	z->drops0 = ld64(z->dr + R_PROD_STAT + 16);
	z->held = calloc((z->l.numbufs + 63) / 64, sizeof(uint64_t));
	if (z->held == NULL) {
		unclaim(z);
		zcr_seterr(z, "out of memory");
		return ZCR_ERR;
	}
	if (replaced) {
		/* The previous consumer went away without detaching: ask a live
		 * producer to take back what it held. */
		uint8_t *hs = qdesc(z) + Q_HANDSHAKE;
		z->hs_epoch = (ld32(hs) >> 2) + 1;
		__atomic_store_n((uint32_t *)hs, z->hs_epoch << 2 | HS_WAIT, __ATOMIC_SEQ_CST);
		z->hs_pending = 1;
		z->hs_deadline = zcr_now_ns(CLOCK_MONOTONIC) + HS_WAIT_NS;
	}
	/* We produce the return ring: say whether we ring the host for a
	 * producer asleep on it (zc: RingProducer.SetRings). */
	__atomic_store_n((uint32_t *)(z->rr + R_RINGS), (uint32_t)open_bell(z), __ATOMIC_SEQ_CST);
	z->attached = 1;
	return 0;
}

/* handshake_done is zc.Queue.handshakeDone: past the deadline the
 * reader gives up on the producer's answer only while packets wait for
 * it; with the queue empty it waits on, as the producer's next burst
 * answers before it is published. */
static int handshake_done(struct zcr *z)
{
	uint32_t *w = (uint32_t *)(qdesc(z) + Q_HANDSHAKE);
	uint32_t v = ld32(w), mine = z->hs_epoch << 2;
	if (v == (mine | HS_DONE) || v >> 2 != z->hs_epoch) {
		z->hs_pending = 0;
	} else {
		int64_t now = zcr_now_ns(CLOCK_MONOTONIC);
		if (now > z->hs_deadline && v == (mine | HS_WAIT) && ld32(z->dr + R_PROD) == z->dpos)
			return 0; /* nothing to read yet: the producer answers first */
		if (now > z->hs_deadline) {
			uint32_t old = v;
			if (v == (mine | HS_WAIT) && __atomic_compare_exchange_n(w, &old, mine | HS_GO, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
				z->hs_pending = 0;
			else if (now > z->hs_deadline + HS_VANISHED_NS)
				z->hs_pending = 0;
		}
	}
	return !z->hs_pending;
}

static void futex_wake(uint32_t *addr) { syscall(SYS_futex, addr, FUTEX_WAKE, 1 << 30, NULL, NULL, 0); }

/* give_back pushes the handles in z->ret onto the return ring and wakes
 * a producer that sleeps waiting for them (zc.Queue.releaseHandles). */
static int give_back(struct zcr *z)
{
	if (z->nret == 0 || z->failed)
		return z->failed ? ZCR_ERR : 0;
	uint32_t n = (uint32_t)z->nret, mask = z->l.slots - 1;
	if (z->rcached + z->l.slots - z->rpos < n) {
		uint32_t c = ld32(z->rr + R_CONS);
		if (z->rpos - c > z->l.slots)
			return fail(z, "return ring consumer index out of range");
		z->rcached = c;
		if (c + z->l.slots - z->rpos < n)
			return fail(z, "return ring full"); /* the producer never lends more than it holds */
	}
	for (uint32_t i = 0; i < n; i++) {
		uint32_t h = z->ret[i];
		z->held[h / 64] &= ~(1ull << (h % 64));
		__atomic_store_n(&z->rslots[(z->rpos + i) & mask], h, __ATOMIC_RELAXED);
	}
	z->rpos += n;
	/* Sequentially consistent, then the wake word (need_wakeup). */
	__atomic_store_n((uint32_t *)(z->rr + R_PROD), z->rpos, __ATOMIC_SEQ_CST);
	/* The word is the sleeper's number << 2 | code: answer each number once,
	 * never write it (it is the producer's, the other end's, to write). */
	uint32_t v = __atomic_load_n((uint32_t *)(z->rr + R_WAKE), __ATOMIC_SEQ_CST);
	if ((v & 3) != 0 && v != z->woken) {
		/* zc.Queue.notify: a host futex from the host, the agent's
		 * doorbell from a guest; anything else it cannot answer. */
		z->woken = v;
		if ((v & 3) == WAKE_FUTEX && z->side == SIDE_HOST) {
			futex_wake((uint32_t *)(z->rr + R_PROD));
			z->wakes++;
		} else if ((v & 3) == WAKE_DOORBELL && z->side == SIDE_GUEST) {
			ring_host(z);
			z->wakes++;
		}
	}
	z->rstat += n;
	st64(z->rr + R_PROD_STAT, z->rstat);
	z->nret = 0;
	return 0;
}

static int put_back(struct zcr *z, uint32_t h)
{
	z->ret[z->nret++] = h;
	return z->nret == MAX_BURST ? give_back(z) : 0;
}

/* note_drops reads the producer's drop counter into z->drops: on every
 * empty poll and every pcap_stats, so that the count stays what it was
 * once the queue is gone (a region unplugged or closed is not read
 * again; the producer stopped before its creator closed it). */
static void note_drops(struct zcr *z) /* inside a guarded call (fetch, zcr_drops) */
{
	uint64_t d = ld64(z->dr + R_PROD_STAT + 16);
	if (d >= z->drops0)
		z->drops = d - z->drops0;
}

/* fetch receives a burst into z->burst when it is empty
 * (zc.Queue.recvBurst). It returns the number of packets waiting in the
 * burst, 0 when the queue is empty, or ZCR_ERR. */
static int fetch(struct zcr *z)
{
	if (z->faulted && !z->failed) {
		region_ok(z); /* the message */
		z->failed = z->gone = 1;
	}
	if (z->failed)
		return ZCR_ERR;
	if (z->bi < z->bn)
		return z->bn - z->bi;
	z->bi = z->bn = 0;
	if (z->hs_pending && !handshake_done(z))
		return 0;
	uint32_t avail = z->dcached - z->dpos;
	if (avail == 0) {
		uint32_t p = ld32(z->dr + R_PROD);
		if (p - z->dpos > z->l.slots)
			return fail(z, "data ring producer index out of range");
		z->dcached = p;
		avail = p - z->dpos;
	}
	if (avail == 0) {
		if ((++z->idle & 63) == 0 && !region_ok(z)) {
			z->failed = z->gone = 1;
			return ZCR_ERR;
		}
		note_drops(z);
		return 0;
	}
	z->idle = 0;
	if ((++z->bursts & 255) == 0)
		share_tend(z); /* an unplug, or a holder to subscribe to (a busy reader keeps the device open too) */
	if ((z->bursts & 255) == 0 && !region_ok(z)) {
		/* a busy queue looks at the region too, now and then */
		z->failed = z->gone = 1;
		return ZCR_ERR;
	}
	uint32_t most = z->limit != 0 && z->limit < MAX_BURST ? z->limit : MAX_BURST;
	uint32_t n = avail < most ? avail : most, mask = z->l.slots - 1;
	struct zcr_desc d[MAX_BURST];
	for (uint32_t i = 0; i < n; i++)
		memcpy(&d[i], &z->dslots[(z->dpos + i) & mask], sizeof d[i]); /* copied once, then checked */
	z->dpos += n;
	st32(z->dr + R_CONS, z->dpos);
	int k = 0;
	uint32_t nbad = 0;
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t h = d[i].handle;
		if (h >= z->l.numbufs || (z->held[h / 64] >> (h % 64) & 1)) {
			nbad++; /* not a buffer of this region, or delivered twice */
			continue;
		}
		if (d[i].off > z->l.bufsize || d[i].len > z->l.bufsize - d[i].off) {
			nbad++; /* a real buffer with a bad descriptor: give it back */
			z->held[h / 64] |= 1ull << (h % 64);
			if (put_back(z, h) != 0)
				return ZCR_ERR;
			continue;
		}
		z->held[h / 64] |= 1ull << (h % 64);
		bytes += d[i].len;
		z->burst[k++] = d[i];
	}
	z->bn = k;
	z->cstat[0] += (uint64_t)k;
	z->cstat[1] += bytes;
	st64(z->dr + R_CONS_STAT, z->cstat[0]);
	st64(z->dr + R_CONS_STAT + 8, z->cstat[1]);
	if (nbad > 0) {
		z->bad += nbad;
		z->cstat[2] += nbad;
		st64(z->dr + R_CONS_STAT + 16, z->cstat[2]);
	}
	z->recv += (uint64_t)k;
	return k;
}

static void nap(long ns)
{
	if (ns <= 0)
		return;
	struct timespec ts = {0, ns};
	nanosleep(&ts, NULL); /* EINTR: a signal, maybe pcap_breakloop */
}

/* cannot_sleep: a guest producer cannot wake a host futex, nor a host
 * producer a futex in a guest (zc.Queue.canSleep; a guest without
 * interrupts polls). */
static int cannot_sleep(struct zcr *z) { return z->side != SIDE_HOST || (uint32_t)(ld64(qdesc(z) + Q_PROD_OWNER) >> 32) == SIDE_GUEST; }

/* wait_some waits a little for packets: short naps that grow from 50 to
 * 200 µs, and once the queue stayed empty for a while (about 40 polls) a
 * futex sleep on the producer index (the need_wakeup protocol of
 * ivshmem/doc.go, "Sleeping and waking"), at most max_ns. */
#define FREE_POLLS 64
static void wait_some(struct zcr *z, int64_t max_ns)
{
	/* z->idle counts empty polls (fetch); it looks at the region every 64.
	 * First FREE_POLLS polls that only yield the CPU (as the Go consumer's
	 * pacer: a queue refilled within microseconds is read at once, not
	 * after a nap; measured 1.4-1.8x the packets under a flood), then
	 * naps, then a futex sleep. */
	if (z->idle < FREE_POLLS) {
		sched_yield();
		return;
	}
	if (z->side == SIDE_GUEST) {
		share_tend(z);
		if (z->bell_fd >= 0 && z->idle >= FREE_POLLS + 40) {
			bell_sleep(z, max_ns);
			return;
		}
	}
	if (z->idle < FREE_POLLS + 40 || cannot_sleep(z)) {
		/* naps of 50 to 200 µs, up to 1 ms for a reader that cannot sleep */
		uint32_t most = z->idle < FREE_POLLS + 40 ? 200000 : 1000000;
		if (z->nap_ns < 50000)
			z->nap_ns = 50000;
		else if (z->nap_ns < most)
			z->nap_ns += 25000;
		if (z->nap_ns > most)
			z->nap_ns = most;
		nap(max_ns < z->nap_ns ? (long)max_ns : (long)z->nap_ns);
		return;
	}
	uint32_t p = announce(z, WAKE_FUTEX);
	if (p == z->dpos && max_ns > 0) {
		if (max_ns > 100000000)
			max_ns = 100000000; /* look at the region and at pcap_breakloop now and then */
		struct timespec ts = {max_ns / 1000000000, max_ns % 1000000000};
		syscall(SYS_futex, (uint32_t *)(z->dr + R_PROD), FUTEX_WAIT, p, &ts, NULL, 0);
		z->sleeps++;
		z->idle |= 63; /* look at the region on the next empty poll */
	}
	withdraw(z);
}

/* release gives back what the burst did not deliver. */
static void release(struct zcr *z)
{
	while (z->bi < z->bn)
		if (put_back(z, z->burst[z->bi++].handle) != 0)
			return;
	give_back(z);
}

/* detach_region gives back everything held and frees our owner word,
 * unless the region went away (its memory is not touched again). */
static void detach_region(struct zcr *z)
{
	if (z->attached && !z->gone && !z->faulted && region_ok(z)) {
		if (!z->failed)
			release(z);
		uint64_t mine = z->owner;
		__atomic_compare_exchange_n((uint64_t *)(qdesc(z) + Q_CONS_OWNER), &mine, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	}
	z->attached = 0;
}

/* ---- the API (zcreader.h): guarded entry points ---- */

void zcr_init(struct zcr *z, uint32_t c, uint32_t q)
{
	memset(z, 0, sizeof *z);
	snprintf(z->name, sizeof z->name, "zc:%u@%u", c, q);
	z->cluster = c;
	z->queue = q;
	z->fd = -1;
	z->fault_slot = -1;
	z->side = SIDE_HOST;
	z->share_fd = z->bell_fd = z->lend_fd = z->req_fd = -1;
	for (int i = 0; i < 3; i++)
		z->vfio_fd[i] = -1;
}

int zcr_attach(struct zcr *z)
{
	int r;
	GUARDED(z, return ZCR_ERR, r = attach(z));
	return r;
}

int zcr_attach_mapped(struct zcr *z, const char *path)
{
	int r;
	GUARDED(z, return ZCR_ERR, r = attach_mapped(z, path));
	return r;
}

int zcr_fetch(struct zcr *z)
{
	int n;
	GUARDED(z, return ZCR_ERR, n = fetch(z));
	return n;
}

const uint8_t *zcr_packet(struct zcr *z, const struct zcr_desc *d, int64_t now, int64_t *ts)
{
	*ts = now;
	if (d->flags & DESC_META) {
		int64_t t = 0;
		GUARDED(z, return z->base + z->l.bufoff + (uint64_t)d->handle * z->l.bufsize + d->off,
			t = (int64_t)le64(z->base + z->l.metaoff + (uint64_t)d->handle * META_SIZE));
		if (t > 0)
			*ts = t;
	}
	return z->base + z->l.bufoff + (uint64_t)d->handle * z->l.bufsize + d->off;
}

int zcr_put(struct zcr *z, uint32_t h)
{
	if (z->nret + 1 < MAX_BURST) { /* no region access: no guard (per packet) */
		z->ret[z->nret++] = h;
		return 0;
	}
	int r;
	GUARDED(z, return ZCR_ERR, r = put_back(z, h));
	return r;
}

int zcr_flush(struct zcr *z)
{
	int r;
	GUARDED(z, return ZCR_ERR, r = give_back(z));
	return r;
}

void zcr_wait(struct zcr *z, int64_t max_ns)
{
	if (z->failed)
		return;
	GUARDED(z, return, wait_some(z, max_ns));
}

void zcr_release(struct zcr *z)
{
	if (z->failed)
		return;
	GUARDED(z, return, release(z));
}

int zcr_region_ok(struct zcr *z)
{
	int ok;
	GUARDED(z, return 0, ok = region_ok(z));
	return ok;
}

uint64_t zcr_drops(struct zcr *z)
{
	if (!z->gone && z->dr != NULL && !z->faulted)
		GUARDED(z, (void)0, note_drops(z));
	return z->drops;
}

void zcr_detach(struct zcr *z)
{
	if (z->base != NULL) {
		GUARDED(z, (void)0, detach_region(z));
		z->attached = 0;
		map_del(z->fault_slot);
		z->fault_slot = -1;
		if (z->mapped)
			munmap(z->base, z->size);
		z->base = NULL;
		z->mapped = 0;
	}
	unsubscribe(z, 1);
	if (z->regs != NULL)
		munmap(z->regs, 4096);
	z->regs = NULL;
	if (z->fd >= 0)
		close(z->fd);
	z->fd = -1;
	free(z->held);
	z->held = NULL;
}

/* ---- listing the queues (pcap_findalldevs) ---- */

/* add_queue lists queue q of cluster id (region flags), whose descriptor
 * (copied out) is qd; dev names the guest's ivshmem device, NULL on a
 * host. A consumer this process can tell is gone (as a reader taking its
 * place would judge it: owner_stale) is said to be. */
static int add_queue(zcr_add_fn add, void *arg, uint32_t id, uint32_t flags, uint32_t q, const uint8_t *qd, const char *dev)
{
	uint64_t cons = le64(qd + Q_CONS_OWNER);
	char name[48], desc[400], where[300] = "";
	snprintf(name, sizeof name, "zc:%u@%u", id, q);
	if (dev != NULL)
		snprintf(where, sizeof where, ", ivshmem device %s", dev);
	if (cons == 0) {
		snprintf(desc, sizeof desc, "zcfabric cluster %u queue %u%s", id, q, where);
		return add(arg, name, desc);
	}
	struct zcr me;
	memset(&me, 0, sizeof me);
	me.side = dev != NULL ? SIDE_GUEST : SIDE_HOST;
	me.owner = (uint64_t)me.side << 32 | (uint64_t)owner_tag(me.side) << PID_BITS;
	me.l.flags = flags;
	uint32_t pid = (uint32_t)cons & ((1u << PID_BITS) - 1);
	snprintf(desc, sizeof desc, "zcfabric cluster %u queue %u (consumer %s: pid %u%s)", id, q,
		 owner_stale(&me, cons) ? "gone, its place free" : "attached", pid, where);
	return add(arg, name, desc);
}

/* list_region lists the queues of the host region file path, read with
 * pread (no mapping to fault). */
static int list_region(zcr_add_fn add, void *arg, const char *path, uint32_t id)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	struct stat st;
	uint8_t hdr[HDR_SIZE];
	struct zcr_layout l;
	char msg[256];
	int stop = 0;
	if (fstat(fd, &st) == 0 && st.st_size >= (off_t)HDR_SIZE && pread(fd, hdr, HDR_SIZE, 0) == (ssize_t)HDR_SIZE &&
	    zcr_parse_header(hdr, (uint64_t)st.st_size, 0, NULL, &l, msg, sizeof msg) == 0 && l.cluster == id &&
	    le32(hdr + 128) == STATE_READY) {
		for (uint32_t q = 0; q < l.nqueues && !stop; q++) {
			uint8_t qd[QDESC_SIZE];
			if (pread(fd, qd, QDESC_SIZE, (off_t)(l.qtable + (uint64_t)q * QDESC_SIZE)) != (ssize_t)QDESC_SIZE)
				break;
			stop = add_queue(add, arg, id, l.flags, q, qd, NULL);
		}
	}
	close(fd);
	return stop;
}

/* list_device lists the queues of ivshmem device addr (a guest's region)
 * when it carries a valid, ready region of a cluster not listed yet (a
 * host region, or an earlier device, is the one zc.Open picks): its id is
 * appended to ids. */
static int list_device(zcr_add_fn add, void *arg, const char *addr, uint32_t *ids, int *n, int max)
{
	int fd, stop = 0;
	uint8_t *b;
	uint64_t size;
	char dir[1024], msg[256];
	if (map_device(addr, dir, sizeof dir, &fd, &b, &size) != 0)
		return 0;
	close(fd);
	uint8_t hdr[HDR_SIZE];
	struct zcr_layout l;
	int ok = copy_mapped(hdr, b, size, 0, HDR_SIZE) == 0 && zcr_parse_header(hdr, size, 0, NULL, &l, msg, sizeof msg) == 0 &&
		 le32(hdr + 128) == STATE_READY && *n < max;
	for (int i = 0; ok && i < *n; i++)
		ok = ids[i] != l.cluster;
	if (ok) {
		ids[(*n)++] = l.cluster;
		for (uint32_t q = 0; q < l.nqueues && !stop; q++) {
			uint8_t qd[QDESC_SIZE];
			if (copy_mapped(qd, b, size, l.qtable + (uint64_t)q * QDESC_SIZE, QDESC_SIZE) != 0)
				break;
			stop = add_queue(add, arg, l.cluster, l.flags, q, qd, addr);
		}
	}
	munmap(b, size);
	return stop;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

void zcr_list(zcr_add_fn add, void *arg)
{
	uint32_t ids[256];
	int n = 0, stop = 0;
	DIR *dir = opendir(zc_dir());
	if (dir != NULL) {
		struct dirent *e;
		while ((e = readdir(dir)) != NULL && n < 256) {
			uint32_t c, q;
			char nm[64];
			if (strncmp(e->d_name, "zc-", 3) != 0 || strlen(e->d_name) > 20)
				continue;
			snprintf(nm, sizeof nm, "zc:%s@0", e->d_name + 3);
			if (zcr_parse_name(nm, &c, &q) == 1)
				ids[n++] = c;
		}
		closedir(dir);
	}
	qsort(ids, (size_t)n, sizeof ids[0], cmp_u32);
	for (int i = 0; i < n && !stop; i++) {
		char path[4096];
		snprintf(path, sizeof path, "%s/zc-%u", zc_dir(), ids[i]);
		stop = list_region(add, arg, path, ids[i]);
	}
	/* A guest's queues: its ivshmem devices, by address. */
	char **addrs;
	int nd = ivshmem_devices(&addrs);
	for (int i = 0; i < nd && !stop; i++)
		stop = list_device(add, arg, addrs[i], ids, &n, 256);
	free_strs(addrs, nd);
}
