/*
 * libzcpcap.so: unmodified libpcap tools (tcpdump, tshark/dumpcap, flow
 * exporters) read zcfabric queues, zero copy.
 *
 *   LD_PRELOAD=bin/libzcpcap.so tcpdump -i zc:99@0 -w out.pcap
 *
 * The library defines the pcap_* entry points a capture tool calls. For a
 * device named zc:CLUSTER@QUEUE it serves the queue itself: it maps the
 * host region $ZC_DIR/zc-CLUSTER (default /dev/shm), or, when there is
 * none, in a guest, the BAR2 of the ivshmem PCI device that carries the
 * cluster ($ZC_SYSFS/bus/pci/devices, default /sys: zc.Open's guest
 * resolver), attaches as the consumer of the queue and hands the tool
 * pointers into the shared buffers. Every other name, and every call on another handle, goes to the
 * real libpcap through dlsym(RTLD_NEXT, ...), so a preloaded tcpdump still
 * captures eth0 exactly as before.
 *
 * Why C and not Go (-buildmode=c-shared). LD_PRELOAD loads the library
 * into every process the variable reaches: the shell that runs a script,
 * tshark and the dumpcap it forks, tcpdump before and after it drops
 * privileges (-Z). A Go c-shared library starts a Go runtime in each of
 * them at load time: several threads before main, signal handlers
 * installed for every signal (the tool's own SIGINT/SIGTERM/SIGALRM
 * handlers then have to coexist with the runtime's forwarding), a
 * multi-threaded process that forks (dumpcap, tcpdump -z) where only the
 * forking thread survives in the child, and a setuid(2) that glibc must
 * broadcast to the runtime's threads. It also costs start-up time and
 * resident memory in processes that never capture (see README.md in this
 * directory for the measurement). The part of the format a consumer needs
 * is small (a header to validate, two rings, an owner word, a handshake
 * word), so this is a small C reader of the documented format
 * (ivshmem/doc.go, version 2) with no threads, no signal handlers and no
 * allocation per packet, doing the same checks as the Go consumer
 * (zc.Queue): every value read from shared memory is range-checked before
 * use, descriptors are copied out of the ring before they are checked,
 * and a handle already held is refused. The Go tests in this directory
 * cross-test it against the Go producer (zchost).
 *
 * Handles. pcap_create on a zc name returns a real pcap_t made by
 * pcap_open_dead(DLT_EN10MB): the real libpcap then serves pcap_compile,
 * pcap_datalink, pcap_list_datalinks, pcap_dump_open and the like on it,
 * and this library intercepts what touches packets, options and the
 * queue. A small table maps those pcap_t pointers to queue state.
 *
 * Deviations from the Go consumer (documented in README.md too):
 *  - a guest reader polls (naps up to 1 ms): it does not take the
 *    device's interrupts (zc needs VFIO for that), so it never sleeps on
 *    its doorbell; it does ring the host's doorbell for a producer that
 *    waits for returned buffers.
 *  - no SIGBUS protection: a region file truncated under the reader kills
 *    the tool (zchost never truncates a region it created; it unlinks it).
 *  - time stamps are microseconds (pcap_set_tstamp_precision(NANO) is
 *    refused), and the savefile header's snapshot length is 262144
 *    whatever pcap_set_snaplen asked (captured lengths are cut to it).
 *  - no Force(): a live consumer is never displaced.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pcap/pcap.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- the region format, version 2 (ivshmem/doc.go) ---- */

#define HDR_SIZE 4096u
#define QDESC_SIZE 64u
#define META_SIZE 32u
#define LINE 128u
#define RING_HDR 384u
#define DESC_SIZE 16u
#define MAX_QUEUES 1024u
#define MAX_SLOTS (1u << 22)
#define MIN_BUF 256u
#define MAX_BUF 65536u
#define MAX_BUFS (1u << 24)
#define MAX_REGION (1ull << 36)
#define DESC_META (1u << 31)
#define STATE_READY 1u
#define SIDE_HOST 1u
#define SIDE_GUEST 2u
#define HS_GO 0u
#define HS_WAIT 1u
#define HS_DONE 3u
#define WAKE_FUTEX 1u
#define WAKE_DOORBELL 2u
#define MAX_BURST 256
#define SNAP_MAX 262144
#define HS_WAIT_NS 200000000ll /* zc.HandshakeWait */

/* ring header offsets */
#define R_PROD 0
#define R_PROD_STAT 8
#define R_CONS 128
#define R_CONS_STAT 136
#define R_WAKE 256

struct desc {
	uint32_t handle, len, off, flags;
};

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

static int64_t now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* layout is what the consumer of one queue needs, validated once from a
 * private copy of the header (ivshmem.Parse) and never re-read. */
struct layout {
	uint64_t size, generation, qtable, metaoff, bufoff;
	uint32_t cluster, nqueues, bufsize, numbufs;
	uint32_t slots;
	uint64_t dring, rring;
};

/* parse_header validates header hdr (HDR_SIZE bytes copied out of a
 * region of size bytes) as ivshmem.Parse does, and the descriptor of queue
 * q (64 bytes copied out) when qd is not NULL. It writes a message to err
 * and returns -1 on a bad region. */
static int parse_header(const uint8_t *hdr, uint64_t size, uint32_t q, const uint8_t *qd, struct layout *l, char *err, size_t errlen)
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

/* ---- the real libpcap ---- */

static void *real(const char *name)
{
	void *f = dlsym(RTLD_NEXT, name);
	if (f == NULL) {
		fprintf(stderr, "libzcpcap: %s not found in the real libpcap (is the program linked with libpcap?)\n", name);
		abort();
	}
	return f;
}

#define REAL(ret, name, args)                                  \
	static ret(*real_##name) args;                         \
	if (real_##name == NULL)                               \
		real_##name = (ret(*) args)real(#name)

/* ---- queue state ---- */

struct zc {
	pcap_t *p;
	char name[48];
	uint32_t cluster, queue;
	int activated;
	int snaplen, timeout_ms, nonblock;
	int pollfd; /* pcap_fileno's eventfd (always readable), -1: none */
	int precision;

	/* the mapping: a host region file, or a guest's ivshmem BAR2 */
	int fd;
	uint8_t *base;
	uint64_t size;
	uint32_t side;      /* SIDE_HOST, or SIDE_GUEST for an ivshmem device */
	char devdir[1024];  /* guest: the device's sysfs directory */
	uint8_t *regs;      /* guest: BAR0 (registers) mapped, to ring the doorbell */
	int regs_tried;
	struct layout l;
	uint64_t owner; /* our owner word: SIDE_HOST<<32 | pid */

	/* consumer of the data ring */
	uint8_t *dr;
	struct desc *dslots;
	uint32_t dpos, dcached;
	uint64_t cstat[3]; /* packets, bytes, bad: ours, published at dr+R_CONS_STAT */
	/* producer of the return ring */
	uint8_t *rr;
	uint32_t *rslots;
	uint32_t rpos, rcached;
	uint64_t rstat; /* returned packets, published at rr+R_PROD_STAT */

	uint64_t *held; /* bitmap: buffers received and not returned */
	struct desc burst[MAX_BURST];
	int bn, bi; /* burst[bi:bn] received and not delivered yet */
	uint32_t ret[MAX_BURST];
	int nret;          /* delivered, to return */
	int last_valid;    /* next_ex: last delivered handle, returned at the next call */
	uint32_t last;
	struct pcap_pkthdr hdr;

	/* attach handshake */
	int hs_pending;
	uint32_t hs_epoch;
	int64_t hs_deadline;

	struct bpf_program filter;
	int has_filter;

	volatile int brk;
	int failed, gone;
	uint32_t idle;   /* empty polls in a row: the region is looked at every 64 */
	uint32_t bursts; /* and every 256 bursts */
	uint32_t nap_ns;
	uint64_t drops0; /* the producer's drop counter at attach */
	uint64_t recv, passed, filtered, bad, wakes, sleeps;
	uint32_t sleep_no; /* our sleep number: the data ring's wake word is sleep_no << 2 | code */
	uint32_t woken;    /* the last return-ring wake word answered */
	char err[PCAP_ERRBUF_SIZE];
};

#define MAXH 64
static struct zc *table[MAXH];

static struct zc *lookup(pcap_t *p)
{
	if (p == NULL)
		return NULL;
	for (int i = 0; i < MAXH; i++) {
		struct zc *z = __atomic_load_n(&table[i], __ATOMIC_ACQUIRE);
		if (z != NULL && z->p == p)
			return z;
	}
	return NULL;
}

static int enroll(struct zc *z)
{
	for (int i = 0; i < MAXH; i++) {
		struct zc *none = NULL;
		if (__atomic_compare_exchange_n(&table[i], &none, z, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return 0;
	}
	return -1;
}

static void unenroll(struct zc *z)
{
	for (int i = 0; i < MAXH; i++) {
		struct zc *cur = z;
		if (__atomic_compare_exchange_n(&table[i], &cur, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return;
	}
}

static void seterr(struct zc *z, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(z->err, sizeof z->err, "%s: ", z->name);
	va_start(ap, fmt);
	vsnprintf(z->err + n, sizeof z->err - n, fmt, ap);
	va_end(ap);
}

/* parse_name parses zc:CLUSTER@QUEUE (decimal). It returns 1 for a zc
 * name, 0 for another name, -1 for a malformed zc name. */
static int parse_name(const char *s, uint32_t *c, uint32_t *q)
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

static int verbose(void)
{
	const char *v = getenv("ZCPCAP_VERBOSE");
	return v != NULL && *v != 0 && *v != '0';
}

static int device_gone(struct zc *z);

/* region_ok is ivshmem's Layout.Check: the region is still the
 * incarnation we attached to and ready. In a guest, the device must still
 * be in sysfs too: an unplugged BAR's stale mapping reads zeros (the
 * magic check), and its sysfs directory vanishes first. */
static int region_ok(struct zc *z)
{
	if (device_gone(z)) {
		seterr(z, "cluster %u gone (region unplugged: its ivshmem device left %s)", z->cluster, z->devdir);
		return 0;
	}
	if (memcmp(z->base, "ZCFABRIC", 8) != 0 || ld64(z->base + 32) != z->l.generation) {
		seterr(z, "cluster %u gone (region unplugged or re-created)", z->cluster);
		return 0;
	}
	if (ld32(z->base + 128) != STATE_READY) {
		seterr(z, "cluster %u closed by its creator", z->cluster);
		return 0;
	}
	return 1;
}

/* fail marks the queue failed for good; a corrupt ring on a region that
 * went away is reported as gone. */
static int fail(struct zc *z, const char *what)
{
	if (!z->failed) {
		z->failed = 1;
		if (region_ok(z))
			seterr(z, "%s (broken or hostile producer)", what);
		else
			z->gone = 1;
	}
	return PCAP_ERROR;
}

static uint8_t *qdesc(struct zc *z) { return z->base + z->l.qtable + (uint64_t)z->queue * QDESC_SIZE; }

/* owner_stale reports whether the holder of an owner word is gone: only
 * a host process, seen from a host process (zc's region.claim); a guest
 * cannot see the host's processes, nor the host a guest's. */
static int owner_stale(struct zc *z, uint64_t cur)
{
	uint32_t side = (uint32_t)(cur >> 32), pid = (uint32_t)cur;
	if (side != SIDE_HOST || z->side != SIDE_HOST)
		return 0;
	return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
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
 * PCAP_ERROR_NO_SUCH_DEVICE with why in msg. */
static int find_guest(struct zc *z, char *msg, size_t msglen)
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
		if (region_cluster(b, size) != (int64_t)z->cluster) {
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
	return PCAP_ERROR_NO_SUCH_DEVICE;
}

/* device_gone reports whether a guest's ivshmem device left sysfs, as it
 * does when the host unplugs it (guest.Gone). */
static int device_gone(struct zc *z)
{
	struct stat st;
	return z->side == SIDE_GUEST && stat(z->devdir, &st) != 0 && errno == ENOENT;
}

/* ring_host rings peer 0 (the host agent), vector 0, through the Doorbell
 * register of the device's BAR0 (guest.Doorbell.Ring): a host producer
 * that sleeps on its doorbell waiting for our returns. Only an
 * ivshmem-doorbell device has one (its MSI-X table is BAR1: resource1). */
static void ring_host(struct zc *z)
{
	if (!z->regs_tried) {
		z->regs_tried = 1;
		char path[1100];
		struct stat st;
		snprintf(path, sizeof path, "%s/resource1", z->devdir);
		if (stat(path, &st) != 0)
			return;
		snprintf(path, sizeof path, "%s/resource0", z->devdir);
		int fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
		if (fd < 0)
			return;
		if (fstat(fd, &st) == 0 && st.st_size >= REG_DOORBELL + 4) {
			void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (m != MAP_FAILED)
				z->regs = m;
		}
		close(fd);
	}
	if (z->regs != NULL)
		st32(z->regs + REG_DOORBELL, 0);
}

/* attach maps the region and claims the consumer end (zc.Open): the host
 * region $ZC_DIR/zc-C, else (in a guest) the ivshmem device that carries
 * cluster C. It returns 0 or a PCAP_ERROR code with z->err set. */
static int attach(struct zc *z)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/zc-%u", zc_dir(), z->cluster);
	z->side = SIDE_HOST;
	if (map_file(path, 0, &z->fd, &z->base, &z->size) != 0) {
		int e = errno;
		if (e == ENOENT) {
			char msg[512];
			if (find_guest(z, msg, sizeof msg) != 0) {
				seterr(z, "no such cluster %u (no %s; is zchost running with -c %u? %s)", z->cluster, path, z->cluster, msg);
				return PCAP_ERROR_NO_SUCH_DEVICE;
			}
			snprintf(path, sizeof path, "%s/resource2", z->devdir);
		} else if (e == EINVAL || e == ENODATA) {
			seterr(z, "%s: not a region (size)", path);
			return PCAP_ERROR;
		} else {
			seterr(z, "open %s: %s", path, strerror(e));
			return e == EACCES || e == EPERM ? PCAP_ERROR_PERM_DENIED : PCAP_ERROR;
		}
	}
	uint8_t hdr[HDR_SIZE], qd[QDESC_SIZE];
	memcpy(hdr, z->base, HDR_SIZE);
	char msg[256];
	int r = parse_header(hdr, z->size, z->queue, NULL, &z->l, msg, sizeof msg);
	if (r == 0 && z->queue < z->l.nqueues) {
		memcpy(qd, qdesc(z), QDESC_SIZE);
		r = parse_header(hdr, z->size, z->queue, qd, &z->l, msg, sizeof msg);
	} else if (r == 0) {
		snprintf(msg, sizeof msg, "no such queue: cluster %u has %u queues", z->cluster, z->l.nqueues);
		r = -2;
	}
	if (r != 0) {
		seterr(z, "%s: %s", path, msg);
		return r == -2 ? PCAP_ERROR_NO_SUCH_DEVICE : PCAP_ERROR;
	}
	if (z->l.cluster != z->cluster) {
		seterr(z, "%s: bad region: it is cluster %u", path, z->l.cluster);
		return PCAP_ERROR;
	}
	if (!region_ok(z))
		return PCAP_ERROR;

	/* Rings, checked before the claim so a refusal changes nothing. */
	z->dr = z->base + z->l.dring;
	z->rr = z->base + z->l.rring;
	z->dslots = (struct desc *)(z->dr + RING_HDR);
	z->rslots = (uint32_t *)(z->rr + RING_HDR);

	/* Claim the consumer owner word (ivshmem.Layout.Claim). */
	uint8_t *ow = qdesc(z) + 48;
	z->owner = (uint64_t)SIDE_HOST << 32 | (uint32_t)getpid();
	int replaced = 0, ok = 0;
	for (int i = 0; i < 8 && !ok; i++) {
		uint64_t cur = ld64(ow);
		if (cur != 0 && !owner_stale(z, cur)) {
			seterr(z, "queue taken: the consumer of queue %u is held by pid %u", z->queue, (uint32_t)cur);
			return PCAP_ERROR;
		}
		if (__atomic_compare_exchange_n((uint64_t *)ow, &cur, z->owner, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
			replaced = cur != 0;
			ok = 1;
		}
	}
	if (!ok) {
		seterr(z, "queue taken: consumer of queue %u: claim contended", z->queue);
		return PCAP_ERROR;
	}
	/* Take over where the previous consumer stopped. */
	z->dpos = ld32(z->dr + R_CONS);
	z->dcached = ld32(z->dr + R_PROD);
	z->rpos = ld32(z->rr + R_PROD);
	z->rcached = ld32(z->rr + R_CONS);
	if (z->dcached - z->dpos > z->l.slots || z->rpos - z->rcached > z->l.slots) {
		__atomic_compare_exchange_n((uint64_t *)ow, &z->owner, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		seterr(z, "queue %u corrupt: ring indices out of range at attach", z->queue);
		return PCAP_ERROR;
	}
	for (int i = 0; i < 3; i++)
		z->cstat[i] = ld64(z->dr + R_CONS_STAT + 8 * i);
	z->rstat = ld64(z->rr + R_PROD_STAT);
	z->drops0 = ld64(z->dr + R_PROD_STAT + 16);
	z->held = calloc((z->l.numbufs + 63) / 64, sizeof(uint64_t));
	if (z->held == NULL) {
		__atomic_compare_exchange_n((uint64_t *)ow, &z->owner, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		seterr(z, "out of memory");
		return PCAP_ERROR;
	}
	if (replaced) {
		/* The previous consumer went away without detaching: ask a live
		 * producer to take back what it held. */
		uint8_t *hs = qdesc(z) + 56;
		z->hs_epoch = (ld32(hs) >> 2) + 1;
		__atomic_store_n((uint32_t *)hs, z->hs_epoch << 2 | HS_WAIT, __ATOMIC_SEQ_CST);
		z->hs_pending = 1;
		z->hs_deadline = now_ns(CLOCK_MONOTONIC) + HS_WAIT_NS;
	}
	return 0;
}

/* handshake_done is zc.Queue.handshakeDone. */
static int handshake_done(struct zc *z)
{
	uint32_t *w = (uint32_t *)(qdesc(z) + 56);
	uint32_t v = ld32(w), mine = z->hs_epoch << 2;
	if (v == (mine | HS_DONE) || v >> 2 != z->hs_epoch) {
		z->hs_pending = 0;
	} else {
		int64_t now = now_ns(CLOCK_MONOTONIC);
		if (now > z->hs_deadline) {
			uint32_t old = v;
			if (v == (mine | HS_WAIT) && __atomic_compare_exchange_n(w, &old, mine | HS_GO, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
				z->hs_pending = 0;
			else if (now > z->hs_deadline + 10 * HS_WAIT_NS)
				z->hs_pending = 0;
		}
	}
	return !z->hs_pending;
}

static void futex_wake(uint32_t *addr) { syscall(SYS_futex, addr, FUTEX_WAKE, 1 << 30, NULL, NULL, 0); }

/* give_back pushes the handles in z->ret onto the return ring and wakes
 * a producer that sleeps waiting for them (zc.Queue.releaseHandles). */
static int give_back(struct zc *z)
{
	if (z->nret == 0 || z->failed)
		return z->failed ? PCAP_ERROR : 0;
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

static int put_back(struct zc *z, uint32_t h)
{
	z->ret[z->nret++] = h;
	return z->nret == MAX_BURST ? give_back(z) : 0;
}

/* fetch receives a burst into z->burst when it is empty
 * (zc.Queue.recvBurst). It returns the number of packets waiting in the
 * burst, 0 when the queue is empty, or PCAP_ERROR. */
static int fetch(struct zc *z)
{
	if (z->failed)
		return PCAP_ERROR;
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
			return PCAP_ERROR;
		}
		return 0;
	}
	z->idle = 0;
	if ((++z->bursts & 255) == 0 && !region_ok(z)) {
		/* a busy queue looks at the region too, now and then */
		z->failed = z->gone = 1;
		return PCAP_ERROR;
	}
	uint32_t n = avail < MAX_BURST ? avail : MAX_BURST, mask = z->l.slots - 1;
	struct desc d[MAX_BURST];
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
				return PCAP_ERROR;
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

/* take fills z->hdr for the next packet of the burst and returns its
 * data, or NULL when the filter drops it (its buffer is queued to go
 * back). */
static const u_char *take(struct zc *z, const struct desc *d, int64_t now)
{
	const u_char *data = z->base + z->l.bufoff + (uint64_t)d->handle * z->l.bufsize + d->off;
	int64_t ts = now;
	if (d->flags & DESC_META) {
		int64_t t = (int64_t)le64(z->base + z->l.metaoff + (uint64_t)d->handle * META_SIZE);
		if (t > 0)
			ts = t;
	}
	z->hdr.ts.tv_sec = ts / 1000000000ll;
	z->hdr.ts.tv_usec = (ts % 1000000000ll) / 1000;
	z->hdr.len = d->len;
	z->hdr.caplen = d->len < (uint32_t)z->snaplen ? d->len : (uint32_t)z->snaplen;
	if (z->has_filter) {
		REAL(int, pcap_offline_filter, (const struct bpf_program *, const struct pcap_pkthdr *, const u_char *));
		if (real_pcap_offline_filter(&z->filter, &z->hdr, data) == 0) {
			z->filtered++;
			put_back(z, d->handle);
			return NULL;
		}
	}
	z->passed++;
	return data;
}

static void nap(long ns)
{
	struct timespec ts = {0, ns};
	nanosleep(&ts, NULL); /* EINTR: a signal, maybe pcap_breakloop */
}

/* cannot_sleep: a guest producer cannot wake a host futex, nor a host
 * producer a futex in a guest (zc.Queue.canSleep; a guest without
 * interrupts polls). */
static int cannot_sleep(struct zc *z) { return z->side != SIDE_HOST || (uint32_t)(ld64(qdesc(z) + 40) >> 32) == SIDE_GUEST; }

/* wait_some waits a little for packets: short naps that grow from 50 to
 * 200 µs, and once the queue stayed empty for a while (about 40 polls) a
 * futex sleep on the producer index (the need_wakeup protocol of
 * ivshmem/doc.go, "Sleeping and waking"), at most max_ns. */
static void wait_some(struct zc *z, int64_t max_ns)
{
	/* z->idle counts empty polls (fetch); it looks at the region every 64 */
	if (z->idle < 40 || cannot_sleep(z)) {
		/* naps of 50 to 200 µs, up to 1 ms for a reader that cannot sleep */
		uint32_t most = z->idle < 40 ? 200000 : 1000000;
		if (z->nap_ns < 50000)
			z->nap_ns = 50000;
		else if (z->nap_ns < most)
			z->nap_ns += 25000;
		if (z->nap_ns > most)
			z->nap_ns = most;
		nap(max_ns < z->nap_ns ? (long)max_ns : (long)z->nap_ns);
		return;
	}
	uint32_t *wake = (uint32_t *)(z->dr + R_WAKE), *prod = (uint32_t *)(z->dr + R_PROD);
	if (z->sleep_no == 0) /* number our sleeps after the last reader's */
		z->sleep_no = __atomic_load_n(wake, __ATOMIC_SEQ_CST) >> 2;
	z->sleep_no++;
	__atomic_store_n(wake, z->sleep_no << 2 | WAKE_FUTEX, __ATOMIC_SEQ_CST);
	uint32_t p = __atomic_load_n(prod, __ATOMIC_SEQ_CST);
	if (p == z->dpos) {
		if (max_ns > 100000000)
			max_ns = 100000000; /* look at the region and at pcap_breakloop now and then */
		struct timespec ts = {max_ns / 1000000000, max_ns % 1000000000};
		syscall(SYS_futex, prod, FUTEX_WAIT, p, &ts, NULL, 0);
		z->sleeps++;
		z->idle |= 63; /* look at the region on the next empty poll */
	}
	__atomic_store_n(wake, z->sleep_no << 2, __ATOMIC_SEQ_CST);
	z->nap_ns = 0;
}

static int check_brk(struct zc *z)
{
	if (z->brk) {
		z->brk = 0;
		return 1;
	}
	return 0;
}

/* deliver runs up to cnt (<=0: the whole burst) callbacks from the
 * current burst and returns how many ran. */
static int deliver(struct zc *z, int cnt, pcap_handler cb, u_char *user, int *stop)
{
	int64_t now = now_ns(CLOCK_REALTIME);
	int done = 0;
	while (z->bi < z->bn && (cnt <= 0 || done < cnt)) {
		if (z->brk) {
			*stop = 1;
			break;
		}
		const struct desc *d = &z->burst[z->bi++];
		const u_char *data = take(z, d, now);
		if (data == NULL)
			continue;
		cb(user, &z->hdr, data);
		done++;
		if (put_back(z, d->handle) != 0)
			return PCAP_ERROR;
	}
	if (give_back(z) != 0)
		return PCAP_ERROR;
	return done;
}

/* wait_deadline is when pcap_dispatch and pcap_next_ex give up waiting
 * (0: never): the read timeout, and at most POLLED_WAIT_MS once the tool
 * took pcap_fileno's descriptor, which is always readable, so that a tool
 * that polls it before each pcap_dispatch (softflowd) still gets back to
 * its timers and other descriptors while the queue is idle. */
#define POLLED_WAIT_MS 100
static int64_t wait_deadline(struct zc *z)
{
	int ms = z->timeout_ms;
	if (z->pollfd >= 0 && (ms <= 0 || ms > POLLED_WAIT_MS))
		ms = POLLED_WAIT_MS;
	return ms > 0 ? now_ns(CLOCK_MONOTONIC) + (int64_t)ms * 1000000 : 0;
}

static int zc_dispatch(struct zc *z, int cnt, pcap_handler cb, u_char *user)
{
	if (!z->activated) {
		seterr(z, "not activated");
		return PCAP_ERROR_NOT_ACTIVATED;
	}
	int64_t deadline = wait_deadline(z);
	for (;;) {
		if (check_brk(z))
			return PCAP_ERROR_BREAK;
		int n = fetch(z);
		if (n < 0)
			return PCAP_ERROR;
		if (n > 0) {
			int stop = 0;
			int done = deliver(z, cnt, cb, user, &stop);
			if (done != 0 || stop)
				return done == 0 && check_brk(z) ? PCAP_ERROR_BREAK : done;
			continue; /* all filtered: wait for more */
		}
		if (z->nonblock)
			return 0;
		int64_t left = 1000000000;
		if (deadline != 0) {
			left = deadline - now_ns(CLOCK_MONOTONIC);
			if (left <= 0)
				return 0;
		}
		wait_some(z, left);
	}
}

static int zc_loop(struct zc *z, int cnt, pcap_handler cb, u_char *user)
{
	int got = 0;
	for (;;) {
		if (check_brk(z))
			return PCAP_ERROR_BREAK;
		int n = fetch(z);
		if (n < 0)
			return PCAP_ERROR;
		if (n == 0) {
			if (z->nonblock) /* as libpcap: loop on a non-blocking handle spins */
				continue;
			wait_some(z, 1000000000);
			continue;
		}
		int stop = 0;
		int done = deliver(z, cnt > 0 ? cnt - got : 0, cb, user, &stop);
		if (done < 0)
			return done;
		got += done;
		if (cnt > 0 && got >= cnt)
			return 0;
	}
}

/* release_all gives back everything held: the last packet of
 * pcap_next_ex and what the burst did not deliver. */
static void release_all(struct zc *z)
{
	if (z->last_valid) {
		put_back(z, z->last);
		z->last_valid = 0;
	}
	while (z->bi < z->bn)
		put_back(z, z->burst[z->bi++].handle);
	give_back(z);
}

static int zc_next_ex(struct zc *z, struct pcap_pkthdr **h, const u_char **data)
{
	if (!z->activated) {
		seterr(z, "not activated");
		return PCAP_ERROR_NOT_ACTIVATED;
	}
	if (z->last_valid) {
		z->last_valid = 0;
		if (put_back(z, z->last) != 0 || give_back(z) != 0)
			return PCAP_ERROR;
	}
	int64_t deadline = wait_deadline(z);
	for (;;) {
		if (check_brk(z))
			return PCAP_ERROR_BREAK;
		int n = fetch(z);
		if (n < 0)
			return PCAP_ERROR;
		if (n > 0) {
			const struct desc *d = &z->burst[z->bi++];
			const u_char *p = take(z, d, now_ns(CLOCK_REALTIME));
			if (p == NULL) {
				if (give_back(z) != 0)
					return PCAP_ERROR;
				continue;
			}
			z->last = d->handle;
			z->last_valid = 1;
			*h = &z->hdr;
			*data = p;
			return 1;
		}
		if (z->nonblock)
			return 0;
		int64_t left = 1000000000;
		if (deadline != 0) {
			left = deadline - now_ns(CLOCK_MONOTONIC);
			if (left <= 0)
				return 0;
		}
		wait_some(z, left);
	}
}

static void detach(struct zc *z)
{
	if (z->base != NULL) {
		if (z->activated && !z->gone && region_ok(z)) {
			if (!z->failed)
				release_all(z);
			uint64_t mine = z->owner;
			__atomic_compare_exchange_n((uint64_t *)(qdesc(z) + 48), &mine, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		}
		munmap(z->base, z->size);
		z->base = NULL;
	}
	if (z->regs != NULL)
		munmap(z->regs, 4096);
	z->regs = NULL;
	if (z->fd >= 0)
		close(z->fd);
	z->fd = -1;
}

/* ---- the pcap API ---- */

pcap_t *pcap_create(const char *source, char *errbuf)
{
	uint32_t c, q;
	int k = parse_name(source, &c, &q);
	if (k == 0) {
		REAL(pcap_t *, pcap_create, (const char *, char *));
		return real_pcap_create(source, errbuf);
	}
	if (k < 0) {
		snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s: bad zcfabric queue name (want zc:CLUSTER@QUEUE, e.g. zc:99@0)", source);
		return NULL;
	}
	REAL(pcap_t *, pcap_open_dead_with_tstamp_precision, (int, int, u_int));
	struct zc *z = calloc(1, sizeof *z);
	if (z == NULL) {
		snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s: out of memory", source);
		return NULL;
	}
	z->p = real_pcap_open_dead_with_tstamp_precision(DLT_EN10MB, SNAP_MAX, PCAP_TSTAMP_PRECISION_MICRO);
	if (z->p == NULL || enroll(z) != 0) {
		snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s: cannot allocate a handle", source);
		free(z);
		return NULL;
	}
	snprintf(z->name, sizeof z->name, "zc:%u@%u", c, q);
	z->cluster = c;
	z->queue = q;
	z->fd = -1;
	z->pollfd = -1;
	z->snaplen = SNAP_MAX;
	return z->p;
}

int pcap_activate(pcap_t *p)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_activate, (pcap_t *));
		return real_pcap_activate(p);
	}
	if (z->activated)
		return PCAP_ERROR_ACTIVATED;
	int r = attach(z);
	if (r != 0) {
		detach(z);
		return r;
	}
	z->activated = 1;
	if (verbose())
		fprintf(stderr, "libzcpcap: %s attached: %u slots, %u buffers of %u bytes\n", z->name, z->l.slots, z->l.numbufs, z->l.bufsize);
	return 0;
}

pcap_t *pcap_open_live(const char *device, int snaplen, int promisc, int to_ms, char *errbuf)
{
	uint32_t c, q;
	if (parse_name(device, &c, &q) == 0) {
		REAL(pcap_t *, pcap_open_live, (const char *, int, int, int, char *));
		return real_pcap_open_live(device, snaplen, promisc, to_ms, errbuf);
	}
	pcap_t *p = pcap_create(device, errbuf);
	if (p == NULL)
		return NULL;
	pcap_set_snaplen(p, snaplen);
	pcap_set_timeout(p, to_ms);
	if (pcap_activate(p) != 0) {
		snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s", lookup(p)->err);
		pcap_close(p);
		return NULL;
	}
	return p;
}

/* Options: accepted before activation, as libpcap does. */
#define OPTION(name, type, body)                                          \
	int name(pcap_t *p, type v)                                       \
	{                                                                 \
		struct zc *z = lookup(p);                                 \
		if (z == NULL) {                                          \
			REAL(int, name, (pcap_t *, type));                \
			return real_##name(p, v);                         \
		}                                                         \
		if (z->activated)                                         \
			return PCAP_ERROR_ACTIVATED;                      \
		body;                                                     \
		return 0;                                                 \
	}

OPTION(pcap_set_snaplen, int, z->snaplen = v <= 0 || v > SNAP_MAX ? SNAP_MAX : v)
OPTION(pcap_set_promisc, int, (void)v)
OPTION(pcap_set_timeout, int, z->timeout_ms = v)
OPTION(pcap_set_buffer_size, int, (void)v)
OPTION(pcap_set_immediate_mode, int, (void)v)
OPTION(pcap_set_tstamp_type, int, (void)v)
OPTION(pcap_set_rfmon, int, if (v) return PCAP_ERROR_RFMON_NOTSUP)
OPTION(pcap_set_tstamp_precision, int, if (v != PCAP_TSTAMP_PRECISION_MICRO) return PCAP_ERROR_TSTAMP_PRECISION_NOTSUP)
OPTION(pcap_set_protocol_linux, int, (void)v)

int pcap_can_set_rfmon(pcap_t *p)
{
	if (lookup(p) == NULL) {
		REAL(int, pcap_can_set_rfmon, (pcap_t *));
		return real_pcap_can_set_rfmon(p);
	}
	return 0;
}

int pcap_snapshot(pcap_t *p)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_snapshot, (pcap_t *));
		return real_pcap_snapshot(p);
	}
	return z->snaplen;
}

int pcap_set_datalink(pcap_t *p, int dlt)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_set_datalink, (pcap_t *, int));
		return real_pcap_set_datalink(p, dlt);
	}
	if (dlt != DLT_EN10MB) {
		seterr(z, "only DLT_EN10MB (Ethernet) is supported");
		return PCAP_ERROR;
	}
	return 0;
}

int pcap_lookupnet(const char *device, bpf_u_int32 *net, bpf_u_int32 *mask, char *errbuf)
{
	uint32_t c, q;
	if (parse_name(device, &c, &q) == 0) {
		REAL(int, pcap_lookupnet, (const char *, bpf_u_int32 *, bpf_u_int32 *, char *));
		return real_pcap_lookupnet(device, net, mask, errbuf);
	}
	*net = 0;
	*mask = 0;
	return 0;
}

int pcap_next_ex(pcap_t *p, struct pcap_pkthdr **h, const u_char **data)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_next_ex, (pcap_t *, struct pcap_pkthdr **, const u_char **));
		return real_pcap_next_ex(p, h, data);
	}
	return zc_next_ex(z, h, data);
}

const u_char *pcap_next(pcap_t *p, struct pcap_pkthdr *h)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(const u_char *, pcap_next, (pcap_t *, struct pcap_pkthdr *));
		return real_pcap_next(p, h);
	}
	struct pcap_pkthdr *hp;
	const u_char *d;
	if (zc_next_ex(z, &hp, &d) != 1)
		return NULL;
	*h = *hp;
	return d;
}

int pcap_dispatch(pcap_t *p, int cnt, pcap_handler cb, u_char *user)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_dispatch, (pcap_t *, int, pcap_handler, u_char *));
		return real_pcap_dispatch(p, cnt, cb, user);
	}
	return zc_dispatch(z, cnt, cb, user);
}

int pcap_loop(pcap_t *p, int cnt, pcap_handler cb, u_char *user)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_loop, (pcap_t *, int, pcap_handler, u_char *));
		return real_pcap_loop(p, cnt, cb, user);
	}
	if (!z->activated) {
		seterr(z, "not activated");
		return PCAP_ERROR_NOT_ACTIVATED;
	}
	return zc_loop(z, cnt, cb, user);
}

void pcap_breakloop(pcap_t *p)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(void, pcap_breakloop, (pcap_t *));
		real_pcap_breakloop(p);
		return;
	}
	z->brk = 1;
}

int pcap_setfilter(pcap_t *p, struct bpf_program *fp)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_setfilter, (pcap_t *, struct bpf_program *));
		return real_pcap_setfilter(p, fp);
	}
	REAL(int, bpf_validate, (const struct bpf_insn *, int));
	if (fp == NULL || fp->bf_len == 0 || fp->bf_insns == NULL || !real_bpf_validate(fp->bf_insns, (int)fp->bf_len)) {
		seterr(z, "invalid BPF program");
		return PCAP_ERROR;
	}
	struct bpf_insn *ins = malloc(fp->bf_len * sizeof *ins);
	if (ins == NULL) {
		seterr(z, "out of memory");
		return PCAP_ERROR;
	}
	memcpy(ins, fp->bf_insns, fp->bf_len * sizeof *ins);
	free(z->filter.bf_insns);
	z->filter.bf_insns = ins;
	z->filter.bf_len = fp->bf_len;
	z->has_filter = 1;
	return 0;
}

int pcap_setdirection(pcap_t *p, pcap_direction_t d)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_setdirection, (pcap_t *, pcap_direction_t));
		return real_pcap_setdirection(p, d);
	}
	if (d != PCAP_D_INOUT && d != PCAP_D_IN) {
		seterr(z, "a queue has packets in one direction only (-Q in or inout)");
		return PCAP_ERROR;
	}
	return 0;
}

int pcap_stats(pcap_t *p, struct pcap_stat *ps)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_stats, (pcap_t *, struct pcap_stat *));
		return real_pcap_stats(p, ps);
	}
	if (!z->activated) {
		seterr(z, "not activated");
		return PCAP_ERROR_NOT_ACTIVATED;
	}
	uint64_t drops = 0;
	if (!z->gone) {
		uint64_t d = ld64(z->dr + R_PROD_STAT + 16);
		drops = d >= z->drops0 ? d - z->drops0 : 0;
	}
	ps->ps_recv = (u_int)z->passed;       /* "received by filter" */
	ps->ps_drop = (u_int)drops;           /* the producer found the queue full */
	ps->ps_ifdrop = (u_int)z->bad;        /* descriptors refused */
	return 0;
}

char *pcap_geterr(pcap_t *p)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(char *, pcap_geterr, (pcap_t *));
		return real_pcap_geterr(p);
	}
	return z->err;
}

void pcap_perror(pcap_t *p, const char *prefix)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(void, pcap_perror, (pcap_t *, const char *));
		real_pcap_perror(p, prefix);
		return;
	}
	fprintf(stderr, "%s: %s\n", prefix, z->err);
}

int pcap_get_selectable_fd(pcap_t *p)
{
	if (lookup(p) == NULL) {
		REAL(int, pcap_get_selectable_fd, (pcap_t *));
		return real_pcap_get_selectable_fd(p);
	}
	return -1; /* no descriptor to select on: shared memory */
}

/* pcap_fileno: tools that poll this descriptor before each pcap_dispatch
 * (softflowd) never read a queue whose descriptor is -1, so it is an
 * eventfd that is always readable, and from then on pcap_dispatch waits
 * at most POLLED_WAIT_MS (wait_deadline). pcap_get_selectable_fd stays -1:
 * dumpcap selects on that one and then reads one packet per call. */
int pcap_fileno(pcap_t *p)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_fileno, (pcap_t *));
		return real_pcap_fileno(p);
	}
	if (z->pollfd < 0 && z->activated)
		z->pollfd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
	return z->pollfd;
}

int pcap_setnonblock(pcap_t *p, int nb, char *errbuf)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_setnonblock, (pcap_t *, int, char *));
		return real_pcap_setnonblock(p, nb, errbuf);
	}
	z->nonblock = nb != 0;
	return 0;
}

int pcap_getnonblock(pcap_t *p, char *errbuf)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_getnonblock, (pcap_t *, char *));
		return real_pcap_getnonblock(p, errbuf);
	}
	return z->nonblock;
}

void pcap_close(pcap_t *p)
{
	struct zc *z = lookup(p);
	REAL(void, pcap_close, (pcap_t *));
	if (z == NULL) {
		real_pcap_close(p);
		return;
	}
	if (verbose())
		fprintf(stderr, "libzcpcap: %s: received %llu, passed filter %llu, filtered %llu, bad %llu, queue drops %llu, wake-ups sent %llu, sleeps %llu%s%s\n",
			z->name, (unsigned long long)z->recv, (unsigned long long)z->passed, (unsigned long long)z->filtered,
			(unsigned long long)z->bad,
			(unsigned long long)(z->gone || z->dr == NULL ? 0 : ld64(z->dr + R_PROD_STAT + 16) - z->drops0),
			(unsigned long long)z->wakes, (unsigned long long)z->sleeps, z->failed ? ", failed: " : "", z->failed ? z->err : "");
	detach(z);
	unenroll(z);
	if (z->pollfd >= 0)
		close(z->pollfd);
	free(z->filter.bf_insns);
	free(z->held);
	real_pcap_close(p);
	free(z);
}

/* add_dev appends a malloc'd device (freed by the real pcap_freealldevs). */
static int add_dev(pcap_if_t ***tail, const char *name, const char *desc)
{
	pcap_if_t *d = calloc(1, sizeof *d);
	if (d == NULL)
		return -1;
	d->name = strdup(name);
	d->description = strdup(desc);
	d->flags = PCAP_IF_UP | PCAP_IF_RUNNING | PCAP_IF_CONNECTION_STATUS_NOT_APPLICABLE;
	if (d->name == NULL || d->description == NULL) {
		free(d->name);
		free(d->description);
		free(d);
		return -1;
	}
	**tail = d;
	*tail = &d->next;
	return 0;
}

/* add_queue appends queue q of cluster id, whose descriptor (copied out)
 * is qd; dev names the guest's ivshmem device, NULL on a host. */
static int add_queue(pcap_if_t ***tail, uint32_t id, uint32_t q, const uint8_t *qd, const char *dev)
{
	uint64_t cons = le64(qd + 48);
	char name[48], desc[400], where[300] = "";
	snprintf(name, sizeof name, "zc:%u@%u", id, q);
	if (dev != NULL)
		snprintf(where, sizeof where, ", ivshmem device %s", dev);
	if (cons == 0)
		snprintf(desc, sizeof desc, "zcfabric cluster %u queue %u%s", id, q, where);
	else
		snprintf(desc, sizeof desc, "zcfabric cluster %u queue %u (consumer attached: pid %u%s)", id, q, (uint32_t)cons, where);
	return add_dev(tail, name, desc);
}

/* add_region lists the queues of the host region file path. */
static void add_region(pcap_if_t ***tail, const char *path, uint32_t id)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat st;
	uint8_t hdr[HDR_SIZE];
	struct layout l;
	char msg[256];
	if (fstat(fd, &st) != 0 || st.st_size < (off_t)HDR_SIZE || pread(fd, hdr, HDR_SIZE, 0) != (ssize_t)HDR_SIZE ||
	    parse_header(hdr, (uint64_t)st.st_size, 0, NULL, &l, msg, sizeof msg) != 0 || l.cluster != id ||
	    le32(hdr + 128) != STATE_READY) {
		close(fd);
		return;
	}
	for (uint32_t q = 0; q < l.nqueues; q++) {
		uint8_t qd[QDESC_SIZE];
		if (pread(fd, qd, QDESC_SIZE, (off_t)(l.qtable + (uint64_t)q * QDESC_SIZE)) != (ssize_t)QDESC_SIZE ||
		    add_queue(tail, id, q, qd, NULL) != 0)
			break;
	}
	close(fd);
}

/* add_device lists the queues of the ivshmem device addr (a guest's
 * region) when it carries a valid, ready region of a cluster not listed
 * yet (a host region, or an earlier device, is the one zc.Open picks):
 * its id is appended to ids. */
static void add_device(pcap_if_t ***tail, const char *addr, uint32_t *ids, int *n, int max)
{
	int fd;
	uint8_t *b;
	uint64_t size;
	char dir[1024], msg[256];
	if (map_device(addr, dir, sizeof dir, &fd, &b, &size) != 0)
		return;
	close(fd);
	uint8_t hdr[HDR_SIZE];
	struct layout l;
	memcpy(hdr, b, HDR_SIZE);
	int ok = parse_header(hdr, size, 0, NULL, &l, msg, sizeof msg) == 0 && le32(hdr + 128) == STATE_READY && *n < max;
	for (int i = 0; ok && i < *n; i++)
		ok = ids[i] != l.cluster;
	if (ok) {
		ids[(*n)++] = l.cluster;
		for (uint32_t q = 0; q < l.nqueues; q++) {
			uint8_t qd[QDESC_SIZE];
			memcpy(qd, b + l.qtable + (uint64_t)q * QDESC_SIZE, QDESC_SIZE);
			if (add_queue(tail, l.cluster, q, qd, addr) != 0)
				break;
		}
	}
	munmap(b, size);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int pcap_findalldevs(pcap_if_t **alldevs, char *errbuf)
{
	REAL(int, pcap_findalldevs, (pcap_if_t **, char *));
	pcap_if_t *head = NULL, **tail = &head;
	uint32_t ids[256];
	int n = 0;
	DIR *dir = opendir(zc_dir());
	if (dir != NULL) {
		struct dirent *e;
		while ((e = readdir(dir)) != NULL && n < 256) {
			uint32_t c, q;
			char nm[64];
			if (strncmp(e->d_name, "zc-", 3) != 0 || strlen(e->d_name) > 20)
				continue;
			snprintf(nm, sizeof nm, "zc:%s@0", e->d_name + 3);
			if (parse_name(nm, &c, &q) == 1)
				ids[n++] = c;
		}
		closedir(dir);
	}
	qsort(ids, (size_t)n, sizeof ids[0], cmp_u32);
	for (int i = 0; i < n; i++) {
		char path[4096];
		snprintf(path, sizeof path, "%s/zc-%u", zc_dir(), ids[i]);
		add_region(&tail, path, ids[i]);
	}
	/* A guest's queues: its ivshmem devices, by address. */
	char **addrs;
	int nd = ivshmem_devices(&addrs);
	for (int i = 0; i < nd; i++)
		add_device(&tail, addrs[i], ids, &n, 256);
	free_strs(addrs, nd);
	pcap_if_t *rest = NULL;
	int r = real_pcap_findalldevs(&rest, errbuf);
	if (r != 0 && head == NULL)
		return r;
	*tail = rest;
	*alldevs = head;
	return 0;
}
