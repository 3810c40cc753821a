/*
 * zcreader: a C consumer of one queue of a zcfabric region, format
 * version 2 (ivshmem/doc.go), with the checks of the Go consumer
 * (zc.Queue): the header is validated from a private copy
 * (ivshmem.Parse) and never re-read, every value read from shared memory
 * is range-checked before use, descriptors are copied out of the ring
 * before they are checked, a handle already held is refused, and memory
 * faults on the region (a truncated file: SIGBUS) become a "gone" error.
 *
 * libzcpcap.so (zcpcap.c) is the pcap API over it; fuzz/fuzz_reader.c
 * drives the same functions under libFuzzer. Not thread-safe per reader:
 * one thread uses a reader at a time (libpcap's rule for a pcap_t).
 */
#ifndef ZCREADER_H
#define ZCREADER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

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
#define FLAG_ONE_VM 4u /* ivshmem.FlagOneVM: one VM's own region */
#define PID_BITS 22    /* ivshmem.PIDBits: an owner word's pid bits */
#define TAG_NONE 0u    /* ivshmem.TagNone */
#define TAG_NESTED 1023u /* ivshmem.TagNested */
#define NS_FIRST 0xF0000000ull /* ivshmem's nsFirst: the first namespace inode */
#define HS_GO 0u
#define HS_WAIT 1u
#define HS_DONE 3u
#define WAKE_FUTEX 1u
#define WAKE_DOORBELL 2u
#define MAX_BURST 256
#define HS_WAIT_NS 1500000000ll /* zc.HandshakeWait */
#define HS_VANISHED_NS 2000000000ll /* zc.hsVanished */

/* ring header offsets */
#define R_PROD 0
#define R_RINGS 4 /* the ring's producer answers WAKE_DOORBELL by ringing: 1 */
#define R_PROD_STAT 8
#define R_CONS 128
#define R_CONS_STAT 136
#define R_WAKE 256

/* queue descriptor offsets */
#define Q_PROD_OWNER 40
#define Q_CONS_OWNER 48
#define Q_HANDSHAKE 56

/* Results of zcr_attach besides 0. */
#define ZCR_ERR (-1)   /* bad region, queue taken, ... */
#define ZCR_NODEV (-2) /* no such cluster or queue */
#define ZCR_PERM (-3)  /* no permission to open the region */

#define ZCR_API __attribute__((visibility("hidden")))

/* A data ring descriptor. */
struct zcr_desc {
	uint32_t handle, len, off, flags;
};

/* zcr_layout is what the consumer of one queue needs, validated once
 * from a private copy of the header (ivshmem.Parse) and never re-read. */
struct zcr_layout {
	uint64_t size, generation, qtable, metaoff, bufoff;
	uint32_t cluster, nqueues, bufsize, numbufs;
	uint32_t flags; /* header flags (FLAG_ONE_VM) */
	uint32_t slots;
	uint64_t dring, rring;
};

/* zcr is the consumer of one queue. */
struct zcr {
	char name[48];
	uint32_t cluster, queue;

	/* the mapping: a host region file, or a guest's ivshmem BAR2 */
	int fd;
	int mapped;         /* base was mapped by zcr_attach (unmapped by zcr_detach) */
	int attached;       /* the consumer end is ours */
	uint8_t *base;
	uint64_t size;
	uint32_t side;      /* SIDE_HOST, or SIDE_GUEST for an ivshmem device */
	char devdir[1024];  /* guest: the device's sysfs directory */
	uint8_t *regs;      /* guest: BAR0 (registers) mapped, to ring the doorbell */
	int regs_tried;
	int fault_slot;     /* index in the table of guarded mappings, -1: none */
	struct zcr_layout l;
	uint64_t owner; /* our owner word: side<<32 | tag<<22 | pid */

	/* consumer of the data ring */
	uint8_t *dr;
	struct zcr_desc *dslots;
	uint32_t dpos, dcached;
	uint64_t cstat[3]; /* packets, bytes, bad: ours, published at dr+R_CONS_STAT */
	/* producer of the return ring */
	uint8_t *rr;
	uint32_t *rslots;
	uint32_t rpos, rcached;
	uint64_t rstat; /* returned packets, published at rr+R_PROD_STAT */

	uint64_t *held; /* bitmap: buffers received and not returned */
	struct zcr_desc burst[MAX_BURST];
	int bn, bi; /* burst[bi:bn] received and not delivered yet */
	uint32_t limit; /* the next fetch takes at most this many (0: MAX_BURST): what
	                 * a tool asked for (tcpdump -c N), so that a reader that
	                 * stops leaves the rest in the ring for the next one */
	uint32_t ret[MAX_BURST];
	int nret; /* delivered, to return */

	/* attach handshake */
	int hs_pending;
	uint32_t hs_epoch;
	int64_t hs_deadline;

	int failed, gone;
	volatile sig_atomic_t faulted; /* the region's memory faulted (SIGBUS) */
	uint32_t idle;   /* empty polls in a row: the region is looked at every 64 */
	uint32_t bursts; /* and every 256 bursts */
	uint32_t nap_ns;
	uint64_t drops0; /* the producer's drop counter at attach */
	uint64_t drops;  /* its last value read, less drops0: what zcr_drops says once the queue is gone */
	uint64_t recv, bad, wakes, sleeps;
	uint32_t sleep_no; /* our sleep number: the data ring's wake word is sleep_no << 2 | code */
	uint32_t woken;    /* the last return-ring wake word answered */

	/* guest, ivshmem-doorbell device: the interrupts that another process
	 * of the guest holds through VFIO, passed on to us (guest/share.go) */
	int share_fd;       /* our connection to that process, -1: not subscribed */
	int bell_fd;        /* the eventfd it writes on each interrupt, -1: none */
	int vfio_fd[3];     /* VFIO descriptors (device, group, container), kept: the device stays open while we read */
	int lend_fd;        /* listening to lend them while nobody holds the interrupts, -1: not */
	int req_fd;         /* eventfd of the device request (an unplug) while lending, -1: none */
	int64_t sub_next;   /* CLOCK_MONOTONIC ns of the next attempt to subscribe (INT64_MAX: never: unplugged) */
	int64_t lend_next;  /* and to lend */
	uint64_t bell_sleeps; /* sleeps on the doorbell */
	char err[256];
};

/* zcr_parse_header validates header hdr (HDR_SIZE bytes copied out of a
 * region of size bytes) as ivshmem.Parse does, and the descriptor of
 * queue q (QDESC_SIZE bytes copied out) when qd is not NULL. It returns
 * 0, or -1 on a bad region and -2 for a queue the region does not have,
 * with a message in err. */
ZCR_API int zcr_parse_header(const uint8_t *hdr, uint64_t size, uint32_t q, const uint8_t *qd, struct zcr_layout *l, char *err, size_t errlen);

/* zcr_parse_name parses zc:CLUSTER@QUEUE (decimal). It returns 1 for a zc
 * name, 0 for another name, -1 for a malformed zc name. */
ZCR_API int zcr_parse_name(const char *s, uint32_t *c, uint32_t *q);

/* zcr_init readies r for queue q of cluster c. */
ZCR_API void zcr_init(struct zcr *r, uint32_t c, uint32_t q);

/* zcr_seterr sets r's message, "NAME: ..." */
ZCR_API void zcr_seterr(struct zcr *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* zcr_attach maps the cluster's region (the host's $ZC_DIR/zc-C, else a
 * guest's ivshmem device under $ZC_SYSFS) and attaches as the queue's
 * consumer. It returns 0, or ZCR_ERR, ZCR_NODEV or ZCR_PERM with r->err
 * set; zcr_detach then cleans up either way. */
ZCR_API int zcr_attach(struct zcr *r);

/* zcr_attach_mapped attaches to a region already at r->base (r->size
 * bytes, r->side set): validation, claim, take-over of the ring indices.
 * path names it in messages. */
ZCR_API int zcr_attach_mapped(struct zcr *r, const char *path);

/* zcr_fetch receives a burst into r->burst when it is empty
 * (zc.Queue.recvBurst). It returns the number of packets waiting in
 * r->burst[r->bi:r->bn], 0 when the queue is empty, or ZCR_ERR (r->err
 * says why; the queue is failed for good). */
ZCR_API int zcr_fetch(struct zcr *r);

/* zcr_packet returns the data of a packet of the burst (a pointer into
 * its shared buffer, d->len bytes) and its time stamp: the metadata
 * record's when the descriptor has one, else now. */
ZCR_API const uint8_t *zcr_packet(struct zcr *r, const struct zcr_desc *d, int64_t now, int64_t *ts);

/* zcr_put queues handle h (a packet of a burst) to go back to the
 * producer; zcr_flush pushes what is queued onto the return ring. They
 * return 0 or ZCR_ERR. */
ZCR_API int zcr_put(struct zcr *r, uint32_t h);
ZCR_API int zcr_flush(struct zcr *r);

/* zcr_wait waits a little for packets, at most max_ns: naps, then a
 * futex sleep where the producer can wake it. */
ZCR_API void zcr_wait(struct zcr *r, int64_t max_ns);

/* zcr_release gives back the packets of the burst not delivered. */
ZCR_API void zcr_release(struct zcr *r);

/* zcr_region_ok is ivshmem's Layout.Check (and, in a guest, the device
 * is still in sysfs); on 0, r->err says why. */
ZCR_API int zcr_region_ok(struct zcr *r);

/* zcr_drops returns the producer's drop counter since attach. */
ZCR_API uint64_t zcr_drops(struct zcr *r);

/* zcr_detach gives back what r holds, frees the consumer end, unmaps. */
ZCR_API void zcr_detach(struct zcr *r);

/* zcr_list calls add for every queue it can see: the host regions of
 * $ZC_DIR, then a guest's ivshmem devices. add returns nonzero to stop. */
typedef int (*zcr_add_fn)(void *arg, const char *name, const char *desc);
ZCR_API void zcr_list(zcr_add_fn add, void *arg);

/* zcr_now_ns reads clock clk in ns. */
ZCR_API int64_t zcr_now_ns(int clk);

#endif
