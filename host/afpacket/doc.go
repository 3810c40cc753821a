// Package afpacket is the one-copy capture and transmit path for any
// interface: AF_PACKET sockets with memory-mapped rings, used where AF_XDP
// is unavailable or unwanted.
//
// RX uses a TPACKET_V3 ring: the kernel copies each frame into a block of a
// ring shared with this process and hands over whole blocks (when full, or
// after RXOptions.BlockTimeout). RX.Read walks the handed-over blocks and
// calls a function per frame with a view of the ring; the caller copies the
// frame once, into a cluster buffer, and Read returns each block to the
// kernel as soon as its last frame has been read. RX.Stats exposes the
// kernel's PACKET_STATISTICS (packets, drops, ring freezes).
//
// TX uses a TPACKET_V2 TX ring: TX.Send copies a burst of frames into ring
// slots and makes one sendto call for the whole burst.
//
// Both are written on golang.org/x/sys/unix rather than gopacket's afpacket
// package: gopacket reads one packet per call (ZeroCopyReadPacketData, with
// its own polling and per-packet bookkeeping), has no TX ring, and exposes
// no burst interface; the ring walk here is a few dozen lines.
//
// # Lifecycle pitfalls
//
//   - The interface name is resolved, and the socket bound, in the network
//     namespace of the calling OS thread. The socket keeps working from any
//     goroutine afterwards.
//   - The slice Read passes to its function points into the ring and is
//     reused by the kernel once Read moves past its block: copy it before
//     the function returns, never keep it.
//   - The kernel resets its PACKET_STATISTICS counters whenever they are
//     read. RX.Stats accumulates them; anything else reading the counters
//     of the same socket (e.g. via FD) makes RX.Stats lose counts.
//   - Packets counts every frame that reached the socket, Drops included:
//     frames delivered = Packets - Drops.
//   - The ring is sized at open: a frame larger than a block (minus
//     headers) is captured truncated and counted in Stats.Truncated.
//   - RX sees frames in both directions, including what this host sends on
//     the interface (unless RXOptions.IgnoreOutgoing). TX frames sent with
//     TXOptions.QdiscBypass are not seen by packet sockets on this host.
//   - A TX slot is the kernel's from Send until the kernel finishes sending
//     it; TX.Pending counts them. Closing TX may drop frames still queued.
package afpacket
