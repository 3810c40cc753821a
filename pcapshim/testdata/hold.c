/* hold exercises the shim's SIGBUS handling. Usage: hold MODE DEVICE.
 *
 *   hold DEVICE: reads one packet with pcap_next_ex, prints "got LEN",
 *     waits for a line on stdin (the test truncates the region file
 *     meanwhile), then reads the packet's bytes (outside any library call:
 *     the shim must not let that kill us) and prints "sum S", then calls
 *     pcap_next_ex again and prints "next R ERROR"; exits 0.
 *   elsewhere DEVICE: opens DEVICE (the shim installs its handler), then
 *     faults on a mapping of its own: it must die of SIGBUS as without
 *     the shim.
 *   own DEVICE: installs a SIGBUS handler of its own first, then does as
 *     elsewhere: its handler must run (it exits 3). */
#define _GNU_SOURCE
#include <pcap/pcap.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void own(int sig)
{
	(void)sig;
	static const char msg[] = "own handler\n";
	if (write(1, msg, sizeof msg - 1) < 0)
		_exit(4);
	_exit(3);
}

/* fault touches a page of a file truncated under its mapping. */
static int fault(void)
{
	FILE *f = tmpfile();
	if (f == NULL || ftruncate(fileno(f), 8192) != 0)
		return 1;
	volatile unsigned char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(f), 0);
	if (m == MAP_FAILED || ftruncate(fileno(f), 0) != 0)
		return 1;
	printf("touching\n");
	fflush(stdout);
	return m[4096];
}

int main(int argc, char **argv)
{
	char err[PCAP_ERRBUF_SIZE];
	if (argc != 3)
		return 2;
	if (strcmp(argv[1], "own") == 0)
		signal(SIGBUS, own);
	pcap_t *p = pcap_open_live(argv[2], 65535, 0, 100, err);
	if (p == NULL) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	if (strcmp(argv[1], "hold") != 0)
		return fault() == 0 ? 5 : 6;

	struct pcap_pkthdr *h;
	const u_char *d;
	int r;
	while ((r = pcap_next_ex(p, &h, &d)) == 0)
		;
	if (r != 1) {
		fprintf(stderr, "next_ex: %d %s\n", r, pcap_geterr(p));
		return 1;
	}
	printf("got %u\n", h->caplen);
	fflush(stdout);
	char line[16];
	if (fgets(line, sizeof line, stdin) == NULL)
		return 1;
	unsigned long sum = 0;
	for (unsigned i = 0; i < h->caplen; i++)
		sum += d[i];
	printf("sum %lu\n", sum);
	r = pcap_next_ex(p, &h, &d);
	printf("next %d %s\n", r, r < 0 ? pcap_geterr(p) : "");
	pcap_close(p);
	return 0;
}
