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
	binary.BigEndian.PutUint32(ip[4:], uint32(uint16(seq))<<16|0x4000) // id; flags DF, offset 0
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

// Synth writes the same frames as SynthFrame for one length and flow
// count, several times faster: each flow's headers are made once, and a
// frame is a copy of them with its IP id, checksum and sequence number
// patched in (the checksum updated from the flow's sum, RFC 1624). For
// generators that write millions of frames a second.
type Synth struct {
	n     int
	flows uint64
	hdr   [][54]byte // per flow: the frame up to the sequence number, id 0
	sum   []uint32   // per flow: the one's complement sum of its IP header with id 0
}

// synthRamp[i] is byte(i): the payload pattern byte(seq+i) is a slice of
// it starting at byte(seq+54), copied rather than made byte by byte.
var synthRamp = func() (r [256 + 65536]byte) {
	for i := range r {
		r[i] = byte(i)
	}
	return
}()

// NewSynth prepares frames of n bytes (at least MinSynthLen, at most
// 65536) over flows flows (at least 1).
func NewSynth(n, flows int) *Synth {
	n = min(max(n, MinSynthLen), 65536)
	flows = max(flows, 1)
	s := &Synth{n: n, flows: uint64(flows), hdr: make([][54]byte, flows), sum: make([]uint32, flows)}
	b := make([]byte, n)
	for f := range flows {
		SynthFrame(b, uint64(f), n, flows) // flow f, id uint16(f): cleared below
		h := &s.hdr[f]
		copy(h[:], b[:54])
		h[18], h[19] = 0, 0 // IP id
		h[24], h[25] = 0, 0 // IP checksum
		var sum uint32
		for i := 14; i < 34; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(h[i:]))
		}
		s.sum[f] = sum
	}
	return s
}

// Len returns the length of the frames.
func (s *Synth) Len() int { return s.n }

// Frame writes frame seq into b, as SynthFrame(b, seq, n, flows) does, and
// returns its length (0 when b is shorter than MinSynthLen; a b shorter
// than n gets a frame of len(b) bytes from SynthFrame itself).
func (s *Synth) Frame(b []byte, seq uint64) int {
	if len(b) < s.n {
		return SynthFrame(b, seq, s.n, int(s.flows))
	}
	f := uint64(0)
	if s.flows > 1 {
		f = seq % s.flows
	}
	b = b[:s.n]
	copy(b, s.hdr[f][:])
	id := uint16(seq)
	binary.BigEndian.PutUint16(b[18:], id)
	sum := s.sum[f] + uint32(id)
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(b[24:], ^uint16(sum))
	binary.BigEndian.PutUint64(b[46:], seq)
	start := int(byte(seq) + 54)
	copy(b[54:], synthRamp[start:start+s.n-54])
	return s.n
}
