package zc

import "encoding/binary"

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

// ParseHashMode accepts the numbers of zchost -m and the names
// "rr", "ip", "fanout", "5tuple", "gtp".
func ParseHashMode(s string) (HashMode, bool) {
	switch s {
	case "0", "rr", "round-robin":
		return ModeRoundRobin, true
	case "1", "ip", "ip-pair":
		return ModeIPPair, true
	case "2", "fanout", "fan-out":
		return ModeFanout, true
	case "3", "5tuple", "5-tuple", "flow":
		return Mode5Tuple, true
	case "4", "gtp", "gtp-u":
		return ModeGTP, true
	}
	return 0, false
}

// String names the mode as logs print it.
func (m HashMode) String() string {
	switch m {
	case ModeRoundRobin:
		return "round-robin"
	case ModeIPPair:
		return "ip-pair"
	case ModeFanout:
		return "fan-out"
	case Mode5Tuple:
		return "5-tuple"
	case ModeGTP:
		return "gtp"
	}
	return "unknown"
}

// Func returns the hash function of a content-based mode (nil for
// round-robin and fan-out).
func (m HashMode) Func() HashFunc {
	switch m {
	case ModeIPPair:
		return HashIPPair
	case Mode5Tuple:
		return Hash5Tuple
	case ModeGTP:
		return HashGTP
	}
	return nil
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
