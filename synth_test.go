package zc

import (
	"errors"
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
