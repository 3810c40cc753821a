package host

import (
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/pcaptest"
)

// drain receives from s until io.EOF (or 100 empty calls) and returns
// what each delivered frame says it is.
func drain(t *testing.T, c *zc.Cluster, s Source, what func([]byte) uint64) []uint64 {
	t.Helper()
	pkts := make([]zc.Packet, 16)
	var got []uint64
	for empty := 0; empty < 100; {
		n, err := s.Recv(c.Pool(), pkts)
		for _, p := range pkts[:n] {
			got = append(got, what(p.Data))
		}
		c.Pool().Free(pkts[:n])
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			empty++
		}
	}
	t.Fatalf("%s did not end: %v so far", s.Name(), got)
	return nil
}

// TestGenResume: a generator resumed at position K sends frames K.. up to
// its count, and paces from where it resumed (at 1 frame/s it would
// otherwise owe nothing for K seconds).
func TestGenResume(t *testing.T) {
	c := newCluster(t, 256)
	seq := func(b []byte) uint64 {
		s, err := zc.CheckSynth(b)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(s)
	}
	cfg, err := ParseGen("len=64,count=10")
	if err != nil {
		t.Fatal(err)
	}
	g := NewGen("gen", cfg)
	g.Resume(4)
	if got := drain(t, c, g, seq); !slices.Equal(got, []uint64{4, 5, 6, 7, 8, 9}) {
		t.Fatalf("resumed at 4 of 10: frames %v", got)
	}
	if st := g.Stats(); st.Position != 10 || st.Packets != 6 {
		t.Fatalf("stats %+v, want position 10, 6 packets", st)
	}

	cfg, err = ParseGen("len=64,count=10,rate=1")
	if err != nil {
		t.Fatal(err)
	}
	g = NewGen("paced", cfg)
	g.Resume(6)
	pkts := make([]zc.Packet, 4)
	n, err := g.Recv(c.Pool(), pkts)
	if err != nil || n != 1 || seq(pkts[0].Data) != 6 {
		t.Fatalf("paced generator resumed at 6: first Recv gave %d frames (%v), want frame 6 at once", n, err)
	}
}

// TestPcapResume: a replay resumed at record K skips K records, across
// its loops, and sends the rest.
func TestPcapResume(t *testing.T) {
	c := newCluster(t, 256)
	var frames [][]byte
	for i := range 5 {
		f := make([]byte, 60)
		f[0] = byte(i)
		frames = append(frames, f)
	}
	p, err := OpenPcap(pcaptest.File(t, frames...), PcapConfig{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Resume(7)
	if got := drain(t, c, p, func(b []byte) uint64 { return uint64(b[0]) }); !slices.Equal(got, []uint64{2, 3, 4}) {
		t.Fatalf("2 loops of 5 resumed at 7: frames %v, want the second loop's 2, 3, 4", got)
	}
	if st := p.Stats(); st.Position != 10 || st.Packets != 3 {
		t.Fatalf("stats %+v, want position 10, 3 packets", st)
	}
}
