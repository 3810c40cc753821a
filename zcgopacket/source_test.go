package zcgopacket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/zcfabric/zc"
)

// newCluster creates a real cluster (a /dev/shm region in a folder of the
// test's own) with one queue, and attaches its producer end.
func newCluster(t testing.TB, cfg zc.Config) (*zc.Cluster, *zc.Queue) {
	t.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "zcgopacket-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir)
	cfg.ID = 0x7d000000 | rand.Uint32N(1<<24)
	cfg.Backing = zc.BackingShm
	c, err := zc.CreateCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	prod, err := c.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prod.Close() })
	return c, prod
}

// frame is what send writes as packet seq: a synthetic Ethernet/IPv4/UDP
// frame whose length varies with seq.
func frameLen(seq uint64) int { return 60 + int(seq%300) }

// send produces packets first..first+n-1 (zc.SynthFrame) and waits until
// each is queued. Even packets carry a timestamp and a port in their
// metadata, odd ones none.
func send(t testing.TB, prod *zc.Queue, first, n uint64) {
	t.Helper()
	if err := produce(prod, first, n); err != nil {
		t.Fatal(err)
	}
}

func produce(prod *zc.Queue, first, n uint64) error {
	pkts := make([]zc.Packet, 1)
	for seq := first; seq < first+n; seq++ {
		for {
			k, err := prod.Alloc(pkts)
			if err != nil {
				return fmt.Errorf("alloc: %w", err)
			}
			if k == 1 {
				break
			}
			time.Sleep(time.Millisecond) // all buffers lent: wait for returns
		}
		pkts[0].Data = pkts[0].Data[:zc.SynthFrame(pkts[0].Data, seq, frameLen(seq), 4)]
		pkts[0].Timestamp, pkts[0].Port = 0, 0
		if seq%2 == 0 {
			pkts[0].Timestamp, pkts[0].Port = stamp(seq), 7
		}
		if _, err := prod.SendBurstWait(context.Background(), pkts); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	return nil
}

func stamp(seq uint64) int64 { return 1_700_000_000_123_456_789 + int64(seq)*1000 }

func open(t testing.TB, c *zc.Cluster, opts ...Option) *Source {
	t.Helper()
	s, err := Open(zc.Name{Cluster: c.ID(), Queue: 0}.String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// check checks packet seq as a read returned it.
func check(t testing.TB, seq uint64, data []byte, ci gopacket.CaptureInfo, before, after time.Time) {
	t.Helper()
	got, err := zc.CheckSynth(data)
	if err != nil || got != seq {
		t.Fatalf("packet %d: seq %d, %v", seq, got, err)
	}
	if len(data) != frameLen(seq) || ci.CaptureLength != len(data) || ci.Length != len(data) {
		t.Fatalf("packet %d: %d bytes, CaptureLength %d, Length %d; want %d", seq, len(data), ci.CaptureLength, ci.Length, frameLen(seq))
	}
	if seq%2 == 0 {
		if ci.Timestamp.UnixNano() != stamp(seq) || ci.InterfaceIndex != 7 {
			t.Fatalf("packet %d: timestamp %d, interface %d; want the producer's %d and 7", seq, ci.Timestamp.UnixNano(), ci.InterfaceIndex, stamp(seq))
		}
	} else if ci.Timestamp.Before(before) || ci.Timestamp.After(after) || ci.InterfaceIndex != 0 {
		t.Fatalf("packet %d: timestamp %v, interface %d; want the receive time (between %v and %v) and 0", seq, ci.Timestamp, ci.InterfaceIndex, before, after)
	}
}

// TestZeroCopyRead: every packet, in order, with its length, the
// producer's timestamp and port where it set them and the receive time
// where it did not; the data points into the cluster's buffers.
func TestZeroCopyRead(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 1024})
	const total = 1000
	before := time.Now()
	send(t, prod, 0, total)
	s := open(t, c, WithBurst(16))
	maps := regionMaps(t, c.File())
	for seq := range uint64(total) {
		data, ci, err := s.ZeroCopyReadPacketData()
		if err != nil {
			t.Fatalf("read %d: %v", seq, err)
		}
		check(t, seq, data, ci, before, time.Now())
		if !maps.holds(data) {
			t.Fatalf("packet %d: data is not in a mapping of the region (copied?)", seq)
		}
	}
}

// TestCopyRead: ReadPacketData returns copies that stay intact while the
// producer reuses the buffers for other packets.
func TestCopyRead(t *testing.T) {
	// 64 buffers for 1000 packets: each is reused many times.
	c, prod := newCluster(t, zc.Config{QueueLen: 32, Buffers: 64})
	const total = 1000
	before := time.Now()
	sent := make(chan error, 1)
	go func() { sent <- produce(prod, 0, total) }()
	s := open(t, c, WithBurst(8))
	maps := regionMaps(t, c.File())
	kept := make([][]byte, 0, total)
	for seq := range uint64(total) {
		data, ci, err := s.ReadPacketData()
		if err != nil {
			t.Fatalf("read %d: %v", seq, err)
		}
		check(t, seq, data, ci, before, time.Now())
		if maps.holds(data) {
			t.Fatalf("packet %d: ReadPacketData returned the shared buffer, not a copy", seq)
		}
		kept = append(kept, data)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	for seq, data := range kept {
		if got, err := zc.CheckSynth(data); err != nil || got != uint64(seq) || len(data) != frameLen(uint64(seq)) {
			t.Fatalf("copy of packet %d changed afterwards: seq %d, %v", seq, got, err)
		}
	}
}

// TestBuffersGoBackPerBurst: the buffers of a burst go back to the
// producer on the read after the burst's last packet, all together.
func TestBuffersGoBackPerBurst(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 256})
	const burst = 8
	send(t, prod, 0, 3*burst)
	s := open(t, c, WithBurst(burst))
	for i := range burst {
		if _, _, err := s.ZeroCopyReadPacketData(); err != nil {
			t.Fatal(err)
		}
		if r := s.Stats().Returned; r != 0 {
			t.Fatalf("after %d reads of the first burst: %d returned, want 0 (still in use)", i+1, r)
		}
	}
	if _, _, err := s.ZeroCopyReadPacketData(); err != nil {
		t.Fatal(err)
	}
	if r := s.Stats().Returned; r != burst {
		t.Fatalf("after the first read of the second burst: %d returned, want %d", r, burst)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close gave back the second burst (its 7 unread packets too), and
	// the third is still queued: nothing else is out on loan.
	prod.Pool().Reclaim() // take back the returns
	if out := prod.Outstanding(); out != burst {
		t.Fatalf("after Close: %d buffers still lent, want %d (the third burst, still queued)", out, burst)
	}
}

// TestZeroCopyAllocs: a zero-copy read allocates nothing, across bursts.
func TestZeroCopyAllocs(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 4096})
	const runs = 2000
	send(t, prod, 0, runs+10)
	s := open(t, c, WithBurst(32))
	var err error
	allocs := testing.AllocsPerRun(runs, func() {
		if _, _, e := s.ZeroCopyReadPacketData(); e != nil {
			err = e
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Fatalf("ZeroCopyReadPacketData: %v allocations per packet, want 0", allocs)
	}
}

// TestCloseEndsBlockedRead: Close from another goroutine ends a read that
// waits on an empty queue; it and every later read say ErrClosed and
// io.EOF.
func TestCloseEndsBlockedRead(t *testing.T) {
	c, _ := newCluster(t, zc.Config{QueueLen: 64})
	s := open(t, c)
	done := make(chan error, 1)
	go func() {
		_, _, err := s.ZeroCopyReadPacketData()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it block (the result is the same if not)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Fatalf("blocked read after Close: %v, want ErrClosed and io.EOF", err)
	}
	if _, _, err := s.ReadPacketData(); !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Fatalf("read after Close: %v, want ErrClosed and io.EOF", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The consumer end is free again.
	if q, err := c.Consumer(0); err != nil {
		t.Fatalf("attach after Close: %v", err)
	} else {
		q.Close()
	}
}

// TestContextEndsBlockedRead: the source's context ending ends a blocked
// read with the context's error and io.EOF.
func TestContextEndsBlockedRead(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 64})
	ctx, cancel := context.WithCancel(context.Background())
	s := open(t, c, WithContext(ctx))
	send(t, prod, 0, 3)
	for seq := range uint64(3) {
		if data, _, err := s.ZeroCopyReadPacketData(); err != nil {
			t.Fatal(err)
		} else if got, _ := zc.CheckSynth(data); got != seq {
			t.Fatalf("packet %d: seq %d", seq, got)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := s.ZeroCopyReadPacketData()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || !errors.Is(err, io.EOF) || errors.Is(err, ErrClosed) {
		t.Fatalf("blocked read after cancel: %v, want context.Canceled and io.EOF", err)
	}
	send(t, prod, 3, 1)
	if _, _, err := s.ZeroCopyReadPacketData(); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel, a packet queued: %v, want context.Canceled still", err)
	}
}

// TestClusterClosedIsEOF: packets queued before the creator closed the
// cluster are all read, then reads end with io.EOF and zc.ErrClosed
// (not io.ErrUnexpectedEOF).
func TestClusterClosedIsEOF(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 256})
	s := open(t, c, WithBurst(4))
	send(t, prod, 0, 10)
	prod.Close()
	c.Close()
	for seq := range uint64(10) {
		data, _, err := s.ZeroCopyReadPacketData()
		if err != nil {
			t.Fatalf("read %d after the cluster closed: %v", seq, err)
		}
		if got, _ := zc.CheckSynth(data); got != seq {
			t.Fatalf("packet %d: seq %d", seq, got)
		}
	}
	_, _, err := s.ZeroCopyReadPacketData()
	if !errors.Is(err, io.EOF) || !errors.Is(err, zc.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read after the last packet of a closed cluster: %v, want io.EOF and zc.ErrClosed", err)
	}
	t.Logf("end: %v", err)
}

// TestRegionGoneIsUnexpectedEOF: a region truncated under the reader (as
// an unplugged device, a queue that went away) ends reads with
// io.ErrUnexpectedEOF and zc.ErrGone, not a SIGBUS.
func TestRegionGoneIsUnexpectedEOF(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 256})
	s := open(t, c)
	send(t, prod, 0, 5)
	if err := os.Truncate(c.File(), 4096); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 6 {
		if _, _, err = s.ZeroCopyReadPacketData(); err != nil {
			break
		}
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, zc.ErrGone) || errors.Is(err, io.EOF) {
		t.Fatalf("read from a truncated region: %v, want io.ErrUnexpectedEOF and zc.ErrGone", err)
	}
	t.Logf("end: %v", err)
}

// TestPacketSource: gopacket's PacketSource decodes every packet from a
// Source, zero copy and copying alike, and its Packets channel closes
// when the cluster closes.
func TestPacketSource(t *testing.T) {
	for _, zeroCopy := range []bool{true, false} {
		t.Run(map[bool]string{true: "zerocopy", false: "copy"}[zeroCopy], func(t *testing.T) {
			c, prod := newCluster(t, zc.Config{QueueLen: 512})
			const total = 500
			s := open(t, c, WithInterfaceIndex(0))
			send(t, prod, 0, total)
			prod.Close()
			c.Close()
			var ps *gopacket.PacketSource
			if zeroCopy {
				ps = gopacket.NewZeroCopyPacketSource(s, s.LinkType())
			} else {
				ps = gopacket.NewPacketSource(s, s.LinkType())
			}
			var n, udp int
			for {
				p, err := ps.NextPacket()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("NextPacket after %d: %v", n, err)
				}
				if l, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && p.Layer(layers.LayerTypeIPv4) != nil && len(l.Payload) > 0 {
					udp++
				}
				if p.Metadata().InterfaceIndex != 0 {
					t.Fatalf("packet %d: InterfaceIndex %d despite WithInterfaceIndex(0)", n, p.Metadata().InterfaceIndex)
				}
				n++
			}
			if n != total || udp != total {
				t.Fatalf("%d packets, %d decoded as IPv4/UDP with payload; want %d", n, udp, total)
			}
		})
	}
}

// TestPacketsChannelCloses: the Packets channel of a PacketSource on a
// Source delivers every packet and closes when the source is closed.
func TestPacketsChannelCloses(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 256})
	s := open(t, c)
	send(t, prod, 0, 100)
	ch := gopacket.NewPacketSource(s, s.LinkType()).Packets()
	for i := range 100 {
		if p := <-ch; p == nil || p.Layer(layers.LayerTypeUDP) == nil {
			t.Fatalf("packet %d: %v", i, p)
		}
	}
	s.Close()
	for p := range ch {
		t.Fatalf("packet after Close: %v", p)
	}
}

// TestOpenErrors: a missing cluster, a producer end and a bad burst are
// refused with errors that say so.
func TestOpenErrors(t *testing.T) {
	c, prod := newCluster(t, zc.Config{QueueLen: 64})
	if _, err := Open(zc.Name{Cluster: c.ID() + 1, Queue: 0}.String()); !errors.Is(err, zc.ErrNotFound) {
		t.Errorf("Open of a missing cluster: %v, want zc.ErrNotFound", err)
	}
	if _, err := Open("eth0"); !errors.Is(err, zc.ErrBadName) {
		t.Errorf("Open(eth0): %v, want zc.ErrBadName", err)
	}
	if _, err := New(prod); !errors.Is(err, zc.ErrWrongEnd) {
		t.Errorf("New(producer): %v, want zc.ErrWrongEnd", err)
	}
	if _, err := Open(zc.Name{Cluster: c.ID(), Queue: 0}.String(), WithBurst(zc.MaxBurst+1)); err == nil {
		t.Errorf("Open with burst %d: no error", zc.MaxBurst+1)
	}
	s := open(t, c)
	if _, err := Open(s.Name()); !errors.Is(err, zc.ErrBusy) {
		t.Errorf("second Open of one consumer end: %v, want zc.ErrBusy", err)
	}
}
