package host

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/afxdp"
)

// ErrBadSpec: a source specification could not be parsed.
var ErrBadSpec = errors.New("bad source spec")

// SourceOptions carries what sources need besides their spec.
type SourceOptions struct {
	// Cluster is the cluster the sources fill. AF_XDP sources register its
	// buffer area as their UMEM, so it is required for afxdp: (and zc:
	// falls back to AF_PACKET without it).
	Cluster *zc.Cluster
	// Filter, if set, is a classic BPF program every packet of every
	// source must pass; rejected packets are counted in
	// SourceStats.Filtered. See Filter for the cost.
	Filter *Filter
	// BPF, if Filter is nil, is a filter program in `tcpdump -ddd` format
	// (ParseFilter), parsed by ParseSource.
	BPF string
	// KernelFilter runs Filter in the kernel (SO_ATTACH_FILTER) on
	// AF_PACKET sources instead of in user space.
	KernelFilter bool
	// Logf, if set, reports choices made (the AF_XDP mode picked, a
	// fallback to AF_PACKET and why).
	Logf func(format string, args ...any)
}

func (o *SourceOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// ParseSource opens the sources a command-line spec names:
//
//	gen:len=64,count=1e6,rate=1e6,flows=64   synthetic frames (ParseGen)
//	pcap:FILE[?timing=1&loops=N]              pcap/pcapng replay
//	afxdp:IF[@Q][?mode=copy|zerocopy|auto&xdp=native|generic|auto&ring=N]
//	afpacket:IF                               AF_PACKET TPACKET_V3, one copy
//	zc:IF[@Q]                                 best available: AF_XDP zero copy,
//	                                          AF_XDP copy, then AF_PACKET
//	IF                                        same as zc:IF
//
// The interface part of afxdp:, afpacket: and zc: may be a comma list
// (afpacket:eth0,eth1, afxdp:eth0@0,eth0@1): one source per entry, the
// query options applying to each. AF_XDP sources on queues of one
// interface share one XDP program, also across ParseSource calls (several
// -i afxdp:eth0@Q flags): a socket per queue, each registering the
// cluster's buffer area as its own UMEM (the kernel accepts several
// registrations of the same memory; the sources take disjoint buffers from
// the one pool, so XDP_SHARED_UMEM is not needed). zc:N@Q with a numeric N
// is a queue name, not a source.
//
// Interfaces are resolved, and sockets bound, in the calling thread's
// network namespace. On error, nothing stays open.
func ParseSource(spec string, opts SourceOptions) ([]Source, error) {
	if opts.Filter == nil && strings.TrimSpace(opts.BPF) != "" {
		f, err := ParseFilter(opts.BPF)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w", spec, err)
		}
		opts.Filter = f
	}
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		kind, rest = "zc", spec
	}
	if rest == "" {
		return nil, fmt.Errorf("source %q: nothing after %q: %w", spec, kind+":", ErrBadSpec)
	}
	i := slices.IndexFunc(sourceKinds[:], func(k sourceKind) bool { return k.kind == kind })
	if i < 0 {
		return nil, fmt.Errorf("source %q: unknown kind %q (want %s or an interface name): %w", spec, kind, kindNames(), ErrBadSpec)
	}
	srcs, err := sourceKinds[i].open(spec, kind, rest, opts)
	if err != nil {
		return nil, err
	}
	if opts.Filter != nil {
		for _, s := range srcs {
			fs, ok := s.(Filterable)
			if !ok {
				closeAll(srcs)
				return nil, fmt.Errorf("source %q: %s cannot filter: %w", spec, s.Name(), ErrBadFilter)
			}
			if err := fs.SetFilter(opts.Filter, opts.KernelFilter); err != nil {
				closeAll(srcs)
				return nil, fmt.Errorf("source %q: %w", spec, err)
			}
		}
	}
	return srcs, nil
}

// sourceKind is a row of sourceKinds.
type sourceKind struct {
	kind string // the prefix before ':'
	form string // its syntax, for help texts
	does string // what it is, for help texts
	open func(spec, kind, rest string, opts SourceOptions) ([]Source, error)
}

// sourceKinds is the one table of source kinds ParseSource opens: a new
// kind is a row here (and, when its sources filter, a Filterable).
var sourceKinds = [...]sourceKind{
	{"gen", "gen:len=64,count=N[,rate=PPS][,flows=N][,after=5s]", "synthetic, sequence-numbered frames", openGen},
	{"pcap", "pcap:FILE[?timing=1&loops=N]", "pcap/pcapng replay", parsePcap},
	{"zc", "zc:IF[@Q]", "capture, the best of AF_XDP zero copy, AF_XDP copy and AF_PACKET", parseIfaces},
	{"afxdp", "afxdp:IF[@Q][?mode=copy|zerocopy&xdp=native|generic&ring=N]", "capture through AF_XDP into the cluster's buffers", parseIfaces},
	{"afpacket", "afpacket:IF", "capture through AF_PACKET TPACKET_V3, one copy", parseIfaces},
}

// SourceUsage lists the source kinds for a flag's help, a line each: the
// form, then what it is.
func SourceUsage() string {
	var b strings.Builder
	for i, k := range sourceKinds {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s — %s", k.form, k.does)
	}
	return b.String()
}

// kindNames lists the kinds for an error: "gen:, pcap:, ...".
func kindNames() string {
	names := make([]string, len(sourceKinds))
	for i, k := range sourceKinds {
		names[i] = k.kind + ":"
	}
	return strings.Join(names, ", ")
}

func openGen(spec, _, rest string, _ SourceOptions) ([]Source, error) {
	cfg, err := ParseGen(rest)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w: %w", spec, ErrBadSpec, err)
	}
	return []Source{NewGen(spec, cfg)}, nil
}

func closeAll(srcs []Source) {
	for i := len(srcs) - 1; i >= 0; i-- {
		srcs[i].Close()
	}
}

func parsePcap(spec, _, rest string, _ SourceOptions) ([]Source, error) {
	path, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("source %q: options %q: %w: %w", spec, query, ErrBadSpec, err)
	}
	var cfg PcapConfig
	for k, v := range q {
		switch k {
		case "timing":
			cfg.Timing, err = strconv.ParseBool(v[0])
		case "loops":
			cfg.Loops, err = strconv.Atoi(v[0])
		default:
			err = errors.New("unknown option (want timing, loops)")
		}
		if err != nil {
			return nil, fmt.Errorf("source %q: option %s=%s: %w: %w", spec, k, v[0], ErrBadSpec, err)
		}
	}
	p, err := OpenPcap(path, cfg)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", spec, err)
	}
	return []Source{p}, nil
}

type ifaceSpec struct {
	name  string
	queue int
}

// RingBuffers returns how many cluster buffers the sources spec names can
// keep in kernel rings (an AF_XDP socket's fill ring: its ring size; other
// kinds: 0), for a caller sizing the pool before ParseSource. A spec
// ParseSource would refuse for its form gives the same error.
func RingBuffers(spec string) (int, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		kind, rest = "zc", spec
	}
	if kind != "afxdp" && kind != "zc" {
		return 0, nil
	}
	xcfg, ifs, err := parseIfaceList(spec, kind, rest)
	if err != nil {
		return 0, err
	}
	return len(ifs) * cmp.Or(xcfg.RingSize, afxdp.DefaultRingSize), nil
}

func parseIfaces(spec, kind, rest string, opts SourceOptions) ([]Source, error) {
	xcfg, ifs, err := parseIfaceList(spec, kind, rest)
	if err != nil {
		return nil, err
	}
	var srcs []Source
	fail := func(err error) ([]Source, error) {
		closeAll(srcs)
		return nil, fmt.Errorf("source %q: %w", spec, err)
	}
	for _, is := range ifs {
		cfg := xcfg
		cfg.Ifname, cfg.Queue = is.name, is.queue
		var s Source
		switch kind {
		case "afxdp":
			if opts.Cluster == nil {
				return fail(fmt.Errorf("afxdp: %s: no cluster to use as UMEM (SourceOptions.Cluster): %w", is.name, ErrBadSpec))
			}
			s, err = openShared(opts.Cluster, cfg)
		case "afpacket":
			s, err = OpenAFPacket(is.name)
		case "zc":
			s, err = openBest(cfg, opts)
		}
		if err != nil {
			return fail(err)
		}
		if m, ok := s.(interface{ Mode() string }); ok {
			opts.logf("source %s: %s", s.Name(), m.Mode())
		}
		srcs = append(srcs, s)
	}
	return srcs, nil
}

// parseIfaceList parses the interface list and options of an afxdp:,
// afpacket: or zc: spec.
func parseIfaceList(spec, kind, rest string) (AFXDPConfig, []ifaceSpec, error) {
	var xcfg AFXDPConfig
	list, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return xcfg, nil, fmt.Errorf("source %q: options %q: %w: %w", spec, query, ErrBadSpec, err)
	}
	for k, v := range q {
		if kind == "afpacket" {
			return xcfg, nil, fmt.Errorf("source %q: afpacket: takes no option %q: %w", spec, k, ErrBadSpec)
		}
		switch k {
		case "mode":
			switch v[0] {
			case "auto":
				xcfg.Bind = afxdp.BindAuto
			case "copy":
				xcfg.Bind = afxdp.BindCopy
			case "zerocopy", "zero-copy", "zc":
				xcfg.Bind = afxdp.BindZeroCopy
			default:
				return xcfg, nil, fmt.Errorf("source %q: mode=%s: want copy, zerocopy or auto: %w", spec, v[0], ErrBadSpec)
			}
		case "xdp":
			switch v[0] {
			case "auto":
				xcfg.XDP = afxdp.XDPAuto
			case "native", "driver", "drv":
				xcfg.XDP = afxdp.XDPDriver
			case "generic", "skb":
				xcfg.XDP = afxdp.XDPGeneric
			default:
				return xcfg, nil, fmt.Errorf("source %q: xdp=%s: want native, generic or auto: %w", spec, v[0], ErrBadSpec)
			}
		case "ring":
			n, err := strconv.Atoi(v[0])
			if err != nil || n < 64 || n > 1<<16 || n&(n-1) != 0 {
				return xcfg, nil, fmt.Errorf("source %q: ring=%s: want a power of two from 64 to 65536: %w", spec, v[0], ErrBadSpec)
			}
			xcfg.RingSize = n
		default:
			return xcfg, nil, fmt.Errorf("source %q: unknown option %q (want mode, xdp, ring): %w", spec, k, ErrBadSpec)
		}
	}
	var ifs []ifaceSpec
	for _, e := range strings.Split(list, ",") {
		name, qs, hasQ := strings.Cut(e, "@")
		is := ifaceSpec{name: name}
		if name == "" {
			return xcfg, nil, fmt.Errorf("source %q: empty interface name: %w", spec, ErrBadSpec)
		}
		if hasQ {
			if kind == "afpacket" {
				return xcfg, nil, fmt.Errorf("source %q: afpacket: captures every queue; %q takes no @queue: %w", spec, e, ErrBadSpec)
			}
			if kind == "zc" && isDigits(name) {
				return xcfg, nil, fmt.Errorf("source %q: zc:%s is a cluster queue, not a capture source: %w", spec, e, ErrBadSpec)
			}
			if is.queue, err = strconv.Atoi(qs); err != nil || is.queue < 0 {
				return xcfg, nil, fmt.Errorf("source %q: queue %q of %s: want a number >= 0: %w", spec, qs, name, ErrBadSpec)
			}
		}
		ifs = append(ifs, is)
	}
	return xcfg, ifs, nil
}

// openShared opens an AF_XDP source whose socket uses the XDP program that
// every queue of the interface shares (attached by the first of them,
// detached when the last closes).
func openShared(c *zc.Cluster, cfg AFXDPConfig) (*AFXDP, error) {
	sp, err := acquireProgram(cfg.Ifname, cfg.XDP, cfg.Queue)
	if err != nil {
		return nil, fmt.Errorf("afxdp:%s@%d: %w", cfg.Ifname, cfg.Queue, err)
	}
	cfg.shared = sp
	s, err := OpenAFXDP(c, cfg)
	if err != nil {
		sp.release()
		return nil, err
	}
	return s, nil
}

// openBest opens AF_XDP (zero copy, else copy) and falls back to
// AF_PACKET.
func openBest(cfg AFXDPConfig, opts SourceOptions) (Source, error) {
	var why error
	switch {
	case opts.Cluster == nil:
		why = errors.New("no cluster for a UMEM")
	case opts.Cluster.BufferSize() > 4096:
		why = fmt.Errorf("buffer size %d exceeds AF_XDP's page-size frames", opts.Cluster.BufferSize())
	case opts.Filter != nil && opts.KernelFilter:
		why = errors.New("in-kernel BPF filter requested")
	default:
		s, err := openShared(opts.Cluster, cfg)
		if err == nil {
			s.name = "zc:" + s.name[len("afxdp:"):]
			return s, nil
		}
		why = err
	}
	if cfg.Queue != 0 {
		return nil, fmt.Errorf("zc:%s@%d: AF_XDP unavailable (%w) and AF_PACKET has no per-queue capture", cfg.Ifname, cfg.Queue, why)
	}
	opts.logf("source zc:%s: AF_XDP unavailable (%v), using AF_PACKET", cfg.Ifname, why)
	s, err := OpenAFPacket(cfg.Ifname)
	if err != nil {
		return nil, fmt.Errorf("zc:%s: AF_XDP: %v; AF_PACKET: %w", cfg.Ifname, why, err)
	}
	s.name = "zc:" + cfg.Ifname
	return s, nil
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
