package zc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// adoptCfg is the cluster TestAdoptCluster's child creates and the test
// adopts.
var adoptCfg = Config{ID: 43, Queues: 1, QueueLen: 256, Buffers: 600, Backing: BackingShm}

// helperCreate is the child that creates adoptCfg, sends packets
// 0..count-1 into queue 0 (they stay queued: nobody reads yet), says
// ready and waits to be killed.
func helperCreate(count uint64) (helperResult, error) {
	c, err := CreateCluster(adoptCfg)
	if err != nil {
		return helperResult{}, err
	}
	p, err := c.Producer(0)
	if err != nil {
		return helperResult{}, err
	}
	pkts := make([]Packet, 1)
	for seq := range uint32(count) {
		if n, _ := p.Alloc(pkts); n != 1 {
			return helperResult{}, fmt.Errorf("no buffer for packet %d", seq)
		}
		fillSeq(&pkts[0], seq)
		if n, err := p.SendBurst(pkts); n != 1 {
			return helperResult{}, fmt.Errorf("send packet %d: %v", seq, err)
		}
	}
	fmt.Println("ready")
	time.Sleep(helperDeadline)
	return helperResult{}, errors.New("not killed")
}

// TestAdoptCluster kills the creator of a cluster while a consumer holds
// some of its packets and others wait in the ring, then adopts the
// region in another process (this one): the consumer never notices, gets
// every queued packet, then every packet the new producer sends, in
// order, byte for byte; the buffers it held when the creator died are
// waited for, not reused, and every buffer is accounted for at the end.
func TestAdoptCluster(t *testing.T) {
	shmDir(t)
	const queued, held, more = 200, 50, 5000
	ch := startChild(t, "create", []string{fmt.Sprintf("%s=%d", envCount, queued)})
	if l := ch.line(t, time.Minute); l != "ready" {
		t.Fatalf("helper said %q\nstderr:\n%s", l, ch.stderr)
	}
	cons := mustQ(t)(Open("zc:43@0"))
	hold := make([]Packet, held)
	if n, err := cons.RecvBurst(hold); n != held || err != nil {
		t.Fatalf("received %d (%v), want %d", n, err, held)
	}

	if _, err := AdoptCluster(adoptCfg); !errors.Is(err, ErrExists) {
		t.Fatalf("adopt while the creator lives: %v, want ErrExists", err)
	}
	ch.cmd.Process.Signal(syscall.SIGKILL)
	<-ch.done

	bad := adoptCfg
	bad.QueueLen = 512
	if _, err := AdoptCluster(bad); !errors.Is(err, ErrBadRegion) {
		t.Fatalf("adopt with another geometry: %v, want ErrBadRegion", err)
	}
	c, err := AdoptCluster(adoptCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Adopted() || c.Generation() != cons.r.l.Generation {
		t.Fatalf("adopted %v generation %d, want the consumer's %d", c.Adopted(), c.Generation(), cons.r.l.Generation)
	}
	prod := mustQ(t)(c.Producer(0))
	if got := prod.Outstanding(); got != queued-held {
		t.Fatalf("producer took over %d loans from the ring, want %d", got, queued-held)
	}
	if free := c.Pool().Len(); free != c.Pool().Cap()-(queued-held) {
		t.Fatalf("pool has %d free of %d, want the %d in the ring taken out", free, c.Pool().Cap(), queued-held)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		// The consumer goes on as if nothing happened: gives back what it
		// held, then reads the rest and what the new producer sends.
		for i := range hold {
			if s, err := checkSeq(&hold[i]); err != nil || s != uint32(i) {
				got <- fmt.Errorf("held packet %d: seq %d: %v", i, s, err)
				return
			}
		}
		if err := cons.Release(hold...); err != nil {
			got <- err
			return
		}
		pkts := make([]Packet, 32)
		for want := uint32(held); want < queued+more; {
			n, err := cons.RecvBurstWait(ctx, pkts)
			if err != nil {
				got <- fmt.Errorf("at packet %d: %w", want, err)
				return
			}
			for i := range pkts[:n] {
				s, err := checkSeq(&pkts[i])
				if err == nil && s != want {
					err = fmt.Errorf("got packet %d, want %d", s, want)
				}
				if err != nil {
					got <- err
					return
				}
				want++
			}
			cons.Release(pkts[:n]...)
		}
		got <- nil
	}()
	if left := c.Settle(ctx, 30*time.Second); left != 0 {
		t.Fatalf("%d loans of the dead creator never came back", left)
	}
	produceSeq(ctx, t, prod, queued, more, true)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	c.Pool().Reclaim()
	st := prod.Stats()
	if st.BadReturns != 0 || st.Bad != 0 || st.Drops != 0 {
		t.Fatalf("bad returns %d, bad %d, drops %d", st.BadReturns, st.Bad, st.Drops)
	}
	if st.Sent != queued+more || prod.Outstanding() != 0 || c.Pool().Len() != c.Pool().Cap() {
		t.Fatalf("sent %d (want %d), outstanding %d, pool %d free of %d", st.Sent, queued+more, prod.Outstanding(), c.Pool().Len(), c.Pool().Cap())
	}
	if err := cons.Err(); err != nil {
		t.Fatalf("consumer: %v", err)
	}
}

// TestAdoptClusterRefuses: no region, and a region its creator closed.
func TestAdoptClusterRefuses(t *testing.T) {
	shmDir(t)
	if _, err := AdoptCluster(adoptCfg); !errors.Is(err, ErrNotFound) {
		t.Fatalf("adopt with no region: %v, want ErrNotFound", err)
	}
	c, err := CreateCluster(adoptCfg)
	if err != nil {
		t.Fatal(err)
	}
	// A region its creator closed (the file left behind, as a copy).
	ivshmem.MarkClosed(c.Bytes())
	closed, err := os.ReadFile(c.Path())
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(RegionPath(adoptCfg.ID), closed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := AdoptCluster(adoptCfg); !errors.Is(err, ErrClosed) {
		t.Fatalf("adopt a closed region: %v, want ErrClosed", err)
	}
}

// TestDropGuestClaims: a consumer end a guest holds (its device since
// unplugged) is freed for the next reader, which attaches without force;
// host holders are left alone.
func TestDropGuestClaims(t *testing.T) {
	c := newCluster(t, Config{ID: 44, Queues: 2, QueueLen: 64})
	guest := ivshmem.Owner{Side: ivshmem.SideGuest, PID: 4242}
	if _, err := c.r.l.Claim(c.r.b, 0, ivshmem.EndConsumer, guest, nil); err != nil {
		t.Fatal(err)
	}
	host := mustQ(t)(c.Consumer(1))
	if _, err := Open("zc:44@0"); !errors.Is(err, ivshmem.ErrBusy) {
		t.Fatalf("open a queue a guest holds: %v, want busy", err)
	}
	if n := c.DropGuestClaims(); n != 1 {
		t.Fatalf("dropped %d claims, want 1", n)
	}
	mustQ(t)(Open("zc:44@0"))
	if o := c.r.l.QueueOwner(c.r.b, 1, ivshmem.EndConsumer); o.Side != ivshmem.SideHost || host.Err() != nil {
		t.Fatalf("the host consumer's claim was touched: %+v", o)
	}
}

// TestAdoptTruncatedRegion: the region file truncated between the
// adoption and the producer's attach (its data ring is read to take the
// loans back): that queue fails, the process goes on.
func TestAdoptTruncatedRegion(t *testing.T) {
	shmDir(t)
	c1, err := CreateCluster(adoptCfg)
	if err != nil {
		t.Fatal(err)
	}
	p1, err := c1.Producer(0)
	if err != nil {
		t.Fatal(err)
	}
	pkts := make([]Packet, 10)
	n := p1.Pool().Alloc(pkts)
	if k, err := p1.SendBurst(pkts[:n]); k != n || err != nil {
		t.Fatalf("send %d of %d: %v", k, n, err)
	}
	p1.Close()
	c1.Leave() // as if killed: left for a successor
	c2, err := AdoptCluster(adoptCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := os.Truncate(c2.Path(), 4096); err != nil {
		t.Fatal(err)
	}
	q, err := c2.Producer(0)
	if err == nil {
		defer q.Close()
		err = q.Err()
	}
	if !errors.Is(err, ErrFault) {
		t.Fatalf("producer of a truncated adopted region: %v, want ErrFault", err)
	}
}
