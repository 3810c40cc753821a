package agent

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/vmm/vmmtest"
)

// fakeVMs points the agent at fake VMs for the test, and ZC_DIR at a
// fresh folder on /dev/shm.
func fakeVMs(t *testing.T, names ...string) *vmmtest.Hypervisor {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "zcagent-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	t.Setenv("ZC_DIR", d)
	h := vmmtest.New(names...)
	old := dialVM
	dialVM = h.Dial
	t.Cleanup(func() { dialVM = old })
	return h
}

func serviceConfig(t *testing.T, id uint32) Config {
	return Config{ID: id, Queues: 2, QueueLen: 64, Backing: zc.BackingShm, Sources: []string{"gen:len=64,rate=2000"},
		Exports: []Export{{VM: "/vm/a", Queues: []int{0}}, {VM: "/vm/b", Queues: []int{1}}},
		Keep:    true, Adopt: true, StateDir: t.TempDir(), Log: hclog.NewNullLogger()}
}

func mustNew(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// runFor runs a for d.
func runFor(t *testing.T, a *Agent, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKeepPluggedThenAdopt is an upgrade: the first agent stops with
// KeepPlugged, leaving regions and devices; the next adopts all three
// regions and both devices without plugging anything again, feeds them,
// and on a normal stop unplugs and removes everything.
func TestKeepPluggedThenAdopt(t *testing.T) {
	h := fakeVMs(t, "/vm/a", "/vm/b")
	cfg := serviceConfig(t, 71)
	cfg.KeepPlugged = true
	a := mustNew(t, cfg)
	runFor(t, a, 100*time.Millisecond)
	sent, drops := a.Stats()[0].Sent, a.Stats()[0].Drops
	a.Close()
	for _, vm := range []string{"/vm/a", "/vm/b"} {
		if v := h.VM(vm); v.Attaches != 1 || v.Detaches != 0 || len(v.Plugged) != 1 {
			t.Fatalf("%s after a keep-plugged stop: %+v", vm, v)
		}
	}
	for _, p := range []string{zc.RegionPath(71), zc.VMRegionPath(71, 1), zc.VMRegionPath(71, 2)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("region %s not kept: %v", p, err)
		}
	}
	if sent == 0 {
		t.Fatal("nothing sent to vm a's queue")
	}

	cfg.KeepPlugged = false
	b := mustNew(t, cfg)
	if b.Adopted() != 3 {
		t.Fatalf("adopted %d regions, want 3", b.Adopted())
	}
	st := b.State()
	for _, v := range st.VMs {
		if !v.Adopted || !v.Plugged {
			t.Fatalf("state after adoption: %+v", st)
		}
	}
	runFor(t, b, 100*time.Millisecond)
	// Nobody reads vm a's queue: it is full, and the new agent's packets
	// are dropped and counted on top of the old counts.
	if got := b.Stats()[0]; got.Sent < sent || got.Drops <= drops {
		t.Fatalf("vm a's queue: %d sent, %d dropped after the adoption, %d and %d before: its counters did not go on", got.Sent, got.Drops, sent, drops)
	}
	for _, vm := range []string{"/vm/a", "/vm/b"} {
		if v := h.VM(vm); v.Attaches != 1 {
			t.Fatalf("%s re-plugged by the adopting agent: %+v", vm, v)
		}
	}
	b.Close()
	for _, vm := range []string{"/vm/a", "/vm/b"} {
		if v := h.VM(vm); v.Detaches != 1 || len(v.Plugged) != 0 {
			t.Fatalf("%s after a normal stop: %+v", vm, v)
		}
	}
	if _, err := os.Stat(zc.VMRegionPath(71, 1)); !os.IsNotExist(err) {
		t.Fatalf("vm region left after a normal stop: %v", err)
	}
}

// TestExportWaitsForVM: a service agent whose VM is not running starts
// anyway, plugs the VM when it appears, and frees its region when it
// goes, waiting for it again.
func TestExportWaitsForVM(t *testing.T) {
	h := fakeVMs(t, "/vm/a", "/vm/b")
	h.SetGone("/vm/b", true)
	a := mustNew(t, serviceConfig(t, 72))
	defer a.Close()
	if p := a.Pending(); len(p) != 1 || p[0].VM != "/vm/b" {
		t.Fatalf("pending %+v, want /vm/b", p)
	}
	if _, err := os.Stat(zc.VMRegionPath(72, 2)); !os.IsNotExist(err) {
		t.Fatalf("region made for the absent vm: %v", err)
	}
	ctx := context.Background()
	h.SetGone("/vm/b", false)
	a.tryPlug(ctx, "/vm/b")
	if v := h.VM("/vm/b"); v.Attaches != 1 || len(a.Pending()) != 0 {
		t.Fatalf("after the vm appeared: %+v, pending %v", v, a.Pending())
	}
	h.SetGone("/vm/b", true)
	a.release(ctx, "/vm/b")
	if len(a.Pending()) != 1 || len(a.Exports()) != 1 {
		t.Fatalf("after the vm went: pending %v exports %v", a.Pending(), a.Exports())
	}
	if v := h.VM("/vm/a"); v.Attaches != 1 || len(v.Plugged) != 1 {
		t.Fatalf("the other vm was disturbed: %+v", v)
	}
}

// TestAddRemoveExportLive moves a queue into a new VM's region while the
// engine runs and back: the other VM's device is never touched.
func TestAddRemoveExportLive(t *testing.T) {
	h := fakeVMs(t, "/vm/a", "/vm/b")
	cfg := serviceConfig(t, 73)
	cfg.Exports = cfg.Exports[:1]
	a := mustNew(t, cfg)
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond)
	if err := a.AddExport(ctx, Export{VM: "/vm/b", Queues: []int{1}}); err != nil {
		t.Fatal(err)
	}
	if err := a.AddExport(ctx, Export{VM: "/vm/c", Queues: []int{1}}); err == nil {
		t.Fatal("queue 1 given to a second vm")
	}
	v := h.VM("/vm/b")
	if v.Attaches != 1 || v.Plugged[0].Path == "" {
		t.Fatalf("/vm/b: %+v", v)
	}
	// Queue 1 now feeds the new region.
	before := a.Stats()[1].Sent
	deadline := time.Now().Add(10 * time.Second)
	for a.Stats()[1].Sent == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.Stats()[1].Sent == before {
		t.Fatal("nothing reached the new vm region")
	}
	if err := a.RemoveExport(ctx, "/vm/b"); err != nil {
		t.Fatal(err)
	}
	if v := h.VM("/vm/b"); v.Detaches != 1 || len(v.Plugged) != 0 {
		t.Fatalf("/vm/b after removal: %+v", v)
	}
	if _, err := os.Stat(v.Plugged[0].Path); !os.IsNotExist(err) {
		t.Fatalf("region of the removed export left: %v", err)
	}
	if v := h.VM("/vm/a"); v.Attaches != 1 || v.Detaches != 0 {
		t.Fatalf("/vm/a disturbed: %+v", v)
	}
}
