// Command zdecode decodes the packets of a zcfabric queue with gopacket,
// through the zcgopacket adapter, and counts them per layer type and per
// flow: a stats line per interval while packets arrive, and the layer
// table and the top flows at the end. Like zcount it is pure Go, so the
// same binary runs on the host and inside a VM:
//
//	zdecode -i zc:99@0 [-n N] [--top 10] [--interval 1s] [--full]
//
// By default it reads zero copy (ZeroCopyReadPacketData) into a
// gopacket.DecodingLayerParser: Ethernet, 802.1Q, ARP, IPv4, IPv6, TCP,
// UDP, ICMPv4, ICMPv6, allocating nothing per packet. --full reads copies
// through gopacket.NewPacketSource and decodes every layer gopacket knows
// (DNS, TLS, ...), at many times the cost.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/examples/internal/cli"
	"github.com/zcfabric/zc/zcgopacket"
)

// maxFlows bounds the flow table; packets of further flows are counted
// together as "other flows".
const maxFlows = 1 << 16

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `Usage: zdecode [-i] zc:CLUSTER@QUEUE [-n N] [--top N] [--interval D] [--full]

Decodes the packets of a zcfabric queue with gopacket (host or VM guest
alike) and counts them per layer type (Ethernet, IPv4, UDP, ...) and per
flow (addresses and ports). While packets arrive it prints a line per
interval to standard error: packets, rate, the layer counts and the
busiest flows; at the end (after -n packets, on SIGINT/SIGTERM, or when
the cluster is closed) it prints the layer table and the top flows to
standard output.

Default: zero-copy reads into a DecodingLayerParser (Ethernet, 802.1Q,
ARP, IPv4, IPv6, TCP, UDP, ICMPv4, ICMPv6; what follows them is counted
as Payload, or as "not decoded" for other protocols), no allocation per
packet. --full: gopacket.NewPacketSource over copied packets, every layer
gopacket knows (much slower).

Exit status: 0 after -n packets, an interrupt or the cluster's close; 1
when the queue failed (unplugged, re-created) or could not be opened; 2
for a usage error.

Flags:
`

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zdecode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		name     string
		count    uint64
		top      int
		interval time.Duration
		full     bool
		force    bool
		wait     time.Duration
	)
	fs.StringVar(&name, "i", "", "queue to decode, zc:CLUSTER@QUEUE (required; or the name alone, as the one argument)")
	fs.Uint64Var(&count, "n", 0, "exit after `N` packets (0: until interrupted or the cluster closes)")
	fs.IntVar(&top, "top", 10, "how many of the busiest flows to list at the end (0: none, only their number)")
	fs.DurationVar(&interval, "interval", time.Second, "print a stats line this often while packets arrive (0: never)")
	fs.BoolVar(&full, "full", false, "decode every layer gopacket knows (gopacket.NewPacketSource, copies)")
	fs.BoolVar(&force, "force", false, "take over the consumer end even if another party holds it")
	fs.DurationVar(&wait, "wait", 0, "wait up to this long for the cluster to appear (0: fail at once)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if code, ok := cli.ParseQueue(fs, args, &name, func() string {
		if name == "" {
			return "zdecode: -i zc:CLUSTER@QUEUE is required"
		}
		return cli.NotNegative(fs, "top", "interval", "wait")
	}); !ok {
		return code
	}
	ctx, stop, q, err := cli.Open(name, wait, force)
	if err != nil {
		fmt.Fprintf(stderr, "zdecode: %v\n", err)
		return 1
	}
	defer stop()
	src, err := zcgopacket.New(q, zcgopacket.WithContext(ctx))
	if err != nil {
		q.Close()
		fmt.Fprintf(stderr, "zdecode: %v\n", err)
		return 1
	}
	defer src.Close()

	t := newTally()
	var next func() error
	if full {
		next = t.fullDecoder(gopacket.NewPacketSource(src, src.LinkType()))
	} else {
		next = t.fastDecoder(src)
	}
	start := time.Now()
	lastT, lastN := start, uint64(0)
	exit := 0
	for count == 0 || t.packets < count {
		if err := next(); err != nil {
			switch {
			case ctx.Err() != nil:
				// interrupted
			case errors.Is(err, zc.ErrClosed) && errors.Is(err, io.EOF):
				fmt.Fprintf(stderr, "zdecode: %s: cluster closed by its creator\n", name)
			default:
				fmt.Fprintf(stderr, "zdecode: %v\n", err)
				exit = 1
			}
			break
		}
		if interval > 0 && t.packets&63 == 0 {
			if now := time.Now(); now.Sub(lastT) >= interval {
				fmt.Fprintf(stderr, "%s  %d pkts (%.0f pps) | %s | top: %s\n", name, t.packets,
					float64(t.packets-lastN)/now.Sub(lastT).Seconds(), t.layerLine(), t.flowLine(3))
				lastT, lastN = now, t.packets
			}
		}
	}
	secs := time.Since(start).Seconds()
	st := src.Stats()
	fmt.Fprintf(stdout, "%s: %d packets, %d bytes in %.3f s (%.0f pps); queue drops %d\n",
		name, t.packets, t.bytes, secs, float64(t.packets)/max(secs, 1e-9), st.Drops)
	t.print(stdout, top)
	return exit
}

// flowKey is a flow: its network and transport endpoints (the transport
// flow is zero for packets without ports, ICMP, ARP).
type flowKey struct{ net, tr gopacket.Flow }

func (k flowKey) String() string {
	if k.tr.EndpointType() == gopacket.EndpointInvalid {
		return fmt.Sprintf("%v > %v", k.net.Src(), k.net.Dst())
	}
	return fmt.Sprintf("%v:%v > %v:%v %v", k.net.Src(), k.tr.Src(), k.net.Dst(), k.tr.Dst(), k.tr.EndpointType())
}

// tally is what zdecode counts.
type tally struct {
	packets, bytes uint64
	layers         map[gopacket.LayerType]uint64
	undecoded      map[gopacket.LayerType]uint64 // the layer the fast parser stopped at
	errors         uint64                        // packets that failed to decode
	flows          map[flowKey]uint64
	otherFlows     uint64
}

func newTally() *tally {
	return &tally{layers: map[gopacket.LayerType]uint64{}, undecoded: map[gopacket.LayerType]uint64{}, flows: map[flowKey]uint64{}}
}

func (t *tally) flow(k flowKey) {
	if _, ok := t.flows[k]; ok || len(t.flows) < maxFlows {
		t.flows[k]++
	} else {
		t.otherFlows++
	}
}

// fastDecoder returns a step that reads one packet zero copy and decodes
// it with a DecodingLayerParser into preallocated layers.
func (t *tally) fastDecoder(src *zcgopacket.Source) func() error {
	var (
		eth     layers.Ethernet
		dot1q   layers.Dot1Q
		arp     layers.ARP
		ip4     layers.IPv4
		ip6     layers.IPv6
		tcp     layers.TCP
		udp     layers.UDP
		icmp4   layers.ICMPv4
		icmp6   layers.ICMPv6
		payload gopacket.Payload
	)
	parser := gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &eth, &dot1q, &arp, &ip4, &ip6, &tcp, &udp, &icmp4, &icmp6, &payload)
	decoded := make([]gopacket.LayerType, 0, 16)
	return func() error {
		data, _, err := src.ZeroCopyReadPacketData()
		if err != nil {
			return err
		}
		t.packets++
		t.bytes += uint64(len(data))
		perr := parser.DecodeLayers(data, &decoded)
		var k flowKey
		for _, lt := range decoded {
			t.layers[lt]++
			switch lt {
			case layers.LayerTypeIPv4:
				k.net = ip4.NetworkFlow()
			case layers.LayerTypeIPv6:
				k.net = ip6.NetworkFlow()
			case layers.LayerTypeTCP:
				k.tr = tcp.TransportFlow()
			case layers.LayerTypeUDP:
				k.tr = udp.TransportFlow()
			}
		}
		if k.net.EndpointType() != gopacket.EndpointInvalid {
			t.flow(k)
		}
		var unsup gopacket.UnsupportedLayerType
		switch {
		case perr == nil:
		case errors.As(perr, &unsup):
			t.undecoded[gopacket.LayerType(unsup)]++
		default:
			t.errors++
		}
		return nil
	}
}

// fullDecoder returns a step that takes one packet from ps, fully decoded.
func (t *tally) fullDecoder(ps *gopacket.PacketSource) func() error {
	return func() error {
		p, err := ps.NextPacket()
		if err != nil {
			return err
		}
		t.packets++
		t.bytes += uint64(len(p.Data()))
		for _, l := range p.Layers() {
			t.layers[l.LayerType()]++
		}
		if p.ErrorLayer() != nil {
			t.errors++
		}
		if nl := p.NetworkLayer(); nl != nil {
			k := flowKey{net: nl.NetworkFlow()}
			if tl := p.TransportLayer(); tl != nil {
				k.tr = tl.TransportFlow()
			}
			t.flow(k)
		}
		return nil
	}
}

type count[K any] struct {
	k K
	n uint64
}

// sorted returns m's entries, most first (ties by name, for stable output).
func sorted[K comparable](m map[K]uint64, name func(K) string) []count[K] {
	s := make([]count[K], 0, len(m))
	for k, n := range m {
		s = append(s, count[K]{k, n})
	}
	slices.SortFunc(s, func(a, b count[K]) int {
		return cmp.Or(cmp.Compare(b.n, a.n), strings.Compare(name(a.k), name(b.k)))
	})
	return s
}

func layerName(l gopacket.LayerType) string { return l.String() }
func flowName(k flowKey) string             { return k.String() }

// layerLine is the layer counts on one line.
func (t *tally) layerLine() string {
	var b strings.Builder
	for i, c := range sorted(t.layers, layerName) {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%v %d", c.k, c.n)
	}
	return b.String()
}

// flowLine is the n busiest flows on one line.
func (t *tally) flowLine(n int) string {
	s := sorted(t.flows, flowName)
	parts := make([]string, 0, n)
	for _, c := range s[:min(n, len(s))] {
		parts = append(parts, fmt.Sprintf("%v (%d)", c.k, c.n))
	}
	return strings.Join(parts, ", ")
}

// print writes the layer table and the top flows.
func (t *tally) print(w io.Writer, top int) {
	fmt.Fprintf(w, "layers:\n")
	for _, c := range sorted(t.layers, layerName) {
		fmt.Fprintf(w, "  %-12v %d\n", c.k, c.n)
	}
	for _, c := range sorted(t.undecoded, layerName) {
		fmt.Fprintf(w, "  not decoded: %v %d\n", c.k, c.n)
	}
	if t.errors > 0 {
		fmt.Fprintf(w, "  decode errors %d\n", t.errors)
	}
	s := sorted(t.flows, flowName)
	fmt.Fprintf(w, "top flows (of %d):\n", len(s))
	for _, c := range s[:min(top, len(s))] {
		fmt.Fprintf(w, "  %-44v %d\n", c.k, c.n)
	}
	if t.otherFlows > 0 {
		fmt.Fprintf(w, "  (packets of flows beyond the first %d: %d)\n", maxFlows, t.otherFlows)
	}
}
