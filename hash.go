package zc

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// HashFunc computes a packet's balancing hash. It must not keep p.
type HashFunc func(p *Packet) uint32

// HashMode names the balancing modes of zchost -m, after zbalance_ipc.
type HashMode int

// Balancing modes.
const (
	// ModeRoundRobin spreads packets evenly, ignoring their content.
	ModeRoundRobin HashMode = 0
	// ModeIPPair keeps both directions of an IP pair on one queue.
	ModeIPPair HashMode = 1
	// ModeFanout sends every packet to every queue (zero copy, reference
	// counted).
	ModeFanout HashMode = 2
	// Mode5Tuple keeps both directions of a flow (IPs, protocol, ports).
	Mode5Tuple HashMode = 3
	// ModeGTP balances GTP-U tunnels by their inner IP pair.
	ModeGTP HashMode = 4
)

// hashModes is the one table of balancing modes, indexed by mode: the
// name logs print, the other names ParseHashMode accepts (besides the
// number), what the mode does for help texts, and its hash function (nil
// for the modes that do not look at the packet). A new mode is a row here
// and a constant above.
var hashModes = [...]struct {
	name    string
	aliases []string
	does    string
	fn      HashFunc
}{
	ModeRoundRobin: {"round-robin", []string{"rr"}, "spread evenly, the content not looked at", nil},
	ModeIPPair:     {"ip-pair", []string{"ip"}, "both directions of an IP pair on one queue", HashIPPair},
	ModeFanout:     {"fan-out", []string{"fanout"}, "every packet to every queue", nil},
	Mode5Tuple:     {"5-tuple", []string{"5tuple", "flow"}, "both directions of a flow (IPs, protocol, ports) on one queue", Hash5Tuple},
	ModeGTP:        {"gtp", []string{"gtp-u"}, "GTP-U tunnels by their inner IP pair", HashGTP},
}

// ParseHashMode accepts a mode's number (as zchost -m takes it, after
// zbalance_ipc), its name ("round-robin", "ip-pair", "fan-out",
// "5-tuple", "gtp") or a short form ("rr", "ip", "fanout", "5tuple",
// "flow", "gtp-u").
func ParseHashMode(s string) (HashMode, bool) {
	for m, row := range hashModes {
		if s == strconv.Itoa(m) || s == row.name || slices.Contains(row.aliases, s) {
			return HashMode(m), true
		}
	}
	return 0, false
}

// String names the mode as logs print it.
func (m HashMode) String() string {
	if m < 0 || int(m) >= len(hashModes) {
		return "unknown"
	}
	return hashModes[m].name
}

// Func returns the hash function of a content-based mode (nil for
// round-robin and fan-out).
func (m HashMode) Func() HashFunc {
	if m < 0 || int(m) >= len(hashModes) {
		return nil
	}
	return hashModes[m].fn
}

// HashModeUsage lists the modes for a flag's help, a line each: number,
// name and what the mode does ("1 ip-pair: both directions of ...").
func HashModeUsage() string {
	var b strings.Builder
	for m, row := range hashModes {
		if m > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%d %s: %s", m, row.name, row.does)
	}
	return b.String()
}

// HashModeNames lists the modes' names for an error message:
// "round-robin, ip-pair, fan-out, 5-tuple, gtp (or 0..4)".
func HashModeNames() string {
	names := make([]string, len(hashModes))
	for m, row := range hashModes {
		names[m] = row.name
	}
	return fmt.Sprintf("%s (or 0..%d)", strings.Join(names, ", "), len(hashModes)-1)
}

// fmix is MurmurHash3's 32-bit finaliser: it spreads every input bit.
func fmix(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherVLAN = 0x8100
	etherQinQ = 0x88a8
	gtpuPort  = 2152
)

// flow is what the hashes read from a packet.
type flow struct {
	ip    uint32 // XOR of the folded source and destination addresses
	proto uint8
	ports uint32 // XOR of the ports (symmetric), 0 if none
	l4    int    // offset of the L4 header, 0 if none
	ok    bool
}

// parseIP reads an IPv4 or IPv6 header at b[off:] (bounds checked).
func parseIP(b []byte, off int) flow {
	if off >= len(b) {
		return flow{}
	}
	var f flow
	switch b[off] >> 4 {
	case 4:
		if len(b) < off+20 {
			return flow{}
		}
		ihl := int(b[off]&0x0f) * 4
		f.ip = binary.BigEndian.Uint32(b[off+12:]) ^ binary.BigEndian.Uint32(b[off+16:])
		f.proto = b[off+9]
		frag := binary.BigEndian.Uint16(b[off+6:]) & 0x1fff
		if ihl >= 20 && frag == 0 {
			f.l4 = off + ihl
		}
	case 6:
		if len(b) < off+40 {
			return flow{}
		}
		for i := 8; i < 40; i += 4 {
			f.ip ^= binary.BigEndian.Uint32(b[off+i:])
		}
		f.proto = b[off+6]
		f.l4 = off + 40
	default:
		return flow{}
	}
	f.ok = true
	if f.l4 > 0 && (f.proto == 6 || f.proto == 17 || f.proto == 132) && len(b) >= f.l4+4 {
		f.ports = uint32(binary.BigEndian.Uint16(b[f.l4:]) ^ binary.BigEndian.Uint16(b[f.l4+2:]))
	} else {
		f.l4 = 0
	}
	return f
}

// l3 returns the offset of the IP header after Ethernet and up to two
// VLAN tags, or -1.
func l3(b []byte) int {
	off := 12
	for range 3 {
		if len(b) < off+2 {
			return -1
		}
		switch binary.BigEndian.Uint16(b[off:]) {
		case etherVLAN, etherQinQ:
			off += 4
		case etherIPv4, etherIPv6:
			return off + 2
		default:
			return -1
		}
	}
	return -1
}

// HashIPPair hashes the source and destination IP addresses, symmetric
// in direction. Non-IP packets hash to 0.
func HashIPPair(p *Packet) uint32 {
	f := ipFlow(p.Data)
	if !f.ok {
		return 0
	}
	return fmix(f.ip)
}

// ipFlow parses the IP header after Ethernet (and VLAN tags).
func ipFlow(b []byte) flow {
	off := l3(b)
	if off < 0 {
		return flow{}
	}
	return parseIP(b, off)
}

// Hash5Tuple hashes addresses, protocol and ports, symmetric in
// direction.
func Hash5Tuple(p *Packet) uint32 {
	f := ipFlow(p.Data)
	if !f.ok {
		return 0
	}
	return fmix(f.ip ^ uint32(f.proto)<<24 ^ f.ports*0x9e3779b1)
}

// HashGTP hashes the inner IP pair of a GTP-U packet (UDP port 2152), so
// one subscriber's tunnels stay together; other packets hash as
// HashIPPair.
func HashGTP(p *Packet) uint32 {
	b := p.Data
	off := l3(b)
	if off < 0 {
		return 0
	}
	f := parseIP(b, off)
	if !f.ok {
		return 0
	}
	if f.proto == 17 && f.l4 > 0 && len(b) >= f.l4+8 && binary.BigEndian.Uint16(b[f.l4+2:]) == gtpuPort {
		if inner := gtpPayload(b, f.l4+8); inner > 0 {
			if fi := parseIP(b, inner); fi.ok {
				return fmix(fi.ip)
			}
		}
	}
	return fmix(f.ip)
}

// gtpPayload returns the offset of a G-PDU's payload for the GTPv1-U
// header at b[off:], or 0.
func gtpPayload(b []byte, off int) int {
	if len(b) < off+8 || b[off]>>5 != 1 || b[off+1] != 0xff {
		return 0
	}
	flags := b[off]
	off += 8
	if flags&0x07 == 0 {
		return off
	}
	if len(b) < off+4 {
		return 0
	}
	next := b[off+3]
	off += 4
	for next != 0 && flags&0x04 != 0 {
		if len(b) < off+1 || b[off] == 0 {
			return 0
		}
		n := int(b[off]) * 4
		if len(b) < off+n {
			return 0
		}
		next = b[off+n-1]
		off += n
	}
	return off
}
