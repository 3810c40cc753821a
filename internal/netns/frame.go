package netns

import (
	"encoding/binary"
	"fmt"
	"net"
)

// EtherType is the IEEE "local experimental" EtherType test frames carry,
// so tests can tell them from anything else on the wire.
const EtherType = 0x88b5

// frameMagic follows the Ethernet header of every test frame.
const frameMagic = 0x7a63_6662 // "zcfb"

// Test frame layout: dst MAC (6), src MAC (6), EtherType (2), magic (4),
// sequence number (4), then payload bytes derived from the sequence number
// up to the frame's length.
const frameHdrLen = 6 + 6 + 2 + 4 + 4

// FrameLen returns the length of test frame seq: 60 to 60+max-1 bytes,
// varying with seq so that frames of different sizes are exercised. max must
// be at least 1.
func FrameLen(seq uint32, max int) int { return 60 + int(seq*7919)%max }

// AppendFrame appends test frame seq of length n (at least 22 bytes) from src
// to dst to b and returns the extended slice.
func AppendFrame(b []byte, dst, src net.HardwareAddr, seq uint32, n int) []byte {
	start := len(b)
	b = append(b, dst[:6]...)
	b = append(b, src[:6]...)
	b = binary.BigEndian.AppendUint16(b, EtherType)
	b = binary.BigEndian.AppendUint32(b, frameMagic)
	b = binary.BigEndian.AppendUint32(b, seq)
	for i := len(b) - start; i < n; i++ {
		b = append(b, byte(seq>>3)+byte(i)*31)
	}
	return b
}

// CheckFrame parses a test frame, verifies every byte after the MAC
// addresses against what AppendFrame would have written for its sequence
// number and length, and returns the sequence number. ok is false for a
// frame that is not a test frame (other EtherType or magic); err is set for
// a test frame with wrong bytes.
func CheckFrame(f []byte) (seq uint32, ok bool, err error) {
	if len(f) < frameHdrLen || binary.BigEndian.Uint16(f[12:]) != EtherType ||
		binary.BigEndian.Uint32(f[14:]) != frameMagic {
		return 0, false, nil
	}
	seq = binary.BigEndian.Uint32(f[18:])
	for i := frameHdrLen; i < len(f); i++ {
		if want := byte(seq>>3) + byte(i)*31; f[i] != want {
			return seq, true, fmt.Errorf("frame %d (len %d): byte %d is %#x, want %#x", seq, len(f), i, f[i], want)
		}
	}
	return seq, true, nil
}
