package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// scribblePkg is the hostile tool: random words over a BAR or a region
// file, a handshake hammer, a truncation.
const scribblePkg = "github.com/zcfabric/zc/vmtest/internal/scribble"

// scribbleSummary is the JSON line scribble prints at the end.
type scribbleSummary struct {
	Mode            string   `json:"mode"`
	Target          string   `json:"target"`
	Words           uint64   `json:"words"`
	HandshakeWrites uint64   `json:"handshake_writes"`
	Queues          []uint32 `json:"queues"`
	Gone            bool     `json:"gone"`
	Seed            uint64   `json:"seed"`
	Rings           uint64   `json:"rings"`
	Error           string   `json:"error"`
}

// regionState is what the fault-isolation tests read of `zchost stats
// --json`: a region's state and each queue's.
type regionState struct {
	Path    string
	State   string
	Failure string
	Queues  []struct {
		Queue          int
		State, Failure string
	}
}

type clusterStats struct {
	regionState
	VMRegions []regionState `json:"vm_regions"`
}

// hostileCase is one way the first VM attacks the agent.
type hostileCase struct {
	name string
	// vm1 runs after the guest's honest zcount on queue 0; its last
	// output line must contain ready. The guest's scribble summary is
	// its last result.
	vm1, ready string
	// truncate: the host truncates vm1's region file once ready is seen.
	truncate bool
	// n is how many packets vm2 counts: at rate/2 per second, enough to
	// outlast the attack.
	n int
	// doorbell: both VMs get ivshmem-doorbell devices served by the agent
	// (vm2 on q35 with a virtual IOMMU, so that its reader sleeps on the
	// interrupt).
	doorbell bool
	// ring: vm1's attack is only ringing its doorbell: its region stays
	// intact, and the agent's CPU during the storm is measured.
	ring bool
}

// TestHostileGuest: one zchost agent serves two VMs, each on a region of
// its own (vm1 gets queue 0, vm2 queue 1), from an endless paced
// generator. Both guests first attach honestly (the agent waits for both
// consumers). Then vm1 turns hostile while vm2 counts n packets:
//
//   - scribble: vm1 writes random words over its whole BAR (header, queue
//     table, rings, metadata) for 3 s, then hammers its handshake word
//     for 3 s.
//   - truncate: the host truncates vm1's region file to one page, as a
//     hostile QEMU holding the file could (vm1 keeps its hands off the
//     BAR: QEMU itself would take the SIGBUS).
//   - scribble-doorbell: scribble with both regions doorbell devices, and
//     vm1 then rings its doorbell for 2 s, so that the agent's relay reads
//     the garbage (wake, rings and owner words) while it answers.
//   - ring: both regions are doorbell devices (--doorbell) and vm1 rings
//     its doorbell without pause for 5 s, each ring a wake-up for the
//     agent's relay (rate-limited); the agent's CPU meanwhile is logged,
//     and vm1's region stays ok.
//
// vm2 must count n verified packets with no drop, the agent must still
// run afterwards, `zchost stats` must show vm1's region failed or corrupt
// (--vm-recover 0: the agent leaves it so; vm1 gets no fresh region)
// and vm2's ok, and SIGTERM must make the agent exit 0 with its summary,
// unplugging both VMs (each guest sees its device go).
func TestHostileGuest(t *testing.T) {
	for _, c := range []hostileCase{
		{name: "scribble", vm1: "scribble --bar -c %d --for 3s --handshake 3s --gone 120s", ready: "handshake requests", n: 24000},
		{name: "truncate", vm1: "scribble --bar -c %d --for 0 --handshake 0 --gone 120s", ready: "scribble: waiting up to", truncate: true, n: 16000},
		{name: "scribble-doorbell", vm1: "scribble --bar -c %d --for 3s --handshake 3s --ring 2s --gone 120s", ready: "scribble: rang", doorbell: true, n: 30000},
		{name: "ring", vm1: "sleep 4; scribble --bar -c %d --for 0 --handshake 0 --ring 5s --gone 120s", ready: "scribble: rang", doorbell: true, ring: true, n: 24000},
	} {
		t.Run(c.name, func(t *testing.T) { testHostileGuest(t, c) })
	}
}

func testHostileGuest(t *testing.T, c hostileCase) {
	const (
		id     = 77
		rate   = 4000 // packets per second, half to each queue
		honest = 1000 // packets vm1 reads before it turns hostile
	)
	h := newHostTools(t)
	ctx := testCtx(t, 170*time.Second)
	scribble := filepath.Join(t.TempDir(), "scribble")
	if err := os.WriteFile(scribble, BuildGo(t, scribblePkg), 0o755); err != nil {
		t.Fatal(err)
	}
	vm1 := Start(t, Name("vm1"), Timeout(3*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), GoBinary("scribble", scribblePkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"
echo "ZCRESULT $(%[3]s)"`, id, honest, fmt.Sprintf(c.vm1, id))))
	var vm2opts []Option
	if c.doorbell {
		vm2opts = []Option{Machine("q35"), QEMUArgs(IntelIOMMUArgs...), Modules(VFIOModules...)}
	}
	vm2 := Start(t, append(vm2opts, Name("vm2"), Timeout(3*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:%[1]d@1 -n %[2]d --verify --json --interval 0)"
zcguest wait -c %[1]d --gone --timeout 120s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, id, c.n)))...)
	args := []string{"run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=1000000000,rate=%d", frameLen, rate),
		"-n", "2", "-m", "0", "--backing", "shm", "--stats-interval", "1s", "--wait-consumers", "90s", "--vm-recover", "0",
		"--vm", vm1.QMPPath() + "=0", "--vm", vm2.QMPPath() + "=1"}
	if c.doorbell {
		args = append(args, "--doorbell")
	}
	agent := h.start(t, h.zchost, args...)
	alive := func(when string) {
		t.Helper()
		select {
		case <-agent.done:
			t.Fatalf("zchost run exited %s: %v", when, agent.err)
		default:
		}
	}

	var s summary
	if _, err := vm1.Result(ctx, &s); err != nil {
		t.Fatal(err)
	}
	s.check(t, "vm1 (still honest) queue 0", honest)
	var calm cpuUse
	if c.ring {
		// vm1 waits 4 s before it rings: the agent's CPU meanwhile, serving
		// both VMs, is what the storm is compared with.
		var err error
		if calm, err = measureCPU(agent.cmd.Process.Pid, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	start, err := vm1.Expect(ctx, "scribble: cluster")
	if err != nil {
		t.Fatal(err)
	}
	if c.ring {
		if _, err := vm1.Expect(ctx, "scribble: ringing"); err != nil {
			t.Fatal(err)
		}
		storm, err := measureCPU(agent.cmd.Process.Pid, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("agent CPU in 3 s: %v before vm1 rang, %v while vm1 rang its doorbell without pause", calm, storm)
		// Generous: with its eventfds in the Go runtime's poller the
		// agent spent 30% of a CPU more during the storm; the relay costs
		// it about one pass per 20 ms.
		if extra := storm.share() - calm.share(); extra > 0.15 {
			t.Errorf("vm1's doorbell storm cost the agent %.0f%% of a CPU more", 100*extra)
		}
	}
	end, err := vm1.Expect(ctx, c.ready)
	if err != nil {
		t.Fatal(err)
	}
	if c.truncate {
		path := filepath.Join(h.dir, fmt.Sprintf("zc-%d.vm1", id))
		out := h.run(t, ctx, scribble, "--truncate", path, "--size", "4096")
		var tr scribbleSummary
		if err := json.Unmarshal([]byte(out), &tr); err != nil || tr.Error != "" {
			t.Fatalf("scribble --truncate %s: %q: %v", path, out, err)
		}
		end.Time = time.Now()
	}
	t.Logf("vm1 hostile from %v to %v", start.Time.Format("15:04:05.000"), end.Time.Format("15:04:05.000"))
	alive("while vm1 was hostile")

	done, err := vm2.Result(ctx, &s)
	if err != nil {
		t.Fatal(err)
	}
	s.check(t, "vm2 queue 1", uint64(c.n))
	if s.Drops != 0 {
		t.Errorf("vm2: queue 1 dropped %d packets while vm1 was hostile; it had room", s.Drops)
	}
	if !done.Time.After(end.Time) {
		t.Errorf("vm2 finished counting at %v, before vm1's attack ended at %v: nothing was tested; raise n",
			done.Time.Format("15:04:05.000"), end.Time.Format("15:04:05.000"))
	}
	alive("after vm1's attack")

	var st clusterStats
	out := h.run(t, ctx, h.zchost, "stats", "-c", fmt.Sprint(id), "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("zchost stats --json: %v\n%s", err, out)
	}
	regions := map[string]regionState{}
	for _, r := range st.VMRegions {
		regions[filepath.Ext(r.Path)] = r
	}
	if r, ok := regions[".vm1"]; !ok {
		t.Errorf("zchost stats lists no region .vm1 (want it with State failed or corrupt); vm regions: %+v", st.VMRegions)
	} else if c.ring {
		if r.State != "ok" {
			t.Errorf("zchost stats: vm1's region %s State %q (Failure %q) after ringing, want ok", r.Path, r.State, r.Failure)
		}
	} else if r.State != "failed" && r.State != "corrupt" {
		t.Errorf("zchost stats: vm1's region %s State %q (Failure %q), want failed or corrupt", r.Path, r.State, r.Failure)
	} else {
		t.Logf("vm1's region: State %s: %s", r.State, r.Failure)
	}
	if r, ok := regions[".vm2"]; !ok {
		t.Errorf("zchost stats lists no region .vm2; vm regions: %+v", st.VMRegions)
	} else if r.State != "ok" {
		t.Errorf("zchost stats: vm2's region %s State %q (Failure %q), want ok", r.Path, r.State, r.Failure)
	}

	// SIGTERM: the agent unplugs both VMs and exits 0 by itself.
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second) // a hang bound, not a performance threshold
	_, err = agent.wait(stopCtx)
	cancel()
	if err != nil {
		t.Fatalf("zchost run after SIGTERM: %v", err)
	}
	if log := agent.stderrText(); !strings.Contains(log, "summary") {
		t.Errorf("zchost run printed no summary on SIGTERM:\n%s", log)
	}

	var sc scribbleSummary
	if _, err := vm1.Result(ctx, &sc); err != nil {
		t.Fatal(err)
	}
	hostileDone := sc.Words > 0 && sc.HandshakeWrites > 0
	switch {
	case c.truncate:
		hostileDone = true
	case c.ring:
		hostileDone = sc.Rings > 0
	case c.doorbell:
		hostileDone = hostileDone && sc.Rings > 0
	}
	if sc.Error != "" || !sc.Gone || !hostileDone {
		t.Errorf("vm1 scribble: %+v; want no error, its attack carried out, the device gone after SIGTERM", sc)
	}
	t.Logf("vm1 scribble (seed %d): %d random words, %d handshake requests, %d doorbell rings", sc.Seed, sc.Words, sc.HandshakeWrites, sc.Rings)
	for _, vm := range []*VM{vm2, vm1} {
		if err := vm.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
}
