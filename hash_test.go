package zc

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// frame builds Ethernet/IPv4/UDP with optional VLAN tag.
func frame(src, dst [4]byte, sport, dport uint16, vlan bool, payload []byte) []byte {
	b := make([]byte, 12, 64+len(payload))
	if vlan {
		b = binary.BigEndian.AppendUint16(b, etherVLAN)
		b = binary.BigEndian.AppendUint16(b, 42)
	}
	b = binary.BigEndian.AppendUint16(b, etherIPv4)
	ip := make([]byte, 20)
	ip[0] = 0x45
	ip[9] = 17
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(payload)))
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	b = append(b, ip...)
	b = binary.BigEndian.AppendUint16(b, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	b = binary.BigEndian.AppendUint16(b, 0)
	return append(b, payload...)
}

func TestHashesSymmetric(t *testing.T) {
	a, z := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	for _, vlan := range []bool{false, true} {
		fwd := Packet{Data: frame(a, z, 1234, 80, vlan, nil)}
		rev := Packet{Data: frame(z, a, 80, 1234, vlan, nil)}
		other := Packet{Data: frame(a, z, 1235, 80, vlan, nil)}
		if HashIPPair(&fwd) != HashIPPair(&rev) || HashIPPair(&fwd) == 0 {
			t.Fatal("ip pair not symmetric")
		}
		if Hash5Tuple(&fwd) != Hash5Tuple(&rev) {
			t.Fatal("5-tuple not symmetric")
		}
		if Hash5Tuple(&fwd) == Hash5Tuple(&other) {
			t.Fatal("5-tuple ignores ports")
		}
		if HashIPPair(&fwd) != HashIPPair(&other) {
			t.Fatal("ip pair depends on ports")
		}
	}
}

func TestHashGTPInner(t *testing.T) {
	inner := frame([4]byte{192, 168, 1, 1}, [4]byte{8, 8, 8, 8}, 5, 6, false, nil)[14:]
	gtp := func(teid uint32, ext bool) []byte {
		h := []byte{0x30, 0xff, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[4:], teid)
		if ext {
			h[0] |= 0x04
			h = append(h, 0, 0, 0, 0x85, 1, 0x10, 0x09, 0) // PDU session container
		}
		return append(h, inner...)
	}
	tun1 := Packet{Data: frame([4]byte{1, 1, 1, 1}, [4]byte{2, 2, 2, 2}, 2152, 2152, false, gtp(7, false))}
	tun2 := Packet{Data: frame([4]byte{3, 3, 3, 3}, [4]byte{4, 4, 4, 4}, 2152, 2152, true, gtp(9, true))}
	if HashGTP(&tun1) != HashGTP(&tun2) {
		t.Fatal("same inner pair, different tunnels: hashes differ")
	}
	if HashGTP(&tun1) == HashIPPair(&tun1) {
		t.Fatal("GTP hash used the outer header")
	}
}

func FuzzHashes(f *testing.F) {
	f.Add(frame([4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 2152, 2152, true, []byte{0x34, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x85, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := Packet{Data: b}
		HashIPPair(&p)
		Hash5Tuple(&p)
		HashGTP(&p)
	})
}

// TestHashModes: every mode parses by its number, its name and each short
// form, prints its name, has a hash function exactly when it looks at the
// packet, and shows in both help lists; anything else is refused.
func TestHashModes(t *testing.T) {
	content := map[HashMode]bool{ModeIPPair: true, Mode5Tuple: true, ModeGTP: true}
	forms := map[HashMode][]string{
		ModeRoundRobin: {"0", "round-robin", "rr"},
		ModeIPPair:     {"1", "ip-pair", "ip"},
		ModeFanout:     {"2", "fan-out", "fanout"},
		Mode5Tuple:     {"3", "5-tuple", "5tuple", "flow"},
		ModeGTP:        {"4", "gtp", "gtp-u"},
	}
	usage, names := HashModeUsage(), HashModeNames()
	for m, ss := range forms {
		for _, s := range ss {
			if got, ok := ParseHashMode(s); !ok || got != m {
				t.Errorf("ParseHashMode(%q) = %v, %v; want %v", s, got, ok, m)
			}
		}
		if m.String() != ss[1] {
			t.Errorf("mode %d prints %q, want %q", m, m.String(), ss[1])
		}
		if (m.Func() != nil) != content[m] {
			t.Errorf("mode %v: hash function %v, want one: %v", m, m.Func() != nil, content[m])
		}
		if !strings.Contains(usage, fmt.Sprintf("%d %s: ", m, ss[1])) || !strings.Contains(names, ss[1]) {
			t.Errorf("mode %v missing from the help lists:\n%s\n%s", m, usage, names)
		}
	}
	if len(forms) != len(hashModes) {
		t.Errorf("%d modes tested, %d in the table", len(forms), len(hashModes))
	}
	for _, s := range []string{"", "5", "-1", "RR", "fan", "round robin"} {
		if m, ok := ParseHashMode(s); ok {
			t.Errorf("ParseHashMode(%q) = %v, want refused", s, m)
		}
	}
	for _, m := range []HashMode{-1, 5} {
		if m.String() != "unknown" || m.Func() != nil {
			t.Errorf("mode %d: %q, %v", int(m), m.String(), m.Func() != nil)
		}
	}
}
