package zc

import (
	"encoding/binary"
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
