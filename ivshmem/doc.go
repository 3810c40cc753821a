// Package ivshmem defines the zcfabric region: the bytes that a host agent,
// other host processes and KVM guests share. A region is one file whose
// size is a power of two (QEMU maps it as BAR2 of an ivshmem-plain PCI
// device, and BARs are powers of two). The package is pure Go over []byte
// plus the code that creates and maps region files (tmpfs, hugetlbfs,
// memfd). It knows nothing of hosts, guests or QEMU.
//
// Platforms: the format, its parser and the rings build everywhere and
// work over memory mapped by someone else (FromBytes: a region read from
// a file or a dump). Creating and mapping region files, and sleeping on a
// ring (futex(2)), need Linux (sys_linux.go); elsewhere they return
// errors.ErrUnsupported, and a sleeper naps instead (sys_other.go).
// The rest of zcfabric (zc and every command) is Linux only.
//
// # Layout (version 2, all fields little-endian)
//
//	offset        size  field
//	------------  ----  -----------------------------------------------
//	header page (4096 bytes at 0)
//	0             8     magic "ZCFABRIC"
//	8             4     version (2; a reader refuses any other, naming both)
//	12            4     header size (4096)
//	16            8     region size (power of two, == mapped size)
//	24            4     cluster id
//	28            4     flags (1 hugepages, 2 shared trust domain,
//	                    4 one VM's own region)
//	32            8     generation (differs on every re-creation)
//	40            4     number of queues Q (1..1024)
//	44            4     queue descriptor size (64)
//	48            8     queue table offset T (4096)
//	56            4     buffer size B (power of two, 256..65536)
//	60            4     number of buffers N
//	64            4     metadata record size (32)
//	68            4     engine pool: first buffer
//	72            4     engine pool: buffer count
//	76            4     (reserved, 0)
//	80            8     metadata offset M
//	88            8     buffer area offset D (page aligned: an AF_XDP UMEM)
//	96            8     creation time, Unix ns
//	104           4     creator pid
//	108           4     CRC-32C (Castagnoli) of bytes [0,108)
//	112..127            (reserved)
//	128           4     state, mutable: 0 initialising, 1 ready, 2 closed
//
//	queue table (Q descriptors of 64 bytes at T)
//	+0            4     queue id (== index)
//	+4            4     ring slots S (power of two)
//	+8            8     data ring offset (producer -> consumer)
//	+16           8     return ring offset (consumer -> producer)
//	+24           4     queue pool: first buffer
//	+28           4     queue pool: buffer count (for an outside producer)
//	+32           4     flags
//	+36           4     (reserved)
//	+40           8     producer owner, mutable, 0 free: side<<32 |
//	                    tag<<22 | pid (side 1 host, 2 guest; tag: where
//	                    the pid means something: on the host 0 the
//	                    initial pid namespace, 1..1022 a nested one's
//	                    number + 1; in a guest 1..1022 its boot's tag,
//	                    0 unknown; 1023 a namespace nobody judges)
//	+48           8     consumer owner, mutable
//	+56           4     attach handshake, mutable: epoch<<2 | state
//	                    (0 go, 1 consumer waits, 2 producer recovering, 3 done)
//	+60           4     (reserved)
//
//	rings (from align128(T+64*Q), per queue its data ring then its return
//	ring; a data ring is 384+16*S bytes, a return ring 384+4*S, each
//	rounded up to 128)
//	+0            4     producer index (free running uint32)
//	+4            4     rings, written by the producer: 1 when it answers
//	                    wake code 2 by ringing the doorbell (a guest with
//	                    a doorbell device; the host process serving the
//	                    guests' doorbells), else 0
//	+8            8*3   producer's counters: packets, bytes, drops
//	+128          4     consumer index
//	+136          8*3   consumer's counters: packets, bytes, bad entries
//	+256          4     wake word, written by the consumer only: its sleep
//	                    number << 2 | code; code 0 polling,
//	                    1 asleep in futex(2) on the producer index word,
//	                    2 asleep on the ivshmem doorbell (a guest consumer:
//	                    the host rings its interrupt; a host sleeper on a
//	                    guest's ring: the guest rings peer 0, the agent,
//	                    whose relay FUTEX_WAKEs the producer index word);
//	                    only after the producer wrote rings = 1
//	+260..383           (reserved)
//	+384                slots. Data ring: S descriptors of 16 bytes:
//	  +0          4       buffer handle
//	  +4          4       length of the packet
//	  +8          4       offset of the packet inside its buffer
//	  +12         4       flags: bit 31 the metadata record is valid,
//	                      bits 0..30 the application's
//	                    Return ring: S buffer handles of 4 bytes.
//
//	metadata (N records of 32 bytes at M, record h describes buffer h;
//	written only for a packet whose descriptor has bit 31 set)
//	+0            8     timestamp, Unix ns
//	+8            4     hash
//	+12           4     port (source interface or queue)
//	+16           4     sequence (free for applications)
//	+20..31             (reserved)
//
//	buffers (N buffers of B bytes at D; buffer h at D + h*B)
//	D + N*B ... region size: unused (rounding to a power of two)
//
// Immutable fields are covered by the checksum and validated by Parse; the
// host copies them into a Layout once and never reads them again. Mutable
// words (state, owners, ring indices, counters) are read with atomics and
// every value read from them is range-checked before use.
//
// # Ownership
//
// A buffer handle is the index of a buffer (0..N-1). Every buffer has one
// owner at a time: a producer's free list, a ring slot, or a consumer.
// Each queue has two rings, as AF_XDP and virtio do: the data ring carries
// handles from the queue's producer to its consumer; the return ring
// carries them back once the consumer has released them. Buffers come from
// a pool owned by the producer: the creator's engine pool, or the queue's
// own pool when the producer attaches from outside (a process, a guest).
// The producer counts the buffers outstanding on each queue (in the data
// ring, held by the consumer, or in the return ring) and treats a queue
// with S outstanding as full, so the return ring can never overflow.
// Returned handles are checked against the producer's private record of
// what it sent; a handle it does not expect is counted and ignored.
//
// A consumer that dies holds buffers nobody returns. So a consumer that
// attaches in place of one that went away without detaching (a stale
// owner word) starts a handshake: it bumps the epoch in the
// descriptor's handshake word and waits before it reads. A live producer
// that sees the new epoch (it looks before each burst it sends and each
// reclaim) takes the word (CAS to "recovering"), drains the return ring,
// takes back every buffer it lent on that queue that is not in the data
// ring any more (the dead consumer's), and marks the word done, all
// before it publishes that burst (an idle agent's guard looks at the word
// once a second and wakes its engine to answer). A consumer that times
// out (1.5 s) while packets wait in the data ring (no producer, or a
// producer that is gone or idle) takes the word itself ("go") and the
// producer then leaves the queue alone; while the data ring is empty it
// waits on, since there is nothing to read and a producer's next burst
// answers first. A guest can
// only make its own queue's producer recover buffers early: its own loss.
//
// A producer that attaches in place of an earlier one (a restarted zsend)
// reads the earlier one's loans from the counters (sent minus
// reclaimed): it takes over those still in the data ring and waits,
// bounded, until the rest came back on the return ring before it
// allocates, so it never hands out a buffer the consumer still reads.
//
// Who may find an owner word stale (and take the end over), by its tag:
//   - On the host, a process of the same pid namespace (the same tag: 0
//     for the initial one), when the owner's pid is gone (kill(pid, 0)
//     fails, or it is a zombie); and a process of the initial namespace,
//     for an owner of a tagged nested one (a container), when no process
//     of that namespace has the owner's pid (or no process is left in
//     it). A namespace's number is reused only after it is gone.
//   - In a guest, a process of its kernel's initial pid namespace, in a
//     region with flag 4 (one VM's own), for a guest owner tagged with
//     another boot's tag (a claim from before a reboot), or with this
//     boot's tag and a pid that is gone in this guest.
//
// Nobody else: the host cannot see a guest's processes nor a guest the
// host's; in a region that several VMs map a guest cannot tell another
// VM's pid from one of its own; a container cannot see the processes
// outside it; a guest's containers are not told apart (tag 1023); and
// an untagged guest owner (a binary from before tags) could be any of
// these. Such an end is freed when the agent unplugs the VM, or taken by
// force (zcount --force).
//
// # Publication order
//
// Producer: write the packet into the buffer, then (if it has optional
// fields) its metadata record, then the descriptor into the data ring's
// slot, then store the producer index. Consumer: load the producer index
// (acquire), read descriptors, metadata and packet, and when done push
// the handle on the return ring the same way. The consumer's index store
// is a release store: on amd64 a plain MOV in assembly (TSO makes it
// release; Go's atomic.Store is a full-barrier XCHG); elsewhere and under
// -race it is atomic.Store. The producer's index store is sequentially
// consistent (see Sleeping and waking).
//
// # Sleeping and waking
//
// The ptnet/need_wakeup pattern, per ring. The consumer of a ring that
// found it empty, and wants to sleep rather than poll, stores its wake
// code in the wake word (a sequentially consistent store), loads the
// producer index again, and sleeps only if the ring is still empty; awake
// again it stores its number with code 0. Each sleep has a new number. The
// producer stores its index (sequentially consistent), then loads the
// wake word; only when its code is set and the word differs from the last
// one it answered does it wake the consumer, once: FUTEX_WAKE on
// the producer index word for code 1, a doorbell ring for code 2 (the
// host through its ivshmem server to the guest's interrupt; a guest by
// writing peer 0, vector 0 to its device's Doorbell register). The
// A guest cannot reach a host futex: a host process that sleeps on a
// guest's ring announces code 2 and waits in futex(2) on the producer
// index word; the guest rings peer 0, and the process serving the
// region's doorbell (the agent) FUTEX_WAKEs every host sleeper with code
// 2 that it has not woken for that sleep yet (DoorbellWaker). A host
// sleeper announces code 2 only to a guest producer that wrote rings = 1;
// otherwise it polls. A guest asleep on its interrupt whose producer is a
// host process that cannot ring it (rings = 0) rings peer 0 as it goes to
// sleep; the agent then waits in futex(2) on the ring's producer index
// word (AwaitGuestSleep) until the producer's enqueue, whose wake-up for
// code 2 is a FUTEX_WAKE on that word, and rings the guest. The
// two full barriers make a lost wake-up impossible (each side's store is
// ordered before its load of the other's word); a busy ring makes no
// system call, because nobody announces a sleep. Who sleeps on what: the
// consumer of a data ring waits for packets; the producer of a queue,
// which is the consumer of the queue's return ring, waits for returned
// buffers (a lossless producer whose queue is full). A peer that keeps
// its wake word set costs the other side one wake-up per burst it sends
// there, nothing more; a peer that never wakes costs the sleeper its
// timeout (the sleeper never sleeps longer than a second at a time).
//
// # Version 1
//
// Version 1 had 4-byte data ring slots (handles), a 256-byte ring header
// without the wake word, and the packet's length and offset in its
// metadata record, written for every packet. The two are not
// compatible: a reader of one refuses a region of the other (Parse:
// ErrVersion, naming both versions).
//
// # Lifecycle
//
// The creator writes the region under a temporary name, sets the state to
// ready and renames it to its final name. Closing sets the state to closed
// and removes the name. Re-creating a cluster writes a new generation.
// Attachers check magic, generation and state when a queue is idle: an
// unplugged ivshmem BAR reads as zeros, so the magic check catches it.
package ivshmem
