/* crossread reads N packets from a queue through the libpcap API (the
 * shim preloaded) and checks each against the pattern the Go side of
 * cross_test.go produces: its length, every byte, its order, and its time
 * stamp where the producer set one. It mixes pcap_dispatch, pcap_loop and
 * pcap_next_ex, and prints "ok N" then "stats RECV DROP IFDROP", or the
 * first mismatch ("bad ...", exit status 1).
 *
 * Usage: crossread DEVICE N BUFSIZE
 *
 * The pattern (keep in step with cross_test.go), for packet number seq in
 * a buffer of B bytes:
 *   length  B if seq % 97 == 0, 1 if seq % 89 == 0, else 14 + seq*37 % (B/2)
 *   byte i  (seq >> 8i) & 0xff for i < 4, else (seq*131 + i*7) & 0xff
 *   time    seq % 3 == 0: TS0 + seq*1000 + 999 ns (in the metadata
 *           record); otherwise none (the reader's clock). */
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TS0 1700000000000000000ll

static uint32_t bufsize;
static uint64_t next; /* the seq expected next */
static time_t started;

static uint32_t plen(uint64_t seq)
{
	if (seq % 97 == 0)
		return bufsize;
	if (seq % 89 == 0)
		return 1;
	return 14 + (uint32_t)(seq * 37 % (bufsize / 2));
}

static uint8_t pbyte(uint64_t seq, uint32_t i)
{
	return i < 4 ? (uint8_t)(seq >> (8 * i)) : (uint8_t)(seq * 131 + i * 7);
}

static void check(u_char *user, const struct pcap_pkthdr *h, const u_char *d)
{
	(void)user;
	uint64_t seq = next++;
	uint32_t want = plen(seq);
	if (h->len != want || h->caplen != want) {
		printf("bad seq %llu: length %u (captured %u), want %u\n", (unsigned long long)seq, h->len, h->caplen, want);
		exit(1);
	}
	for (uint32_t i = 0; i < want; i++)
		if (d[i] != pbyte(seq, i)) {
			printf("bad seq %llu: byte %u is %#x, want %#x (the packet's seq bytes say %u)\n", (unsigned long long)seq, i, d[i],
			       pbyte(seq, i), want >= 4 ? (unsigned)(d[0] | d[1] << 8 | d[2] << 16 | (unsigned)d[3] << 24) : d[0]);
			exit(1);
		}
	if (seq % 3 == 0) {
		long long ts = TS0 + (long long)seq * 1000 + 999;
		if (h->ts.tv_sec != ts / 1000000000 || h->ts.tv_usec != ts % 1000000000 / 1000) {
			printf("bad seq %llu: time %lld.%06ld, want %lld.%06lld\n", (unsigned long long)seq, (long long)h->ts.tv_sec,
			       (long)h->ts.tv_usec, ts / 1000000000, ts % 1000000000 / 1000);
			exit(1);
		}
	} else if (h->ts.tv_sec < started - 5 || h->ts.tv_sec > time(NULL) + 5) {
		printf("bad seq %llu: time %lld, not the reader's clock (%lld)\n", (unsigned long long)seq, (long long)h->ts.tv_sec,
		       (long long)started);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	char err[PCAP_ERRBUF_SIZE];
	if (argc != 4)
		return 2;
	uint64_t n = strtoull(argv[2], NULL, 10);
	bufsize = (uint32_t)strtoul(argv[3], NULL, 10);
	started = time(NULL);
	pcap_t *p = pcap_open_live(argv[1], 262144, 0, 100, err);
	if (p == NULL) {
		printf("open: %s\n", err);
		return 1;
	}
	printf("attached\n");
	fflush(stdout);
	while (next < n) {
		uint64_t left = n - next;
		int r;
		switch (next / 1000 % 3) {
		case 0:
			r = pcap_dispatch(p, (int)(1 + next % 7 < left ? 1 + next % 7 : left), check, NULL);
			break;
		case 1:
			r = pcap_loop(p, (int)(1 + next % 5 < left ? 1 + next % 5 : left), check, NULL);
			break;
		default: {
			struct pcap_pkthdr *h;
			const u_char *d;
			r = pcap_next_ex(p, &h, &d);
			if (r == 1)
				check(NULL, h, d);
			break;
		}
		}
		if (r < 0) {
			printf("bad read at seq %llu: %d %s\n", (unsigned long long)next, r, pcap_geterr(p));
			return 1;
		}
	}
	struct pcap_stat st;
	if (pcap_stats(p, &st) != 0) {
		printf("stats: %s\n", pcap_geterr(p));
		return 1;
	}
	printf("ok %llu\nstats %u %u %u\n", (unsigned long long)next, st.ps_recv, st.ps_drop, st.ps_ifdrop);
	pcap_close(p);
	return 0;
}
