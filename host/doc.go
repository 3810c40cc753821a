// Package host is the agent's engine: sources that write packets into a
// cluster's buffers (a generator, pcap replay, AF_XDP, AF_PACKET, with an
// optional classic BPF filter), the loop that balances them over the
// cluster's queues, and sinks that send a queue's packets out of an
// interface (AF_XDP or AF_PACKET TX). It does not talk to VMs: cmd/zchost
// exports queues to them with host/qmp (QEMU's monitor) and host/libvirt.
// Library code here does not log: it returns errors and counters;
// cmd/zchost logs.
package host
