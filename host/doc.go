// Package host is the agent's engine: sources that write packets into a
// cluster's buffers (a generator, pcap replay, AF_XDP, AF_PACKET), the loop
// that balances them over the cluster's queues, and the export of queues
// to VMs (see host/qmp). Library code here does not log: it returns
// errors and counters; cmd/zchost logs.
package host
