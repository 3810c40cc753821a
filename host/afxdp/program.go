package afxdp

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// XDPMode says where the XDP redirect program runs.
type XDPMode int

const (
	// XDPAuto tries XDPDriver and falls back to XDPGeneric.
	XDPAuto XDPMode = iota
	// XDPDriver runs the program in the driver's receive path ("native"
	// XDP, `ip link` shows "xdp"). Needed for zero copy.
	XDPDriver
	// XDPGeneric runs the program on the skb after the driver built it
	// ("SKB mode", `ip link` shows "xdpgeneric"); works on every interface.
	XDPGeneric
)

// String returns "auto", "driver" or "generic".
func (m XDPMode) String() string {
	switch m {
	case XDPAuto:
		return "auto"
	case XDPDriver:
		return "driver"
	case XDPGeneric:
		return "generic"
	}
	return fmt.Sprintf("XDPMode(%d)", int(m))
}

// xdpPass is the XDP_PASS action, used as bpf_redirect_map's fallback when
// no socket sits in the map slot of the packet's RX queue (kernel >= 5.3).
const xdpPass = 2

// offRxQueueIndex is the offset of rx_queue_index in struct xdp_md.
const offRxQueueIndex = 16

// DefaultMaxQueues is the size of the XSKMAP when ProgramOptions.MaxQueues
// is zero: sockets can serve RX queues 0 to 63.
const DefaultMaxQueues = 64

// Program is an XDP program attached to one interface through a bpf_link. It
// redirects each packet to the XDP socket registered for the packet's RX
// queue in its XSKMAP and passes packets of other queues to the kernel
// stack. Several Sockets on different queues of one interface share one
// Program (an interface has at most one XDP link). Its methods are safe for
// concurrent use.
type Program struct {
	ifname  string
	ifindex int
	mode    XDPMode
	xsks    *ebpf.Map
	prog    *ebpf.Program
	link    link.Link
}

// ProgramOptions tunes Attach. The zero value tries driver mode, then
// generic, with DefaultMaxQueues slots.
type ProgramOptions struct {
	Mode      XDPMode
	MaxQueues int // number of XSKMAP slots (RX queues 0..MaxQueues-1)
}

// Attach loads the redirect program and attaches it to ifname (resolved in
// the calling thread's network namespace). The program stays attached until
// Close or until the process exits: a bpf_link dies with its last file
// descriptor, so a crashed agent leaves no program behind.
func Attach(ifname string, opt ProgramOptions) (*Program, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("afxdp: attach XDP to %s: %w", ifname, err)
	}
	if opt.MaxQueues <= 0 {
		opt.MaxQueues = DefaultMaxQueues
	}
	p := &Program{ifname: ifname, ifindex: ifi.Index}
	p.xsks, err = ebpf.NewMap(&ebpf.MapSpec{
		Name:       "zc_xsks",
		Type:       ebpf.XSKMap,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(opt.MaxQueues),
	})
	if err != nil {
		return nil, fmt.Errorf("afxdp: attach XDP to %s: create XSKMAP: %w", ifname, err)
	}
	p.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "zc_xsk_redirect",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			// r2 = ctx->rx_queue_index
			asm.LoadMem(asm.R2, asm.R1, offRxQueueIndex, asm.Word),
			// return bpf_redirect_map(&xsks, r2, XDP_PASS)
			asm.LoadMapPtr(asm.R1, p.xsks.FD()),
			asm.Mov.Imm(asm.R3, xdpPass),
			asm.FnRedirectMap.Call(),
			asm.Return(),
		},
		License: "Dual MIT/GPL",
	})
	if err != nil {
		p.xsks.Close()
		return nil, fmt.Errorf("afxdp: attach XDP to %s: load program: %w", ifname, err)
	}
	var errs []error
	for _, m := range []XDPMode{XDPDriver, XDPGeneric} {
		if opt.Mode != XDPAuto && opt.Mode != m {
			continue
		}
		flags := link.XDPDriverMode
		if m == XDPGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifi.Index, Flags: flags})
		if err == nil {
			p.link, p.mode = l, m
			return p, nil
		}
		errs = append(errs, fmt.Errorf("%s mode: %w", m, err))
	}
	p.prog.Close()
	p.xsks.Close()
	err = errors.Join(errs...)
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	return nil, fmt.Errorf("afxdp: attach XDP to %s: %w", ifname, err)
}

// Mode returns where the program runs: XDPDriver or XDPGeneric.
func (p *Program) Mode() XDPMode { return p.mode }

// Ifname returns the interface the program is attached to.
func (p *Program) Ifname() string { return p.ifname }

// register puts the socket fd into the slot of queue.
func (p *Program) register(queue int, fd int) error {
	if err := p.xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("afxdp: register %s queue %d in XSKMAP: %w", p.ifname, queue, err)
	}
	return nil
}

// unregister empties the slot of queue. The kernel also empties it when
// the socket closes.
func (p *Program) unregister(queue int) {
	_ = p.xsks.Delete(uint32(queue))
}

// Close detaches the program from the interface. Packets then go to the
// kernel stack again; sockets that used the program receive nothing more.
func (p *Program) Close() error {
	err := errors.Join(p.link.Close(), p.prog.Close(), p.xsks.Close())
	if err != nil {
		return fmt.Errorf("afxdp: detach XDP from %s: %w", p.ifname, err)
	}
	return nil
}
