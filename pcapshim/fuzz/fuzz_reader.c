/*
 * fuzz_reader: libFuzzer harness for the C reader of the region format
 * (../src/zcreader.c, linked as it is: the same functions libzcpcap.so
 * runs). It models a hostile producer, the side a guest or another
 * process controls:
 *
 *  1. it builds a valid region (2 queues of 8 slots, 32 buffers of 256
 *     bytes, 16 KiB, in a heap block of exactly the region's size, so
 *     AddressSanitizer sees any access outside it), patches the header,
 *     queue descriptors and rings (its first 8 KiB) with input bytes (recomputing the header's
 *     CRC when the input says so, to get past it) and attaches to queue
 *     0 or 1 (zcr_attach_mapped: header and descriptor validation, claim,
 *     take-over of the ring indices);
 *  2. then, op by op, the producer rewrites any bytes of the region
 *     (rings, indices, descriptors, wake words, owner words, handshake
 *     word, header) or enqueues descriptors of its choosing, and the
 *     reader fetches bursts, reads every delivered packet's bytes,
 *     returns them, flushes, waits (0 ns), looks at the region, releases.
 *
 * Checked after every reader call, besides the sanitizers: the reader
 * writes only the words a consumer owns (the data ring's consumer index,
 * consumer counters and wake word; the return ring's producer index,
 * producer counters and slots; the queue's consumer owner and handshake
 * words), and only handles of the region onto the return ring; a
 * delivered packet lies inside its own buffer and its handle is not one
 * the caller holds already. A failed check aborts (a finding).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I../src \
 *       fuzz_reader.c ../src/zcreader.c -o fuzz_reader
 *   ./fuzz_reader corpus/     (scripts/fuzz.sh does this)
 */
#include "zcreader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define F_QUEUES 2u
#define F_SLOTS 8u
#define F_BUFSIZE 256u
#define F_NUMBUFS 32u
#define F_SIZE 16384u
#define F_MAXSIZE (1u << 20)

static uint32_t crc_tab[256];

static uint32_t crc(const uint8_t *b, size_t n)
{
	if (crc_tab[1] == 0)
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
			crc_tab[i] = c;
		}
	uint32_t c = ~0u;
	for (size_t i = 0; i < n; i++)
		c = crc_tab[(c ^ b[i]) & 0xff] ^ (c >> 8);
	return ~c;
}

static void put32(uint8_t *b, uint32_t v) { memcpy(b, &v, 4); }
static void put64(uint8_t *b, uint64_t v) { memcpy(b, &v, 8); }
static uint32_t get32(const uint8_t *b) { uint32_t v; memcpy(&v, b, 4); return v; }

/* build writes a valid region of F_SIZE bytes, as ivshmem's plan does:
 * header, queue table at 4096, per queue its data ring then its return
 * ring from align128(T+64*Q), metadata, page-aligned buffers. */
static void build(uint8_t *b)
{
	memset(b, 0, F_SIZE);
	memcpy(b, "ZCFABRIC", 8);
	put32(b + 8, 2);
	put32(b + 12, HDR_SIZE);
	put64(b + 16, F_SIZE);
	put32(b + 24, 99);
	put64(b + 32, 7); /* generation */
	put32(b + 40, F_QUEUES);
	put32(b + 44, QDESC_SIZE);
	put64(b + 48, HDR_SIZE);
	put32(b + 56, F_BUFSIZE);
	put32(b + 60, F_NUMBUFS);
	put32(b + 64, META_SIZE);
	put32(b + 68, 0);
	put32(b + 72, 16); /* engine pool: buffers 0..15 */
	uint64_t off = (HDR_SIZE + F_QUEUES * QDESC_SIZE + LINE - 1) & ~(uint64_t)(LINE - 1);
	for (uint32_t q = 0; q < F_QUEUES; q++) {
		uint8_t *d = b + HDR_SIZE + q * QDESC_SIZE;
		put32(d, q);
		put32(d + 4, F_SLOTS);
		put64(d + 8, off);
		off += (RING_HDR + DESC_SIZE * F_SLOTS + LINE - 1) & ~(uint64_t)(LINE - 1);
		put64(d + 16, off);
		off += (RING_HDR + 4 * F_SLOTS + LINE - 1) & ~(uint64_t)(LINE - 1);
		put32(d + 24, 16 + 8 * q); /* queue pool */
		put32(d + 28, 8);
		put64(d + Q_PROD_OWNER, (uint64_t)SIDE_HOST << 32 | 1); /* pid 1 never goes away */
	}
	uint64_t meta = (off + 7) & ~7ull;
	put64(b + 80, meta);
	put64(b + 88, (meta + F_NUMBUFS * META_SIZE + 4095) & ~4095ull);
	put64(b + 96, 1);
	put32(b + 104, 1);
	put32(b + 108, crc(b, 108));
	put32(b + 128, STATE_READY);
}

/* input is the fuzzer's bytes, read front to back; exhausted reads 0. */
struct input {
	const uint8_t *p;
	size_t n;
};

static uint32_t in8(struct input *in)
{
	if (in->n == 0)
		return 0;
	in->n--;
	return *in->p++;
}

static uint32_t in16(struct input *in)
{
	uint32_t lo = in8(in);
	return lo | in8(in) << 8;
}

static uint32_t in32(struct input *in)
{
	uint32_t lo = in16(in);
	return lo | in16(in) << 16;
}

/* The words a consumer may write, as [offset, offset+len) in the region. */
struct span {
	uint64_t off, len;
};

static int allowed(const struct span *s, int n, uint64_t i)
{
	for (int k = 0; k < n; k++)
		if (i >= s[k].off && i - s[k].off < s[k].len)
			return 1;
	return 0;
}

static uint8_t *region, *before;
static uint64_t rsize;
static struct span spans[9];
static int nspans;
static uint64_t rslots_off; /* the return ring's slots */
static uint8_t caller_held[F_MAXSIZE / MIN_BUF];
#define MAXHELD 64
static uint32_t held[MAXHELD];
static int nheld;

/* check compares the region with the copy taken before a reader call
 * (not instrumented for coverage: its comparisons say nothing about the
 * reader, and would cost most of the run). */
__attribute__((no_sanitize("coverage", "address", "undefined"))) static void check(const struct zcr *r, const char *op)
{
	for (uint64_t i = 0; i < rsize; i++) {
		if ((i & 7) == 0 && i + 8 <= rsize) {
			uint64_t a, b;
			memcpy(&a, region + i, 8);
			memcpy(&b, before + i, 8);
			if (a == b) {
				i += 7;
				continue;
			}
		}
		if (region[i] == before[i])
			continue;
		if (!allowed(spans, nspans, i)) {
			fprintf(stderr, "fuzz_reader: %s wrote byte %llu (%#x -> %#x), a word the consumer does not own\n", op,
				(unsigned long long)i, before[i], region[i]);
			abort();
		}
		if (i >= rslots_off && i - rslots_off < 4ull * r->l.slots) {
			uint64_t slot = (i - rslots_off) / 4;
			uint32_t h = get32(region + rslots_off + slot * 4);
			if (h >= r->l.numbufs) {
				fprintf(stderr, "fuzz_reader: %s returned handle %u of %u buffers\n", op, h, r->l.numbufs);
				abort();
			}
		}
	}
}

#define CALL(r, op, stmt)                            \
	do {                                         \
		memcpy(before, region, rsize);       \
		stmt;                                \
		check(r, op);                        \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = {data, size};
	static uint8_t proto[F_SIZE];
	build(proto);

	/* 1. Geometry: patches over the header, the queue table and the
	 * rings (what the reader validates at attach). */
	uint32_t flags = in8(&in);
	static uint8_t hdr[F_SIZE / 2];
	memcpy(hdr, proto, sizeof hdr);
	for (uint32_t n = in8(&in) % 8; n > 0; n--) {
		uint32_t off = in16(&in) % sizeof hdr, len = in8(&in) % 8 + 1;
		for (uint32_t k = 0; k < len && off + k < sizeof hdr; k++)
			hdr[off + k] = (uint8_t)in8(&in);
	}
	if (flags & 1)
		put32(hdr + 108, crc(hdr, 108));
	uint64_t want = 0;
	memcpy(&want, hdr + 16, 8);
	rsize = want >= HDR_SIZE + F_QUEUES * QDESC_SIZE && want <= F_MAXSIZE ? want : F_SIZE;
	region = malloc(rsize);
	before = malloc(rsize);
	if (region == NULL || before == NULL)
		abort();
	memset(region, 0, rsize);
	memcpy(region, proto, rsize < F_SIZE ? rsize : F_SIZE);
	memcpy(region, hdr, rsize < sizeof hdr ? rsize : sizeof hdr);

	struct zcr r;
	uint32_t q = flags >> 1 & 1;
	zcr_init(&r, 99, q);
	r.base = region;
	r.size = rsize;
	r.side = flags & 4 ? SIDE_GUEST : SIDE_HOST;
	int rc = zcr_attach_mapped(&r, "fuzz");
	if (rc != 0) {
		zcr_detach(&r);
		free(region);
		free(before);
		return 0;
	}
	/* Attached: the layout is validated; everything it names must lie
	 * inside the region (AddressSanitizer checks the accesses too). */
	const struct zcr_layout *l = &r.l;
	if (l->dring + RING_HDR + (uint64_t)DESC_SIZE * l->slots > rsize || l->rring + RING_HDR + 4ull * l->slots > rsize ||
	    l->bufoff + (uint64_t)l->numbufs * l->bufsize > rsize || l->metaoff + (uint64_t)l->numbufs * META_SIZE > rsize)
		abort();
	uint64_t qd = l->qtable + (uint64_t)q * QDESC_SIZE;
	nspans = 0;
	spans[nspans++] = (struct span){l->dring + R_CONS, 4};
	spans[nspans++] = (struct span){l->dring + R_CONS_STAT, 24};
	spans[nspans++] = (struct span){l->dring + R_WAKE, 4};
	spans[nspans++] = (struct span){l->rring + R_PROD, 4};
	spans[nspans++] = (struct span){l->rring + R_RINGS, 4};
	spans[nspans++] = (struct span){l->rring + R_PROD_STAT, 24};
	spans[nspans++] = (struct span){l->rring + RING_HDR, 4ull * l->slots};
	spans[nspans++] = (struct span){qd + Q_CONS_OWNER, 8};
	spans[nspans++] = (struct span){qd + Q_HANDSHAKE, 4};
	rslots_off = l->rring + RING_HDR;
	memset(caller_held, 0, sizeof caller_held);
	nheld = 0;
	uint32_t prod = get32(region + l->dring + R_PROD);

	/* 2. The producer and the reader take turns. */
	while (in.n > 0 && !r.failed) {
		switch (in8(&in) % 10) {
		case 0: { /* rewrite any bytes */
			uint64_t off = in32(&in) % rsize;
			for (uint32_t len = in8(&in) % 16 + 1; len > 0 && off < rsize; len--)
				region[off++] = (uint8_t)in8(&in);
			break;
		}
		case 1:
		case 2: { /* enqueue a descriptor, mostly plausible */
			uint32_t sel = in8(&in);
			uint32_t h = sel & 0x80 ? in32(&in) : sel % l->numbufs;
			uint32_t len = sel & 0x40 ? in32(&in) : in16(&in) % (l->bufsize + 1);
			uint32_t off = sel & 0x20 ? in32(&in) : in8(&in) % (l->bufsize + 1);
			uint32_t fl = sel & 0x10 ? DESC_META | in8(&in) : in8(&in);
			struct zcr_desc d = {h, len, off, fl};
			memcpy(region + l->dring + RING_HDR + (uint64_t)DESC_SIZE * (prod & (l->slots - 1)), &d, sizeof d);
			if (fl & DESC_META)
				put64(region + l->metaoff + (uint64_t)(h % l->numbufs) * META_SIZE, in32(&in));
			prod += sel & 8 ? in8(&in) : 1; /* sometimes a jump */
			put32(region + l->dring + R_PROD, prod);
			break;
		}
		case 3: { /* the reader fetches, and takes some packets */
			int n;
			CALL(&r, "fetch", n = zcr_fetch(&r));
			for (uint32_t want = in8(&in) % 8; n > 0 && want > 0 && r.bi < r.bn && nheld < MAXHELD; want--) {
				const struct zcr_desc *d = &r.burst[r.bi++];
				int64_t ts;
				const uint8_t *p;
				CALL(&r, "packet", p = zcr_packet(&r, d, 1, &ts));
				const uint8_t *buf = region + l->bufoff + (uint64_t)d->handle * l->bufsize;
				if (d->handle >= l->numbufs || p < buf || p + d->len > buf + l->bufsize || caller_held[d->handle]) {
					fprintf(stderr, "fuzz_reader: delivered handle %u off %u len %u (held: %d)\n", d->handle, d->off,
						d->len, d->handle < l->numbufs ? caller_held[d->handle] : -1);
					abort();
				}
				volatile uint32_t sum = 0;
				for (uint32_t k = 0; k < d->len; k++)
					sum += p[k]; /* AddressSanitizer: inside the region */
				(void)sum;
				caller_held[d->handle] = 1;
				held[nheld++] = d->handle;
			}
			break;
		}
		case 4: /* the caller returns some packets, and flushes */
			for (uint32_t k = in8(&in) % 8; k > 0 && nheld > 0; k--) {
				uint32_t h = held[--nheld];
				caller_held[h] = 0;
				CALL(&r, "put", zcr_put(&r, h));
			}
			CALL(&r, "flush", zcr_flush(&r));
			break;
		case 5:
			CALL(&r, "wait", zcr_wait(&r, 0));
			break;
		case 6:
			CALL(&r, "region_ok", zcr_region_ok(&r));
			break;
		case 7:
			CALL(&r, "drops", (void)zcr_drops(&r));
			break;
		case 8:
			CALL(&r, "release", zcr_release(&r));
			break;
		case 9: /* the producer consumes returns */
			put32(region + l->rring + R_CONS, get32(region + l->rring + R_PROD) - (in8(&in) & 3));
			break;
		}
	}
	while (nheld > 0 && !r.failed)
		CALL(&r, "put", zcr_put(&r, held[--nheld]));
	CALL(&r, "detach", zcr_detach(&r));
	free(region);
	free(before);
	return 0;
}
