package vmtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc/guest"
	"github.com/zcfabric/zc/host/doorbell"
	"github.com/zcfabric/zc/host/qmp"
	"golang.org/x/sys/unix"
)

const (
	bellPkg    = "github.com/zcfabric/zc/vmtest/internal/bell"
	bellSize   = 1 << 20
	bellRounds = 15
	// Word offsets of the bell plan (vmtest/internal/bell).
	bellAck = 64
	bellGo  = 128
)

// bellResult is what the guest's bell tool reports per phase.
type bellResult struct {
	Phase      string `json:"phase"`
	Addr       string `json:"addr"`
	Peer       uint16 `json:"peer"`
	Interrupts string `json:"interrupts"`
	Driver     string `json:"driver"`
	Mask       uint64 `json:"mask"`
	Rounds     int    `json:"rounds"`
	Gone       bool   `json:"gone"`
	Error      string `json:"error"`
}

// bellSetup is a doorbell server on a fresh memfd, a guest running the bell
// tool, and the QMP connection to it.
type bellSetup struct {
	vm  *VM
	srv *doorbell.Server
	mem *os.File
	qmp *qmp.VM
	att qmp.DoorbellAttachment
}

func startBell(t *testing.T, ctx context.Context, opts ...Option) *bellSetup {
	t.Helper()
	fd, err := unix.MemfdCreate("zc-vmtest-bell", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	mem := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { mem.Close() })
	if err := mem.Truncate(bellSize); err != nil {
		t.Fatal(err)
	}
	up := make(chan uint16, 4)
	dir, err := os.MkdirTemp("", "zcbell-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, err := doorbell.Listen(doorbell.Config{
		Path: filepath.Join(dir, "bell.sock"), Memory: mem, Vectors: 2, Logf: t.Logf,
		OnPeer: func(id uint16, connected bool) {
			if connected {
				up <- id
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	opts = append([]Option{Modules(VFIOModules...), GoBinary("bell", bellPkg), Script(fmt.Sprintf("bell -rounds %d -restart", bellRounds))}, opts...)
	vm := Start(t, opts...)
	c, err := qmp.Dial(ctx, vm.QMPPath()) // Start returns once QEMU listens
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Plug once the guest runs, as an agent would into a running VM.
	if _, err := vm.Expect(ctx, BootedMarker); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	att, err := c.AttachDoorbell(ctx, qmp.DoorbellSpec{Socket: srv.Path(), Size: bellSize, Vectors: srv.Vectors(), Name: "bell"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attached %s (chardev %s, bus %q) in %v", att.DevID, att.ChardevID, att.Bus, time.Since(start).Round(time.Millisecond))
	select {
	case id := <-up:
		if id != 1 {
			t.Errorf("QEMU got peer id %d, want 1", id)
		}
	case <-ctx.Done():
		t.Fatal("QEMU never completed the server handshake")
	}
	return &bellSetup{vm: vm, srv: srv, mem: mem, qmp: c, att: att}
}

// result waits for the bell tool's result for phase.
func (s *bellSetup) result(t *testing.T, ctx context.Context, phase string) bellResult {
	t.Helper()
	var r bellResult
	if _, err := s.vm.Result(ctx, &r); err != nil {
		t.Fatal(err)
	}
	if r.Phase != phase {
		t.Fatalf("guest reported phase %q (%+v), want %q", r.Phase, r, phase)
	}
	return r
}

func (s *bellSetup) word(off int64) uint64 {
	var b [8]byte
	if _, err := s.mem.ReadAt(b[:], off); err != nil {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (s *bellSetup) setWord(t *testing.T, off int64, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := s.mem.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// guestToHost times --rounds rings from the guest: the host stores the
// round number (the guest spins on it) and waits on its host eventfd.
func (s *bellSetup) guestToHost(t *testing.T, ctx context.Context) []time.Duration {
	var lat []time.Duration
	for i := 1; i <= bellRounds; i++ {
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		s.setWord(t, bellGo, uint64(i))
		n, err := s.srv.WaitHost(ctx, 0)
		if err != nil {
			t.Fatalf("guest to host round %d: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		if n != 1 {
			t.Errorf("guest to host round %d: %d rings, want 1", i, n)
		}
	}
	return lat
}

func latencySummary(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	return fmt.Sprintf("min %v, median %v, max %v over %d rounds", s[0].Round(time.Microsecond), s[len(s)/2].Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond), len(s))
}

// TestDoorbell hot-plugs an ivshmem-doorbell device backed by a host memfd
// into a q35 guest with a virtual IOMMU. The guest (vmtest/internal/bell)
// binds it to vfio-pci and blocks in Wait; while it waits idle the QEMU
// process's CPU time is measured; the host's Notify on vector 1 wakes it
// (it reports vector mask 0x2); then wake-ups are timed both ways; then the
// agent "restarts": the server is closed and a new one recovers QEMU's
// eventfds (doorbell.Recover), and a notification and a ring cross again
// with the same device; at last the device is unplugged while the guest
// waits, which must end the wait with ErrDoorbellGone and let the unplug
// complete. Latencies and CPU time
// are logged (TCG: not KVM figures).
func TestDoorbell(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	s := startBell(t, ctx, Machine("q35"), QEMUArgs(IntelIOMMUArgs...))
	open := s.result(t, ctx, "open")
	t.Logf("guest: device %s, driver %s, peer %d", open.Addr, filepath.Base(open.Driver), open.Peer)
	if open.Interrupts != "" {
		t.Fatalf("guest cannot take interrupts: %s", open.Interrupts)
	}
	if open.Peer != 1 {
		t.Errorf("guest's IVPosition %d, want 1", open.Peer)
	}

	// Idle: the guest sleeps in Wait. QEMU's CPU time over 3 s.
	time.Sleep(500 * time.Millisecond)
	cpu0, err := s.vm.CPUTime()
	if err != nil {
		t.Fatal(err)
	}
	const idle = 3 * time.Second
	time.Sleep(idle)
	cpu1, err := s.vm.CPUTime()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU (%s) CPU time while the guest waits: %v over %v (%.2f%% of a CPU)", s.vm.AccelName(), cpu1-cpu0, idle, 100*float64(cpu1-cpu0)/float64(idle))
	if err := s.srv.Notify(1, 1); err != nil {
		t.Fatal(err)
	}
	if r := s.result(t, ctx, "idle"); r.Mask != 1<<1 {
		t.Errorf("guest woke with vector mask %#x, want 0x2 (vector 1)", r.Mask)
	}

	// Host to guest: Notify, then poll the word the guest stores on
	// waking.
	var h2g []time.Duration
	for i := 1; i <= bellRounds; i++ {
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		if err := s.srv.Notify(1, 0); err != nil {
			t.Fatal(err)
		}
		for s.word(bellAck) != uint64(i) {
			if ctx.Err() != nil {
				t.Fatalf("host to guest round %d: the guest never woke", i)
			}
			runtime.Gosched()
		}
		h2g = append(h2g, time.Since(start))
	}
	s.result(t, ctx, "h2g")
	t.Logf("host to guest wake-up (Notify to the guest's store seen by the host): %s", latencySummary(h2g))

	g2h := s.guestToHost(t, ctx)
	s.result(t, ctx, "g2h")
	t.Logf("guest to host wake-up (host store to WaitHost's return, the guest spinning): %s", latencySummary(g2h))

	// Agent restart: the server goes away (QEMU sees its connection
	// close), a new one recovers its eventfds from QEMU by eventfd-id;
	// both directions work again with the same device.
	st, err := s.srv.State()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Clients) != 1 || st.Clients[0].PID != s.vm.PID() {
		t.Fatalf("server state %+v, want one client: QEMU (pid %d)", st, s.vm.PID())
	}
	if err := s.srv.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	srv, lost, err := doorbell.Recover(doorbell.Config{Path: s.srv.Path(), Memory: s.mem, Logf: t.Logf}, st)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if len(lost) != 0 {
		t.Fatalf("recovery lost QEMU: %v", lost)
	}
	t.Logf("agent restart: recovered peers %v from QEMU's descriptors in %v", srv.Peers(), time.Since(start).Round(time.Microsecond))
	s.srv = srv
	if err := srv.Notify(1, 0); err != nil {
		t.Fatal(err)
	}
	for s.word(bellAck) != bellRounds+1 {
		if ctx.Err() != nil {
			t.Fatal("the guest never woke after the agent restart")
		}
		time.Sleep(time.Millisecond)
	}
	s.setWord(t, bellGo, bellRounds+1)
	if n, err := srv.WaitHost(ctx, 0); err != nil || n != 1 {
		t.Fatalf("guest's ring after the restart: %d, %v", n, err)
	}
	s.result(t, ctx, "restart")

	// Unplug while the guest waits.
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	if err := s.qmp.DetachDoorbell(ctx, s.att); err != nil {
		t.Fatal(err)
	}
	t.Logf("unplug while the guest waits: DEVICE_DELETED after %v", time.Since(start).Round(time.Millisecond))
	r := s.result(t, ctx, "unplug")
	if !r.Gone {
		t.Errorf("guest's Wait during the unplug returned %q, want ErrDoorbellGone", r.Error)
	}
	srv.Forget(1) // recovered: no connection tells the server
	waitPeers(t, s.srv)
	if err := s.vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitPeers waits until the server has no client left (QEMU's chardev was
// removed).
func waitPeers(t *testing.T, srv *doorbell.Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(srv.Peers()) != 0 {
		if time.Now().After(deadline) {
			t.Errorf("server still has peers %v after the unplug", srv.Peers())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDoorbellNoIOMMU plugs the same device into a pc guest, which has no
// IOMMU: vfio-pci cannot take it, so the guest learns once that it has no
// interrupts (ErrNoInterrupts, saying why) and polls; ringing the host
// still works, through BAR0 alone.
func TestDoorbellNoIOMMU(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	s := startBell(t, ctx, Machine("pc"))
	open := s.result(t, ctx, "open")
	if open.Interrupts == "" || !strings.Contains(open.Interrupts, guest.ErrNoInterrupts.Error()) {
		t.Fatalf("guest without an IOMMU reports interrupts %q, want ErrNoInterrupts", open.Interrupts)
	}
	t.Logf("guest: %s", open.Interrupts)
	g2h := s.guestToHost(t, ctx)
	s.result(t, ctx, "g2h")
	t.Logf("guest to host wake-up without an IOMMU: %s", latencySummary(g2h))
	if err := s.qmp.DetachDoorbell(ctx, s.att); err != nil {
		t.Fatal(err)
	}
	waitPeers(t, s.srv)
	if err := s.vm.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestProcCPUTime reads this process's CPU time twice around some work
// (it must not go down) and fails for a pid that does not exist.
func TestProcCPUTime(t *testing.T) {
	a, err := ProcCPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for i := range 50_000_000 {
		x ^= i
	}
	b, err := ProcCPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if b < a || a < 0 {
		t.Errorf("CPU time went from %v to %v (x=%d)", a, b, x)
	}
	if _, err := ProcCPUTime(1 << 30); err == nil {
		t.Error("ProcCPUTime of a pid that does not exist succeeded")
	}
}
