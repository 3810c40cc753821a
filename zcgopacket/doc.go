// Package zcgopacket makes the consumer end of a zcfabric queue a gopacket
// packet source, so code written for gopacket (decoders, flow tables,
// pcapgo writers) reads a queue as it reads a pcap handle, on the host and
// inside a guest alike:
//
//	src, err := zcgopacket.Open("zc:99@0")
//	if err != nil { ... }
//	defer src.Close()
//	ps := gopacket.NewZeroCopyPacketSource(src, src.LinkType())
//	for {
//		p, err := ps.NextPacket()
//		if errors.Is(err, io.EOF) { break } // the cluster was closed, or the source
//		...
//	}
//
// It is an adapter package so that package zc does not depend on gopacket.
// It uses github.com/gopacket/gopacket, the maintained fork of
// github.com/google/gopacket that the rest of this module already uses
// (zdump's pcapng writer): its pure-Go root package and layers only, no
// cgo. The interfaces it satisfies are that module's types.
//
// # Two ways to read
//
// A Source is a gopacket.PacketDataSource: ReadPacketData returns a fresh
// copy of each packet, the caller's to keep. It is also a
// gopacket.ZeroCopyPacketDataSource: ZeroCopyReadPacketData returns a
// slice that points into the packet's buffer in shared memory, valid until
// the next read or Close, and must not be written.
//
// Internally both move packets in bursts (WithBurst, default 64): a read
// that finds the current burst used up gives that burst's buffers back to
// the producer in one step, then receives the next burst, waiting if the
// queue is empty. So at most one burst of buffers is held at a time, and a
// zero-copy read allocates nothing.
//
// # Capture info
//
// Timestamp is the time the producer wrote in the packet's metadata (a
// capture's kernel timestamp, the generator's clock) when it set one, else
// the time the burst holding the packet was received. CaptureLength and
// Length are both the packet's length: the queue carries whole frames, and
// the format has no separate wire length. InterfaceIndex is the port the
// producer set (the capturing interface's ifindex for AF_XDP and AF_PACKET
// sources, as gopacket's afpacket reports it), unless WithInterfaceIndex
// fixes it (a pcapgo.NgWriter with one interface wants 0).
//
// # How reads end
//
// Every error a read returns is final: later reads return it again. Each
// wraps io.EOF or io.ErrUnexpectedEOF, so gopacket.PacketSource's Packets
// channel closes instead of retrying:
//
//   - the cluster closed by its creator: io.EOF and zc.ErrClosed, once the
//     packets still queued were read;
//   - the source's context ended (WithContext): io.EOF and the context's
//     error;
//   - Close, from any goroutine, also while another goroutine is blocked in
//     a read: io.EOF and ErrClosed;
//   - the queue failed (a guest's device unplugged, the region re-created
//     or truncated, a producer that broke the ring protocol):
//     io.ErrUnexpectedEOF and the zc error (zc.ErrGone, zc.ErrCorrupt,
//     zc.ErrFault).
//
// A Source is for one reading goroutine, as a zc.Queue is; only Close may
// be called from another.
package zcgopacket
