package vmtest

import (
	"fmt"
	"testing"
	"time"
)

// TestFabricOneAgentTwoVMs: one zchost serves two VMs at once. By default
// each VM gets a region of its own (its own trust domain) holding only the
// queue given to it, filled by one copy: round-robin over two queues, VM
// A reads queue 0, VM B queue 1, each exactly half of the frames, and
// neither region ever carried a packet of the other VM's queue.
func TestFabricOneAgentTwoVMs(t *testing.T) {
	const n = 10000
	h := newHostTools(t)
	ctx := testCtx(t, 120*time.Second)
	vms := make([]*VM, 2)
	for i := range vms {
		vms[i] = Start(t, Name(fmt.Sprintf("vm%c", 'A'+i)), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c 99 --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcguest list --json)"
echo "ZCRESULT $(zcount -i zc:99@%[1]d -n %[2]d --verify --json --interval 0)"
zcguest wait -c 99 --gone --timeout 60s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, i, n)))
	}
	zchost := h.start(t, h.zchost, "run", "-c", "99", "-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, 2*n), "-n", "2", "-m", "0",
		"--lossless", "--backing", "shm", "--stats-interval", "0", "--vm", vms[0].QMPPath()+"=0", "--vm", vms[1].QMPPath()+"=1")
	for i, vm := range vms {
		var list []struct {
			Cluster *uint32 `json:"cluster"`
			Queues  []struct{ Queue, Sent int }
		}
		if _, err := vm.Result(ctx, &list); err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].Cluster == nil || *list[0].Cluster != 99 || len(list[0].Queues) != 2 {
			t.Fatalf("vm %c sees ivshmem devices %+v, want one region of cluster 99 with 2 queues", 'A'+i, list)
		}
		// The VM's own region carries its own queue only: the other VM's
		// queue there never had a packet.
		if q := list[0].Queues[1-i]; q.Sent != 0 {
			t.Errorf("vm %c: queue %d in its region had %d packets; it belongs to the other VM", 'A'+i, 1-i, q.Sent)
		}
		var s summary
		if _, err := vm.Result(ctx, &s); err != nil {
			t.Fatal(err)
		}
		s.check(t, fmt.Sprintf("vm %c queue %d", 'A'+i, i), n)
	}
	if _, err := zchost.wait(ctx); err != nil {
		t.Errorf("zchost run: %v", err)
	}
	for _, vm := range vms {
		if err := vm.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
}

// TestFabricVMToVM: a queue whose producer is in one guest and consumer
// in another. zchost run with no source exports the cluster's own region
// to both VMs (a shared trust domain); zsend in VM A produces into
// zc:99@0 with the queue's own buffers, zcount --verify in VM B counts
// every frame.
func TestFabricVMToVM(t *testing.T) {
	const n = 10000
	h := newHostTools(t)
	ctx := testCtx(t, 120*time.Second)
	a := Start(t, Name("vmA"), GoBinary("zcguest", zcguestPkg), GoBinary("zsend", zsendPkg), Script(fmt.Sprintf(`
zcguest wait -c 99 --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zsend -o zc:99@0 -n %d -l %d --json)"
zcguest wait -c 99 --gone --timeout 60s --poll 5ms || exit 1
sleep 1`, n, frameLen)))
	b := Start(t, Name("vmB"), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c 99 --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:99@0 -n %d --verify --json --interval 0)"
zcguest wait -c 99 --gone --timeout 60s --poll 5ms || exit 1
sleep 1`, n)))
	zchost := h.start(t, h.zchost, "run", "-c", "99", "-n", "1", "--queue-buffers", "1024", "--backing", "shm",
		"--stats-interval", "0", "--vm", a.QMPPath(), "--vm", b.QMPPath())
	expectSent(t, ctx, a, "vm A", n)
	var s summary
	if _, err := b.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "vm B", n)
	if err := zchost.interrupt(ctx); err != nil {
		t.Errorf("zchost run: %v", err)
	}
	for _, vm := range []*VM{a, b} {
		if err := vm.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
}
