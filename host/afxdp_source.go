package host

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/afxdp"
	"golang.org/x/sys/unix"
)

// AFXDPConfig selects the interface, queue and modes of an AF_XDP source.
type AFXDPConfig struct {
	Ifname string
	Queue  int
	// Bind: zero copy, copy or auto (zero copy, then copy).
	Bind afxdp.BindMode
	// XDP: driver ("native"), generic or auto (driver, then generic).
	XDP afxdp.XDPMode
	// RingSize is the size of the socket's fill and RX rings (a power of
	// two; 0: afxdp.DefaultRingSize).
	RingSize int
	// FillFrames is how many cluster buffers the source keeps in the
	// kernel's fill ring (default: the ring size, at most half the pool).
	FillFrames int

	shared *sharedProgram
}

// sharedProgram is an XDP program the sockets on every queue of one
// interface share (an interface has one XDP link), detached when the last
// of them closes. Sources opened by separate ParseSource calls (several -i
// flags) find it in programs.
type sharedProgram struct {
	p    *afxdp.Program
	key  progKey
	refs int // guarded by programs.mu
}

// progKey names an interface across network namespaces.
type progKey struct {
	netns   uint64 // inode of the calling thread's network namespace
	ifindex int
}

var programs struct {
	mu sync.Mutex
	m  map[progKey]*sharedProgram
}

// acquireProgram returns the XDP program attached to ifname (in the calling
// thread's network namespace) by an earlier source, or attaches one, with
// a reference for the caller.
func acquireProgram(ifname string, mode afxdp.XDPMode, queue int) (*sharedProgram, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nil, fmt.Errorf("afxdp: %s: network namespace: %w", ifname, err)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("afxdp: attach XDP program to %s: %w", ifname, err)
	}
	key := progKey{netns: st.Ino, ifindex: ifi.Index}
	programs.mu.Lock()
	defer programs.mu.Unlock()
	if sp := programs.m[key]; sp != nil {
		if mode != afxdp.XDPAuto && sp.p.Mode() != mode {
			return nil, fmt.Errorf("afxdp: %s: xdp=%s asked, but another source of this interface attached it in %s mode: %w", ifname, mode, sp.p.Mode(), ErrBadSpec)
		}
		sp.refs++
		return sp, nil
	}
	p, err := afxdp.Attach(ifname, afxdp.ProgramOptions{Mode: mode, MaxQueues: max(afxdp.DefaultMaxQueues, queue+1)})
	if err != nil {
		return nil, err
	}
	if programs.m == nil {
		programs.m = map[progKey]*sharedProgram{}
	}
	sp := &sharedProgram{p: p, key: key, refs: 1}
	programs.m[key] = sp
	return sp, nil
}

func (s *sharedProgram) release() error {
	programs.mu.Lock()
	defer programs.mu.Unlock()
	s.refs--
	if s.refs == 0 {
		delete(programs.m, s.key)
		return s.p.Close()
	}
	return nil
}

// AFXDP is a Source receiving from one RX queue of an interface through an
// AF_XDP socket whose UMEM is the cluster's buffer area: the kernel (copy
// mode) or the NIC (zero copy) writes each packet straight into a cluster
// buffer, which the engine then hands to consumers without a copy. The fill
// ring is stocked with buffers from the engine pool (Pool.Handles) and
// replenished as consumers give buffers back.
//
// Received packets start 256 bytes (XDP_PACKET_HEADROOM) into their
// buffer, so a 2048-byte buffer holds frames up to 1792 bytes.
// Timestamps are taken once per burst, when Recv finds the packets (AF_XDP
// carries no kernel receive time).
type AFXDP struct {
	name    string
	sock    *afxdp.Socket
	shared  *sharedProgram
	ifindex uint32
	bufSize uint32
	target  int
	inRing  int      // frames in the fill ring
	filled  []uint64 // bit per UMEM frame: in the kernel's fill/RX rings
	filter  *Filter
	hs      []uint32
	addrs   []uint64
	descs   []afxdp.Desc
	st      SourceStats
	pool    *zc.Pool
}

// OpenAFXDP opens an AF_XDP socket on cfg.Queue of cfg.Ifname (in the
// calling thread's network namespace) over c's buffer area.
func OpenAFXDP(c *zc.Cluster, cfg AFXDPConfig) (*AFXDP, error) {
	name := fmt.Sprintf("afxdp:%s@%d", cfg.Ifname, cfg.Queue)
	area := c.BufferArea()
	bs := uint32(c.BufferSize())
	opt := afxdp.Options{Bind: cfg.Bind, XDP: cfg.XDP, FillSize: uint32(cfg.RingSize), RxSize: uint32(cfg.RingSize)}
	if cfg.shared != nil {
		opt.Program = cfg.shared.p
	}
	sock, err := afxdp.Open(cfg.Ifname, cfg.Queue, area, bs, opt)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	target := cfg.FillFrames
	if target <= 0 {
		target = min(cmp.Or(cfg.RingSize, afxdp.DefaultRingSize), c.Pool().Cap()/2)
	}
	nframes := len(area) / int(bs)
	a := &AFXDP{
		name:    name,
		sock:    sock,
		shared:  cfg.shared,
		bufSize: bs,
		target:  target,
		filled:  make([]uint64, (nframes+63)/64),
		hs:      make([]uint32, zc.MaxBurst),
		addrs:   make([]uint64, zc.MaxBurst),
		descs:   make([]afxdp.Desc, zc.MaxBurst),
	}
	if ifi, err := interfaceIndex(cfg.Ifname); err == nil {
		a.ifindex = ifi
	}
	return a, nil
}

// Name implements Source: "afxdp:IF@Q" (or "zc:IF@Q" when chosen by zc:).
func (a *AFXDP) Name() string { return a.name }

// Mode returns what the socket runs in, e.g. "AF_XDP copy/driver".
func (a *AFXDP) Mode() string {
	s := "AF_XDP " + a.sock.Mode().String()
	if err := a.sock.ZeroCopyErr(); err != nil {
		s += " (zero copy unavailable: " + err.Error() + ")"
	}
	return s
}

// Socket returns the AF_XDP socket (for its FD or Stats).
func (a *AFXDP) Socket() *afxdp.Socket { return a.sock }

// SetFilter implements Filterable, in user space (kernel is ignored:
// the XDP program does not run it).
func (a *AFXDP) SetFilter(f *Filter, kernel bool) (err error) {
	a.filter, err = userSpace(a.name, f)
	return err
}

// refill tops the fill ring up to the target with buffers from pool.
func (a *AFXDP) refill(pool *zc.Pool) {
	for a.inRing < a.target {
		want := min(a.target-a.inRing, len(a.hs))
		n := pool.Handles(a.hs[:want])
		if n == 0 {
			a.st.NoBuffer++
			return
		}
		for i, h := range a.hs[:n] {
			a.addrs[i] = uint64(h) * uint64(a.bufSize)
		}
		k := a.sock.Fill(a.addrs[:n])
		for _, h := range a.hs[:k] {
			a.filled[h>>6] |= 1 << (h & 63)
		}
		a.inRing += k
		if k < n {
			pool.FreeHandles(a.hs[k:n])
			return
		}
	}
}

// prime stocks the fill ring before the first Recv (Engine.OnStart).
func (a *AFXDP) prime(pool *zc.Pool) {
	a.pool = pool
	a.refill(pool)
}

// Recv implements Source.
func (a *AFXDP) Recv(pool *zc.Pool, pkts []zc.Packet) (int, error) {
	a.pool = pool
	a.refill(pool)
	want := min(len(pkts), len(a.descs))
	got := a.sock.Receive(a.descs[:want])
	if got == 0 {
		return 0, nil
	}
	a.inRing -= got
	ts := time.Now().UnixNano()
	n := 0
	for _, d := range a.descs[:got] {
		h := uint32(d.Addr / uint64(a.bufSize))
		if int(h>>6) < len(a.filled) {
			a.filled[h>>6] &^= 1 << (h & 63)
		}
		p, err := pool.Packet(h, uint32(d.Addr%uint64(a.bufSize)), d.Len)
		if err != nil {
			pool.Free(pkts[:n])
			return 0, fmt.Errorf("%s: kernel returned %#x+%d: %w", a.name, d.Addr, d.Len, err)
		}
		if a.filter != nil && !a.filter.Match(p.Data) {
			a.st.Filtered++
			a.hs[0] = h
			pool.FreeHandles(a.hs[:1])
			continue
		}
		p.Timestamp = ts
		p.Port = a.ifindex
		pkts[n] = p
		n++
		a.st.Bytes += uint64(d.Len)
	}
	a.st.Packets += uint64(n)
	return n, nil
}

// Stats implements Source; KernelDrops are the socket's rx_dropped (fill
// ring empty, among others) plus rx_ring_full.
func (a *AFXDP) Stats() SourceStats {
	st := a.st
	if xs, err := a.sock.Stats(); err == nil {
		st.KernelDrops = xs.RxDropped + xs.RxRingFull
	}
	return st
}

// Close closes the socket (detaching its XDP program, or releasing the
// shared one) and gives the buffers that were in the fill ring back to the
// pool of the last Recv.
func (a *AFXDP) Close() error {
	if a.sock == nil {
		return nil
	}
	err := a.sock.Close()
	a.sock = nil
	if a.shared != nil {
		err = errors.Join(err, a.shared.release())
	}
	if a.pool != nil {
		var hs []uint32
		for i, w := range a.filled {
			for b := 0; w != 0; b++ {
				if w&1 != 0 {
					hs = append(hs, uint32(i*64+b))
				}
				w >>= 1
			}
		}
		a.pool.FreeHandles(hs)
	}
	if err != nil {
		return fmt.Errorf("%s: close: %w", a.name, err)
	}
	return nil
}
