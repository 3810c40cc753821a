// Package pcapshim holds libzcpcap.so (src/zcpcap.c), a library that
// unmodified libpcap programs load with LD_PRELOAD to capture from
// zcfabric queues by name, zc:CLUSTER@QUEUE, zero copy; every other
// device name goes to the real libpcap. scripts/build.sh builds it into
// bin/libzcpcap.so. The package has no Go API: its tests build the library
// and drive stock tcpdump, and a small libpcap program, against queues
// that zchost feeds. See README.md in this directory.
package pcapshim
