// Package afxdp captures and transmits packets with AF_XDP sockets whose
// UMEM is memory the caller owns: in zcfabric, the packet-buffer area of a
// cluster region, so that on a NIC with AF_XDP zero copy the NIC writes
// packets straight into the buffers that consumers (host processes, VM
// guests) read.
//
// # Pieces
//
// A Program is an XDP program, built from cilium/ebpf asm instructions (no
// clang), that looks up the packet's RX queue in an XSKMAP and redirects
// the packet to the socket registered there, or passes it to the kernel
// stack. It is attached through a bpf_link: driver ("native") mode first,
// generic (SKB) mode as fallback.
//
// A Socket is one AF_XDP socket bound to one (interface, queue). Open
// registers the caller's UMEM (XDP_UMEM_REG), maps the four rings and binds
// with XDP_ZEROCOPY, falling back to XDP_COPY; Mode says what was chosen
// and Options can force either mode. The data path is four calls, each
// moving a burst through one ring without allocating:
//
//	Fill(addrs)      caller → kernel  empty frames to receive into
//	Receive(descs)   kernel → caller  received packets (addr, len)
//	Transmit(descs)  caller → kernel  packets to send
//	Complete(addrs)  kernel → caller  frames whose packets were sent
//
// Addresses are byte offsets into the UMEM: frame index addr/frameSize,
// offset within the frame addr%frameSize. A received packet starts
// XDP_PACKET_HEADROOM (256) + Options.Headroom bytes into its frame, so a
// 2048-byte frame holds at most 1792 bytes of packet: pick 4096-byte frames
// for MTUs above ~1750.
//
// # Ownership
//
// A frame belongs to exactly one side at a time. From Fill until Receive
// returns it, and from Transmit until Complete returns it, the frame is the
// kernel's: the caller must neither write nor reuse it. The package keeps no
// free list; the caller's buffer pool does. A frame given to Fill and never
// received (the socket closed first) is the caller's again after Close.
//
// # Lifecycle pitfalls
//
//   - Names are resolved, sockets bound and programs attached in the network
//     namespace of the calling OS thread. To open a socket in another
//     namespace, call Open on a locked thread that has joined it; the socket
//     keeps working from any goroutine afterwards.
//   - A Socket opened without Options.Program attaches its own Program and
//     detaches it in Close. An interface has one XDP link, so sockets on
//     several queues of one interface must share a Program from Attach, which
//     the caller closes after them.
//   - The XDP program and the socket die with the process (a bpf_link and a
//     socket are file descriptors): a crashed agent leaves nothing attached.
//   - After Close the kernel releases the queue from a work item: a new bind
//     on the same queue can see EBUSY for a moment. Open retries EBUSY for
//     about a second, so a real conflict (another socket on the queue)
//     surfaces only after that.
//   - The UMEM must stay mapped until Close returns. The kernel pins its
//     pages (charged to RLIMIT_MEMLOCK unless the process has
//     CAP_IPC_LOCK).
//   - Nothing is received until frames are in the fill ring. When the fill
//     ring runs dry the kernel drops packets and counts them in
//     Stats.FillRingEmpty.
//   - need_wakeup: with XDP_USE_NEED_WAKEUP (the default) a zero-copy driver
//     stops polling the fill and TX rings until kicked; Receive kicks it
//     (recvfrom) when it finds nothing and the fill ring asks for it, and
//     Transmit kicks (sendto) when the TX ring asks. In copy mode the kernel
//     sends only from sendto (32 packets a call), so Transmit always kicks
//     and repeats while the kernel makes progress; Kick flushes leftovers.
//     Poll drives copy-mode TX too, which Stats.TxRingEmptyDescs counts.
//
// Zero copy needs a driver that implements it (i40e, ice, ixgbe, mlx5, ...);
// veth and every interface in generic XDP mode give ErrNotSupported
// (EOPNOTSUPP) for a forced zero-copy bind and copy mode under BindAuto.
package afxdp
