/* nextex reads a queue through pcap_open_live, pcap_next_ex,
 * pcap_setnonblock and pcap_dispatch (the calls tcpdump does not make)
 * and prints one line per packet: "seq LEN SEQ", then "stats RECV DROP".
 * Usage: nextex DEVICE N. */
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long long seq_of(const u_char *d, unsigned len)
{
	unsigned long long s = 0;
	if (len < 54 || memcmp(d + 42, "ZCGN", 4) != 0)
		return ~0ull;
	for (int i = 0; i < 8; i++)
		s = s << 8 | d[46 + i];
	return s;
}

static void print(u_char *user, const struct pcap_pkthdr *h, const u_char *d)
{
	(void)user;
	printf("seq %u %llu\n", h->caplen, seq_of(d, h->caplen));
}

int main(int argc, char **argv)
{
	char err[PCAP_ERRBUF_SIZE];
	if (argc != 3)
		return 2;
	int n = atoi(argv[2]), got = 0;
	pcap_t *p = pcap_open_live(argv[1], 65535, 0, 100, err);
	if (p == NULL) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	if (pcap_datalink(p) != DLT_EN10MB || pcap_get_selectable_fd(p) != -1) {
		fprintf(stderr, "datalink %d, selectable fd %d\n", pcap_datalink(p), pcap_get_selectable_fd(p));
		return 1;
	}
	/* First half with pcap_next_ex (blocking, 100 ms timeout). */
	while (got < n / 2) {
		struct pcap_pkthdr *h;
		const u_char *d;
		int r = pcap_next_ex(p, &h, &d);
		if (r < 0) {
			fprintf(stderr, "next_ex: %d %s\n", r, pcap_geterr(p));
			return 1;
		}
		if (r == 1) {
			print(NULL, h, d);
			got++;
		}
	}
	/* The rest with non-blocking pcap_dispatch. */
	if (pcap_setnonblock(p, 1, err) != 0 || pcap_getnonblock(p, err) != 1) {
		fprintf(stderr, "nonblock\n");
		return 1;
	}
	while (got < n) {
		int r = pcap_dispatch(p, n - got, print, NULL);
		if (r < 0) {
			fprintf(stderr, "dispatch: %d %s\n", r, pcap_geterr(p));
			return 1;
		}
		got += r;
		if (r == 0)
			usleep(100);
	}
	struct pcap_stat st;
	if (pcap_stats(p, &st) != 0) {
		fprintf(stderr, "stats: %s\n", pcap_geterr(p));
		return 1;
	}
	printf("stats %u %u\n", st.ps_recv, st.ps_drop);
	pcap_close(p);
	return 0;
}
