/* apicheck opens DEVICE with pcap_create and prints what the calls a
 * queue cannot honour return, one line each: "tstamp_type R" (asking for
 * the adapter's clock), "inject R MESSAGE", "sendpacket R MESSAGE".
 * Usage: apicheck DEVICE. */
#include <pcap/pcap.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	char err[PCAP_ERRBUF_SIZE];
	if (argc != 2)
		return 2;
	pcap_t *p = pcap_create(argv[1], err);
	if (p == NULL) {
		fprintf(stderr, "create: %s\n", err);
		return 1;
	}
	printf("tstamp_type %d\n", pcap_set_tstamp_type(p, PCAP_TSTAMP_ADAPTER));
	if (pcap_activate(p) < 0) {
		fprintf(stderr, "activate: %s\n", pcap_geterr(p));
		return 1;
	}
	u_char frame[60];
	memset(frame, 0, sizeof frame);
	int r = pcap_inject(p, frame, sizeof frame);
	printf("inject %d %s\n", r, pcap_geterr(p));
	r = pcap_sendpacket(p, frame, sizeof frame);
	printf("sendpacket %d %s\n", r, pcap_geterr(p));
	pcap_close(p);
	return 0;
}
