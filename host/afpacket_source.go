package host

import (
	"fmt"
	"net"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/afpacket"
)

// AFPacket is a Source receiving every frame of an interface through an
// AF_PACKET TPACKET_V3 ring, copying each frame once, from the ring into a
// cluster buffer. Timestamps are the kernel's receive times. Frames longer
// than a buffer are cut and counted in Truncated.
type AFPacket struct {
	name    string
	rx      *afpacket.RX
	ifindex uint32
	filter  *Filter // user-space filter; nil when none or in the kernel
	kfilter bool
	st      SourceStats
	// Truncated counts frames cut to the buffer size.
	Truncated uint64

	// Per-Recv state for the frame callback (a method value made once, so
	// Recv allocates nothing).
	fn   func([]byte, int64)
	pkts []zc.Packet
	n    int
}

// OpenAFPacket opens a TPACKET_V3 capture ring on ifname (in the calling
// thread's network namespace). Frames this host sends on the interface
// are not captured.
func OpenAFPacket(ifname string) (*AFPacket, error) {
	rx, err := afpacket.OpenRX(ifname, afpacket.RXOptions{IgnoreOutgoing: true})
	if err != nil {
		return nil, fmt.Errorf("afpacket:%s: %w", ifname, err)
	}
	a := &AFPacket{name: "afpacket:" + ifname, rx: rx}
	if ifi, err := interfaceIndex(ifname); err == nil {
		a.ifindex = ifi
	}
	a.fn = a.frame
	return a, nil
}

func interfaceIndex(ifname string) (uint32, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}

// Name implements Source.
func (a *AFPacket) Name() string { return a.name }

// Mode returns "AF_PACKET TPACKET_V3", with where the filter runs.
func (a *AFPacket) Mode() string {
	switch {
	case a.kfilter:
		return "AF_PACKET TPACKET_V3, BPF filter in the kernel"
	case a.filter != nil:
		return "AF_PACKET TPACKET_V3, BPF filter in user space"
	}
	return "AF_PACKET TPACKET_V3"
}

// RX returns the underlying ring.
func (a *AFPacket) RX() *afpacket.RX { return a.rx }

// SetFilter implements Filterable: in the kernel (SO_ATTACH_FILTER) when
// kernel is set or the program needs the kernel, else in user space.
func (a *AFPacket) SetFilter(f *Filter, kernel bool) error {
	if kernel || !f.UserSpace() {
		if err := f.attach(a.rx.FD()); err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
		a.kfilter = true
		return nil
	}
	a.filter = f
	return nil
}

func (a *AFPacket) frame(data []byte, ts int64) {
	if a.filter != nil && !a.filter.Match(data) {
		a.st.Filtered++
		return
	}
	p := &a.pkts[a.n]
	c := copy(p.Data, data)
	if c < len(data) {
		a.Truncated++
	}
	p.Data = p.Data[:c]
	p.Timestamp = ts
	p.Port = a.ifindex
	a.st.Bytes += uint64(c)
	a.n++
}

// Recv implements Source: it takes buffers for a whole burst, reads at
// most that many frames and gives back the buffers it did not use.
func (a *AFPacket) Recv(pool *zc.Pool, pkts []zc.Packet) (int, error) {
	k := pool.Alloc(pkts)
	if k == 0 {
		a.st.NoBuffer++
		return 0, nil
	}
	a.pkts, a.n = pkts[:k], 0
	// A filtered frame leaves its buffer for the next one: read until the
	// buffers are used or the ring is empty.
	for a.n < k {
		if a.rx.Read(k-a.n, a.fn) == 0 {
			break
		}
	}
	n := a.n
	pool.Free(pkts[n:k])
	a.pkts = nil
	a.st.Packets += uint64(n)
	return n, nil
}

// Stats implements Source; KernelDrops are the ring's drops.
func (a *AFPacket) Stats() SourceStats {
	st := a.st
	st.Truncated = a.Truncated
	if ks, err := a.rx.Stats(); err == nil {
		st.KernelDrops = ks.Drops
	}
	return st
}

// Close closes the socket.
func (a *AFPacket) Close() error {
	if a.rx == nil {
		return nil
	}
	err := a.rx.Close()
	a.rx = nil
	if err != nil {
		return fmt.Errorf("%s: close: %w", a.name, err)
	}
	return nil
}
