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
 * pointers into the shared buffers. Every other name, and every call on
 * another handle, goes to the real libpcap through dlsym(RTLD_NEXT, ...),
 * so a preloaded tcpdump still captures eth0 exactly as before.
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
 * (ivshmem/doc.go, version 2) with no threads, no allocation per packet
 * and one signal handler (SIGBUS, for a region file truncated under the
 * mapping; it passes every other fault on), doing the same checks as the
 * Go consumer (zc.Queue): every value read from shared memory is
 * range-checked before use, descriptors are copied out of the ring before
 * they are checked, and a handle already held is refused. The reader is
 * zcreader.c (included below, so that build.sh compiles one file), which
 * the fuzz harness (../fuzz) links as it is; the Go tests in this
 * directory cross-test it against the Go producer.
 *
 * Handles. pcap_create on a zc name returns a real pcap_t made by
 * pcap_open_dead(DLT_EN10MB): the real libpcap then serves pcap_compile,
 * pcap_datalink, pcap_list_datalinks, pcap_dump_open and the like on it,
 * and this library intercepts what touches packets, options and the
 * queue. A small table maps those pcap_t pointers to queue state.
 *
 * Deviations from the Go consumer (documented in README.md too):
 *  - a guest reader never opens its device through VFIO: it sleeps on
 *    the doorbell's interrupts when a Go reader of the guest holds them
 *    and passes them on (zcreader.c, "a doorbell's interrupts, shared"),
 *    and otherwise polls (naps up to 1 ms); it rings the host's doorbell
 *    for a producer that waits for returned buffers.
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

#include "zcreader.c" /* the format reader (one translation unit: build.sh compiles this file) */

#define SNAP_MAX 262144

static int64_t now_ns(clockid_t clk) { return zcr_now_ns((int)clk); }

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
	struct zcr r; /* the queue's consumer */
	int activated;
	int snaplen, timeout_ms, nonblock;
	int pollfd; /* pcap_fileno's eventfd (always readable), -1: none */
	int last_valid; /* next_ex: last delivered handle, returned at the next call */
	uint32_t last;
	struct pcap_pkthdr hdr;
	struct bpf_program filter;
	int has_filter;
	volatile int brk;
	uint64_t passed, filtered;
	uint32_t nx_limit; /* next_ex: the burst it takes next, 1 up to MAX_BURST */
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

#define seterr(z, ...) zcr_seterr(&(z)->r, __VA_ARGS__)
#define parse_name zcr_parse_name

static int verbose(void)
{
	const char *v = getenv("ZCPCAP_VERBOSE");
	return v != NULL && *v != 0 && *v != '0';
}

/* take fills z->hdr for the next packet of the burst and returns its
 * data, or NULL when the filter drops it (its buffer is queued to go
 * back). */
static const u_char *take(struct zc *z, const struct zcr_desc *d, int64_t now)
{
	int64_t ts;
	const u_char *data = zcr_packet(&z->r, d, now, &ts);
	z->hdr.ts.tv_sec = ts / 1000000000ll;
	z->hdr.ts.tv_usec = (ts % 1000000000ll) / 1000;
	z->hdr.len = d->len;
	/* The filter sees the whole packet, as on Linux, where the snap
	 * length cuts only what is delivered: a filter looking past it
	 * (tcpdump -s 20 udp) would otherwise reject every packet. */
	z->hdr.caplen = d->len;
	if (z->has_filter) {
		REAL(int, pcap_offline_filter, (const struct bpf_program *, const struct pcap_pkthdr *, const u_char *));
		int pass = 0;
		/* bpf_filter reads the packet: a fault in it fails the queue */
		GUARDED(&z->r, return NULL, pass = real_pcap_offline_filter(&z->filter, &z->hdr, data));
		if (pass == 0) {
			z->filtered++;
			zcr_put(&z->r, d->handle);
			return NULL;
		}
	}
	if (z->hdr.caplen > (uint32_t)z->snaplen)
		z->hdr.caplen = (uint32_t)z->snaplen;
	z->passed++;
	return data;
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
	while (z->r.bi < z->r.bn && (cnt <= 0 || done < cnt)) {
		if (z->brk) {
			*stop = 1;
			break;
		}
		const struct zcr_desc *d = &z->r.burst[z->r.bi++];
		const u_char *data = take(z, d, now);
		if (data == NULL)
			continue;
		cb(user, &z->hdr, data);
		done++;
		if (zcr_put(&z->r, d->handle) != 0)
			return PCAP_ERROR;
	}
	if (zcr_flush(&z->r) != 0)
		return PCAP_ERROR;
	return done;
}

/* wait_deadline is when pcap_dispatch and pcap_next_ex give up waiting
 * (0: never): the read timeout, and at most POLLED_WAIT_MS once the tool
 * took pcap_fileno's descriptor, which is always readable, so that a tool
 * that polls it before each pcap_dispatch (softflowd) still gets back to
 * its timers and other descriptors while the queue is idle. */
#define POLLED_WAIT_MS 100
#define NONBLOCK_POLLED_NS 1000000
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
		z->r.limit = cnt > 0 ? (uint32_t)cnt : 0;
		int n = zcr_fetch(&z->r);
		if (n < 0)
			return PCAP_ERROR;
		if (n > 0) {
			int stop = 0;
			int done = deliver(z, cnt, cb, user, &stop);
			if (done != 0 || stop)
				return done == 0 && check_brk(z) ? PCAP_ERROR_BREAK : done;
			/* all filtered: read on, within the timeout */
			if (z->nonblock || (deadline != 0 && now_ns(CLOCK_MONOTONIC) >= deadline))
				return 0;
			continue;
		}
		if (z->nonblock) {
			/* A tool polling pcap_fileno's descriptor (always
			 * readable) in non-blocking mode would spin on an idle
			 * queue: it waits up to NONBLOCK_POLLED_NS for packets
			 * instead, woken by the first. */
			if (z->pollfd >= 0)
				zcr_wait(&z->r, NONBLOCK_POLLED_NS);
			return 0;
		}
		int64_t left = 1000000000;
		if (deadline != 0) {
			left = deadline - now_ns(CLOCK_MONOTONIC);
			if (left <= 0)
				return 0;
		}
		zcr_wait(&z->r, left);
	}
}

static int zc_loop(struct zc *z, int cnt, pcap_handler cb, u_char *user)
{
	int got = 0;
	for (;;) {
		if (check_brk(z))
			return PCAP_ERROR_BREAK;
		z->r.limit = cnt > 0 ? (uint32_t)(cnt - got) : 0;
		int n = zcr_fetch(&z->r);
		if (n < 0)
			return PCAP_ERROR;
		if (n == 0) {
			if (z->nonblock) /* as libpcap: loop on a non-blocking handle spins */
				continue;
			zcr_wait(&z->r, 1000000000);
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

static int zc_next_ex(struct zc *z, struct pcap_pkthdr **h, const u_char **data)
{
	if (!z->activated) {
		seterr(z, "not activated");
		return PCAP_ERROR_NOT_ACTIVATED;
	}
	if (z->last_valid) {
		z->last_valid = 0;
		if (zcr_put(&z->r, z->last) != 0 || zcr_flush(&z->r) != 0)
			return PCAP_ERROR;
	}
	int64_t deadline = wait_deadline(z);
	for (;;) {
		if (check_brk(z))
			return PCAP_ERROR_BREAK;
		/* A burst taken out of the queue and not delivered when the
		 * handle closes is lost: take one packet first, then twice
		 * as many each time the burst came full, so that a tool
		 * reading a few packets and closing loses none, and a steady
		 * reader gets whole bursts. */
		if (z->nx_limit == 0)
			z->nx_limit = 1;
		z->r.limit = z->nx_limit;
		int fresh = z->r.bi >= z->r.bn;
		int n = zcr_fetch(&z->r);
		if (n < 0)
			return PCAP_ERROR;
		if (fresh && n > 0 && (uint32_t)n >= z->nx_limit && z->nx_limit < MAX_BURST)
			z->nx_limit *= 2;
		if (n > 0) {
			const struct zcr_desc *d = &z->r.burst[z->r.bi++];
			const u_char *p = take(z, d, now_ns(CLOCK_REALTIME));
			if (p == NULL) {
				if (zcr_flush(&z->r) != 0)
					return PCAP_ERROR;
				if (z->nonblock || (deadline != 0 && now_ns(CLOCK_MONOTONIC) >= deadline))
					return 0;
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
		zcr_wait(&z->r, left);
	}
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
	zcr_init(&z->r, c, q);
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
	int r = zcr_attach(&z->r);
	if (r != 0) {
		zcr_detach(&z->r);
		return r == ZCR_NODEV ? PCAP_ERROR_NO_SUCH_DEVICE : r == ZCR_PERM ? PCAP_ERROR_PERM_DENIED : PCAP_ERROR;
	}
	z->activated = 1;
	if (verbose())
		fprintf(stderr, "libzcpcap: %s attached: %u slots, %u buffers of %u bytes%s\n", z->r.name, z->r.l.slots, z->r.l.numbufs,
			z->r.l.bufsize, z->r.side == SIDE_GUEST ? " (ivshmem device)" : "");
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
		snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s", lookup(p)->r.err);
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
OPTION(pcap_set_tstamp_type, int, if (v != PCAP_TSTAMP_HOST) return PCAP_WARNING_TSTAMP_TYPE_NOTSUP)
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
	ps->ps_recv = (u_int)z->passed;            /* "received by filter" */
	ps->ps_drop = (u_int)zcr_drops(&z->r);     /* the producer found the queue full */
	ps->ps_ifdrop = (u_int)z->r.bad;           /* descriptors refused */
	return 0;
}

char *pcap_geterr(pcap_t *p)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(char *, pcap_geterr, (pcap_t *));
		return real_pcap_geterr(p);
	}
	if (z->r.err[0] == 0) {
		/* Not the shim's error: one of the real libpcap's, which
		 * compiled the filter or opened the -w file on this handle. */
		REAL(char *, pcap_geterr, (pcap_t *));
		return real_pcap_geterr(p);
	}
	return z->r.err;
}

void pcap_perror(pcap_t *p, const char *prefix)
{
	if (lookup(p) == NULL) {
		REAL(void, pcap_perror, (pcap_t *, const char *));
		real_pcap_perror(p, prefix);
		return;
	}
	fprintf(stderr, "%s: %s\n", prefix, pcap_geterr(p));
}

/* pcap_inject and pcap_sendpacket: a queue is read here, not written. */
int pcap_inject(pcap_t *p, const void *buf, size_t size)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_inject, (pcap_t *, const void *, size_t));
		return real_pcap_inject(p, buf, size);
	}
	seterr(z, "sending is not supported: the shim reads a queue (zsend -o %s writes one)", z->r.name);
	return PCAP_ERROR;
}

int pcap_sendpacket(pcap_t *p, const u_char *buf, int size)
{
	struct zc *z = lookup(p);
	if (z == NULL) {
		REAL(int, pcap_sendpacket, (pcap_t *, const u_char *, int));
		return real_pcap_sendpacket(p, buf, size);
	}
	return pcap_inject(p, buf, (size_t)size) < 0 ? PCAP_ERROR : 0;
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
		fprintf(stderr, "libzcpcap: %s: received %llu, passed filter %llu, filtered %llu, bad %llu, queue drops %llu, wake-ups sent %llu, sleeps %llu (on the doorbell %llu), taken but not delivered %u%s%s\n",
			z->r.name, (unsigned long long)z->r.recv, (unsigned long long)z->passed, (unsigned long long)z->filtered,
			(unsigned long long)z->r.bad, (unsigned long long)zcr_drops(&z->r), (unsigned long long)z->r.wakes,
			(unsigned long long)z->r.sleeps, (unsigned long long)z->r.bell_sleeps, z->r.bn > z->r.bi ? z->r.bn - z->r.bi : 0,
			z->r.failed ? ", failed: " : "",
			z->r.failed ? z->r.err : "");
	if (z->last_valid && !z->r.failed)
		zcr_put(&z->r, z->last); /* the rest goes back in zcr_detach */
	z->last_valid = 0;
	zcr_detach(&z->r);
	unenroll(z);
	if (z->pollfd >= 0)
		close(z->pollfd);
	free(z->filter.bf_insns);
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

static int add_found(void *arg, const char *name, const char *desc) { return add_dev((pcap_if_t ***)arg, name, desc); }

int pcap_findalldevs(pcap_if_t **alldevs, char *errbuf)
{
	REAL(int, pcap_findalldevs, (pcap_if_t **, char *));
	/* The interfaces first, then the queues: a tool without -i takes the
	 * first device, and must not take a queue's one reader place. */
	pcap_if_t *head = NULL;
	int r = real_pcap_findalldevs(&head, errbuf);
	if (r != 0)
		head = NULL;
	pcap_if_t **tail = &head;
	while (*tail != NULL)
		tail = &(*tail)->next;
	pcap_if_t **queues = tail;
	zcr_list(add_found, &tail); /* host regions, then a guest's devices */
	if (r != 0 && *queues == NULL)
		return r;
	*alldevs = head;
	return 0;
}
