package zc

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestSynthRoundTrip(t *testing.T) {
	b := make([]byte, 2048)
	for _, n := range []int{10, 60, 64, 1500} {
		got := SynthFrame(b, 123456789, n, 8)
		if got != max(n, MinSynthLen) {
			t.Fatalf("length %d for %d", got, n)
		}
		seq, err := CheckSynth(b[:got])
		if err != nil || seq != 123456789 {
			t.Fatalf("check: %d %v", seq, err)
		}
		b[got-1]++
		if _, err := CheckSynth(b[:got]); got > 54 && !errors.Is(err, ErrNotSynth) {
			t.Fatal("damaged frame accepted")
		}
	}
	p1, p2 := Packet{Data: b[:SynthFrame(b, 1, 64, 8)]}, Packet{}
	h1 := HashIPPair(&p1)
	c := make([]byte, 64)
	p2.Data = c[:SynthFrame(c, 2, 64, 8)]
	if h1 == HashIPPair(&p2) {
		t.Fatal("flows hash alike")
	}
}

func FuzzCheckSynth(f *testing.F) {
	b := make([]byte, 80)
	f.Add(b[:SynthFrame(b, 7, 80, 4)])
	f.Fuzz(func(t *testing.T, b []byte) { CheckSynth(b) })
}

// TestSynthMatchesSynthFrame: the template generator writes byte for byte
// the frames of the reference one, for any length, flow count and
// sequence number (ids and checksums across their wrap-around included).
func TestSynthMatchesSynthFrame(t *testing.T) {
	want, got := make([]byte, 9000), make([]byte, 9000)
	seqs := []uint64{0, 1, 53, 201, 255, 256, 65535, 65536, 65537, 1<<32 + 7, 1<<64 - 1}
	for _, n := range []int{0, 60, 64, 65, 128, 1500, 9000} {
		for _, flows := range []int{0, 1, 3, 64, 256} {
			s := NewSynth(n, flows)
			for _, seq := range seqs {
				for _, size := range []int{9000, 100, 59} { // whole buffer, shorter than n, too short
					for i := range got {
						got[i], want[i] = 0xAA, 0xAA
					}
					wn, gn := SynthFrame(want[:size], seq, n, flows), s.Frame(got[:size], seq)
					if wn != gn || !bytes.Equal(want, got) {
						t.Fatalf("n %d flows %d seq %d buffer %d: Synth wrote %d bytes, SynthFrame %d, or other bytes", n, flows, seq, size, gn, wn)
					}
				}
			}
		}
	}
}

// BenchmarkSynth: frames a second, the template generator against the
// reference one in the same run.
func BenchmarkSynth(b *testing.B) {
	buf := make([]byte, 2048)
	for _, n := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%d/SynthFrame", n), func(b *testing.B) {
			for i := range b.N {
				SynthFrame(buf, uint64(i), n, 64)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
		})
		b.Run(fmt.Sprintf("%d/Synth", n), func(b *testing.B) {
			s := NewSynth(n, 64)
			for i := range b.N {
				s.Frame(buf, uint64(i))
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
		})
	}
}
