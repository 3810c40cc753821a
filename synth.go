package zc

import (
	"encoding/binary"
	"errors"
)

// Synthetic traffic: Ethernet/IPv4/UDP frames whose payload carries a
// sequence number and a pattern derived from it, so a consumer anywhere
// (another process, a guest) can check order and content. The generator
// of zchost and zsend writes them; zcount --verify checks them.
//
//	0   6  dst MAC 02:00:00:00:00:02
//	6   6  src MAC 02:00:00:00:00:01
//	12  2  0x0800
//	14  20 IPv4: 10.0.F.F' -> 10.1.0.1, UDP, checksum set
//	34  8  UDP: port 1024+F -> 9
//	42  4  "ZCGN"
//	46  8  sequence number, big-endian
//	54  .. byte(seq+i) at offset i
//
// F is the flow (seq modulo the flow count), so hashes spread the frames.

// MinSynthLen is the shortest synthetic frame.
const MinSynthLen = 60

var synthMagic = [4]byte{'Z', 'C', 'G', 'N'}

// ErrNotSynth: the frame is not a synthetic frame, or is damaged.
var ErrNotSynth = errors.New("not a valid synthetic frame")

// SynthFrame writes synthetic frame seq of n bytes (n >= MinSynthLen,
// clamped to len(b)) into b for one of flows flows and returns its length.
func SynthFrame(b []byte, seq uint64, n, flows int) int {
	n = max(n, MinSynthLen)
	n = min(n, len(b))
	if n < MinSynthLen {
		return 0
	}
	f := uint16(0)
	if flows > 1 {
		f = uint16(seq % uint64(flows))
	}
	copy(b[0:], []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00})
	ip := b[14:34]
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:], uint16(n-14))
	binary.BigEndian.PutUint32(ip[4:], 0x40000000|uint32(uint16(seq))<<16) // id, DF
	ip[8], ip[9] = 64, 17
	ip[10], ip[11] = 0, 0
	ip[12], ip[13], ip[14], ip[15] = 10, 0, byte(f>>8), byte(f)
	ip[16], ip[17], ip[18], ip[19] = 10, 1, 0, 1
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	udp := b[34:42]
	binary.BigEndian.PutUint16(udp[0:], 1024+f)
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(n-34))
	udp[6], udp[7] = 0, 0
	copy(b[42:], synthMagic[:])
	binary.BigEndian.PutUint64(b[46:], seq)
	s := byte(seq)
	for i := 54; i < n; i++ {
		b[i] = s + byte(i)
	}
	return n
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// CheckSynth verifies a synthetic frame and returns its sequence number.
func CheckSynth(b []byte) (uint64, error) {
	if len(b) < MinSynthLen || b[12] != 0x08 || b[13] != 0 || [4]byte(b[42:46]) != synthMagic {
		return 0, ErrNotSynth
	}
	if int(binary.BigEndian.Uint16(b[16:])) != len(b)-14 || ipChecksum(b[14:34]) != 0 {
		return 0, ErrNotSynth
	}
	seq := binary.BigEndian.Uint64(b[46:])
	s := byte(seq)
	for i := 54; i < len(b); i++ {
		if b[i] != s+byte(i) {
			return seq, ErrNotSynth
		}
	}
	return seq, nil
}
