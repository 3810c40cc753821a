package host

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// ErrBadFilter: a BPF filter program could not be parsed or is not a valid
// classic BPF program.
var ErrBadFilter = errors.New("bad BPF filter")

// Filter is a classic BPF program (the language of tcpdump, libpcap and
// SO_ATTACH_FILTER) evaluated per packet.
//
// # Cost
//
// In user space the program runs in golang.org/x/net/bpf's interpreter:
// one Go switch per instruction: tcpdump's 'udp port 53' (20 instructions,
// 13 run for an IPv4 DNS packet) costs 0.09-0.14 µs per packet on the
// build machine (BenchmarkFilterMatch), on the capture thread, on top of
// the capture itself: at 1 Mpps that is a tenth of a core. A packet the
// filter rejects has still been received (and, for AF_XDP, written into a
// cluster buffer) before it is thrown away; it is counted in
// SourceStats.Filtered. PF_RING ZC's filters are evaluated in user space in
// the same way. On AF_PACKET the program can instead run in the kernel
// (SourceOptions.KernelFilter, SO_ATTACH_FILTER): rejected packets are then
// never copied to user space, and are not counted anywhere.
//
// The interpreter does not implement the Linux ancillary loads (vlan tag,
// protocol, ifindex, ...: "ld vlan_avail"): a program using them is refused
// in user space and must run in the kernel.
type Filter struct {
	src string
	raw []bpf.RawInstruction
	vm  *bpf.VM // nil when the program cannot run in user space
}

// ParseFilter parses a classic BPF program in the format `tcpdump -ddd`
// prints: the instruction count, then one instruction per line as four
// decimal numbers "code jt jf k". Lines may also be separated by commas
// (the one-line form iptables' bpf match and nfbpf_compile use:
// "4,40 0 0 12,21 0 1 2048,6 0 0 262144,6 0 0 0"). Typical use:
//
//	zchost run -i eth0 --bpf "$(tcpdump -ddd 'udp port 53')"
func ParseFilter(s string) (*Filter, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == ',' || r == ';' })
	var lines []string
	for _, f := range fields {
		if f = strings.TrimSpace(f); f != "" {
			lines = append(lines, f)
		}
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("bpf: empty program: %w", ErrBadFilter)
	}
	n, err := strconv.Atoi(lines[0])
	if err != nil {
		return nil, fmt.Errorf("bpf: first line %q is not the instruction count (want `tcpdump -ddd` output): %w", lines[0], ErrBadFilter)
	}
	if n != len(lines)-1 {
		return nil, fmt.Errorf("bpf: count says %d instructions, %d follow: %w", n, len(lines)-1, ErrBadFilter)
	}
	raw := make([]bpf.RawInstruction, 0, n)
	for i, l := range lines[1:] {
		var v [4]uint64
		f := strings.Fields(l)
		if len(f) != 4 {
			return nil, fmt.Errorf("bpf: instruction %d %q: want \"code jt jf k\": %w", i, l, ErrBadFilter)
		}
		for j, bits := range [4]int{16, 8, 8, 32} {
			if v[j], err = strconv.ParseUint(f[j], 0, bits); err != nil {
				return nil, fmt.Errorf("bpf: instruction %d %q: %w", i, l, ErrBadFilter)
			}
		}
		raw = append(raw, bpf.RawInstruction{Op: uint16(v[0]), Jt: uint8(v[1]), Jf: uint8(v[2]), K: uint32(v[3])})
	}
	return NewFilter(raw, s)
}

// NewFilter returns a filter running raw; src is kept for String.
func NewFilter(raw []bpf.RawInstruction, src string) (*Filter, error) {
	prog, ok := bpf.Disassemble(raw)
	f := &Filter{src: src, raw: raw}
	if ok {
		if vm, err := bpf.NewVM(prog); err == nil {
			f.vm = vm
		}
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("bpf: empty program: %w", ErrBadFilter)
	}
	return f, nil
}

// String returns the program as given.
func (f *Filter) String() string { return f.src }

// Len returns the number of instructions.
func (f *Filter) Len() int { return len(f.raw) }

// Filterable is a source that applies a BPF filter to every packet it
// receives (SourceOptions.Filter), counting what it rejects in
// SourceStats.Filtered: in user space, or in the kernel where the source
// can and kernel is set. Every kind ParseSource opens is one: a filter is
// never ignored.
type Filterable interface {
	SetFilter(f *Filter, kernel bool) error
}

var (
	_ Filterable = (*AFXDP)(nil)
	_ Filterable = (*AFPacket)(nil)
	_ Filterable = (*Gen)(nil)
	_ Filterable = (*Pcap)(nil)
)

// userSpace returns f for a source that runs filters in user space, or
// an error naming source when f needs the kernel.
func userSpace(source string, f *Filter) (*Filter, error) {
	if !f.UserSpace() {
		return nil, fmt.Errorf("%s: BPF filter uses Linux extensions the user-space interpreter lacks: %w", source, ErrBadFilter)
	}
	return f, nil
}

// UserSpace reports whether the program can run in user space (it uses no
// Linux ancillary loads).
func (f *Filter) UserSpace() bool { return f.vm != nil }

// Match runs the program over a frame (from its Ethernet header) and
// reports whether the frame passes (the program returned non-zero). A
// program that cannot run in user space, or fails at run time (e.g. a
// load past the frame's end, which a kernel filter also treats as
// "reject"), rejects.
func (f *Filter) Match(frame []byte) bool {
	if f == nil {
		return true
	}
	if f.vm == nil {
		return false
	}
	n, err := f.vm.Run(frame)
	return err == nil && n > 0
}

// attach runs the program in the kernel on socket fd (SO_ATTACH_FILTER).
func (f *Filter) attach(fd int) error {
	ins := make([]unix.SockFilter, len(f.raw))
	for i, r := range f.raw {
		ins[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	prog := unix.SockFprog{Len: uint16(len(ins)), Filter: &ins[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		return fmt.Errorf("bpf: attach filter to socket: %w", err)
	}
	return nil
}
