// Package zc is zcfabric's API: clusters of packet buffers in shared
// memory, and single-producer/single-consumer queues of buffer handles
// between them and their users, on a host or inside a KVM guest alike.
// Linux only (memfd, hugetlbfs, futex(2), sysfs PCI devices); the region
// format itself, package ivshmem, builds everywhere.
//
// A cluster is one region (see package ivshmem for its bytes): a header,
// a table of queues, two rings per queue (data: producer to consumer;
// return: consumer to producer) and the buffers. Packets are written once
// into a buffer and never move; only 32-bit handles travel, in bursts.
//
//	c, _ := zc.CreateCluster(zc.Config{ID: 99, Queues: 2})  // the agent
//	q, _ := zc.Open("zc:99@0")                               // a consumer, host or guest
//	n, _ := q.RecvBurst(pkts)
//	... pkts[:n] are views into the buffers ...
//	q.Release(pkts[:n]...)
//
// A producer either fills Packets (Alloc, then SendBurst) or, faster,
// writes its frames in place (Reserve, Burst.Buf and SetLen, Commit):
//
//	var b zc.Burst
//	n, _ := p.ReserveWait(ctx, &b, 32)
//	for i := range n {
//		b.SetLen(i, copy(b.Buf(i), frame(i)))
//	}
//	p.Commit(&b, n)
//
// Ownership: every buffer belongs to one party at a time. A producer
// lends buffers through the data ring and records each loan in its own
// memory; the consumer gives them back through the return ring, and only
// what was lent on that queue comes back (anything else is counted as a
// bad return). A consumer that dies holding buffers is recovered by the
// next one's attach handshake.
//
// Trust: the region is shared with other processes and, for a VM, with
// the guest, who may write any byte of it at any time. Everything read
// from it is checked before use; a queue whose peer breaks the protocol
// fails alone (Queue.Err), with its packets counted as drops, and a
// region whose file is truncated under the mapping fails with ErrFault
// instead of SIGBUS. Counters a party keeps in its own memory are its
// record (QueueStats.View); the peer's are reports.
//
// Workers (Balancer, RunBalancer, RunFanout, RunPipeline) move packets
// between queues without copying within a region, and with one counted
// copy into another region (a VM's own trust domain).
package zc
