package zc

import (
	"context"
	"sync"
	"testing"
	"time"
)

// pipeline: the engine produces into queue 0; a worker moves queue 0 to
// the outputs; consumers read the outputs.
func runWorker(t *testing.T, mode HashMode, nout int, filter func(*Packet) bool, total int) (c *Cluster, got [][]uint32) {
	c = newCluster(t, Config{ID: 20, Queues: 1 + nout, QueueLen: 64, Buffers: 256})
	must := mustQ(t)
	prod := must(c.Producer(0))
	in := must(Open("zc:20@0"))
	var outs, cons []*Queue
	for i := 1; i <= nout; i++ {
		outs = append(outs, must(c.Output(i)))
		cons = append(cons, must(Open(Name{20, uint32(i)}.String())))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := RunBalancer(ctx, []*Queue{in}, outs, mode, nil, WorkerOptions{Policy: Wait, Filter: filter}); err != nil {
			t.Error(err)
		}
	}()
	got = make([][]uint32, nout)
	for i := range cons {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			buf := make([]Packet, 16)
			for {
				n, err := cons[i].RecvBurstWait(ctx, buf)
				if err != nil {
					return
				}
				for j := range buf[:n] {
					if err := checkPkt(&buf[j], buf[j].Seq, len(buf[j].Data)); err != nil {
						t.Error(err)
						cancel()
					}
					got[i] = append(got[i], buf[j].Seq)
				}
				cons[i].Release(buf[:n]...)
			}
		}(i)
	}
	pkts := make([]Packet, 16)
	for seq := 0; seq < total; {
		n, _ := prod.Alloc(pkts[:min(16, total-seq)])
		for i := range pkts[:n] {
			fillFrame(&pkts[i], uint32(seq+i), 64+(seq+i)%200)
		}
		if n == 0 {
			c.Pool().Reclaim()
			time.Sleep(time.Millisecond)
			continue
		}
		s, err := prod.SendBurstWait(ctx, pkts[:n])
		if err != nil {
			t.Fatal(err)
		}
		seq += s
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		sum := uint64(0)
		for _, q := range cons {
			sum += q.Stats().Received
		}
		want := uint64(total)
		if mode == ModeFanout {
			want *= uint64(nout)
		}
		if filter != nil {
			want /= 2
		}
		if sum >= want {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	cancel()
	wg.Wait()
	// Every buffer came home to the engine pool.
	c.Pool().Reclaim()
	if c.Pool().Len() != 256 {
		t.Fatalf("engine pool has %d of 256 buffers back", c.Pool().Len())
	}
	return c, got
}

func TestBalancerHashExactlyOnce(t *testing.T) {
	const total = 20000
	_, got := runWorker(t, ModeIPPair, 3, nil, total)
	seen := make([]bool, total)
	for i, g := range got {
		if len(g) == 0 {
			t.Fatalf("queue %d got nothing", i)
		}
		for _, s := range g {
			if seen[s] {
				t.Fatalf("packet %d twice", s)
			}
			seen[s] = true
		}
	}
	for s, ok := range seen {
		if !ok {
			t.Fatalf("packet %d lost", s)
		}
	}
}

func TestFanoutEveryQueueEveryPacket(t *testing.T) {
	const total = 5000
	_, got := runWorker(t, ModeFanout, 3, nil, total)
	for i, g := range got {
		if len(g) != total {
			t.Fatalf("queue %d got %d of %d", i, len(g), total)
		}
		for j, s := range g {
			if s != uint32(j) {
				t.Fatalf("queue %d: packet %d is %d", i, j, s)
			}
		}
	}
}

func TestPipelineFilter(t *testing.T) {
	const total = 4000
	_, got := runWorker(t, ModeRoundRobin, 1, func(p *Packet) bool { return p.Seq%2 == 0 }, total)
	if len(got[0]) != total/2 {
		t.Fatalf("got %d, want %d", len(got[0]), total/2)
	}
	for j, s := range got[0] {
		if s != uint32(2*j) {
			t.Fatalf("packet %d is %d", j, s)
		}
	}
}

// TestBalancerDropPolicyAccounts: with nobody reading, a drop-policy
// balancer drops and counts; sent = queued + drops exactly.
func TestBalancerDropPolicyAccounts(t *testing.T) {
	c := newCluster(t, Config{ID: 21, Queues: 2, QueueLen: 16, Buffers: 128})
	must := mustQ(t)
	q0, q1 := must(c.Producer(0)), must(c.Producer(1))
	bal, err := NewBalancer([]*Queue{q0, q1}, ModeRoundRobin, nil, Drop)
	if err != nil {
		t.Fatal(err)
	}
	pkts := make([]Packet, 10)
	total := 0
	for range 10 {
		n := c.Pool().Alloc(pkts)
		for i := range pkts[:n] {
			pkts[i].Data = pkts[i].Data[:60]
		}
		bal.Push(context.Background(), pkts[:n])
		total += n
	}
	s0, s1 := q0.Stats(), q1.Stats()
	if s0.Sent+s1.Sent+s0.Drops+s1.Drops != uint64(total) || s0.Sent != 16 || s1.Sent != 16 {
		t.Fatalf("total %d: %+v %+v", total, s0, s1)
	}
	if c.Pool().Len() != 128-32 {
		t.Fatalf("pool %d free", c.Pool().Len())
	}
}

func TestBalancerNoAllocs(t *testing.T) {
	c := newCluster(t, Config{ID: 22, Queues: 2, QueueLen: 256, Buffers: 1024})
	must := mustQ(t)
	q0, q1 := must(c.Producer(0)), must(c.Producer(1))
	c0, c1 := must(c.Consumer(0)), must(c.Consumer(1))
	bal, _ := NewBalancer([]*Queue{q0, q1}, ModeIPPair, nil, Drop)
	pkts, got := make([]Packet, 32), make([]Packet, 32)
	f := frame([4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, false, nil)
	allocs := testing.AllocsPerRun(1000, func() {
		n := c.Pool().Alloc(pkts)
		for i := range pkts[:n] {
			pkts[i].Data = pkts[i].Data[:copy(pkts[i].Data, f)]
		}
		bal.Push(context.Background(), pkts[:n])
		for _, q := range []*Queue{c0, c1} {
			k, _ := q.RecvBurst(got)
			q.Release(got[:k]...)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per burst", allocs)
	}
}

// TestBalancerCopiesAcrossRegions: an output in another cluster's region
// (a VM's own trust domain) gets one counted copy; the home buffers go
// back to the home pool at once.
func TestBalancerCopiesAcrossRegions(t *testing.T) {
	home := newCluster(t, Config{ID: 23, Queues: 1, QueueLen: 64, Buffers: 128})
	vm, err := CreateCluster(Config{ID: 23, Queues: 2, QueueLen: 64, Buffers: 256, Backing: BackingShm, Path: RegionPath(23) + ".vm1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	must := mustQ(t)
	h0 := must(home.Producer(0))
	v0, v1 := must(vm.Producer(0)), must(vm.Producer(1))
	bal, err := NewBalancer([]*Queue{v0, h0, v1}, ModeRoundRobin, nil, Drop)
	if err != nil {
		t.Fatal(err)
	}
	if err := bal.From(home.Pool()); err != nil {
		t.Fatal(err)
	}
	pkts := make([]Packet, 30)
	n := home.Pool().Alloc(pkts)
	for i := range pkts[:n] {
		fill(&pkts[i], uint32(i), 100)
	}
	if err := bal.Push(context.Background(), pkts[:n]); err != nil {
		t.Fatal(err)
	}
	if bal.Copies != 20 {
		t.Fatalf("copies %d", bal.Copies)
	}
	if home.Pool().Len() != 128-10 {
		t.Fatalf("home pool %d free", home.Pool().Len())
	}
	c1 := must(vm.Consumer(1))
	got := make([]Packet, 16)
	k, _ := c1.RecvBurst(got)
	if k != 10 {
		t.Fatalf("vm queue 1 got %d", k)
	}
	for i := range got[:k] {
		if err := checkPkt(&got[i], uint32(3*i+2), 100); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInspectVMRegions(t *testing.T) {
	newCluster(t, Config{ID: 24, Queues: 1, QueueLen: 16, Buffers: 32})
	vm, err := CreateCluster(Config{ID: 24, Queues: 1, QueueLen: 16, Buffers: 32, Backing: BackingShm, Path: RegionPath(24) + ".vm1"})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	vms, err := InspectVMRegions(24)
	if err != nil || len(vms) != 1 || vms[0].Path != RegionPath(24)+".vm1" || len(vms[0].Queues) != 1 {
		t.Fatalf("%+v %v", vms, err)
	}
	vm.Close()
	if vms, _ := InspectVMRegions(24); len(vms) != 0 {
		t.Fatalf("closed region still listed: %+v", vms)
	}
}
