package vmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/agent"
	"github.com/zcfabric/zc/host/qmp"
)

// Tests of `zchost daemon` with real guests: the daemon is killed with
// SIGKILL and started again with the same file while guests read, a kill
// between object-add and device_add leaves no orphan memory backend, and a
// reload removes one VM's export and adds another while a third VM counts
// a lossless stream exactly.

// daemonRig is a zchost daemon run from a configuration file the test
// writes, with its state directory and control socket.
type daemonRig struct {
	h       *hostTools
	dir     string // state_dir (short: the control socket path is limited)
	conf    string
	control string
	d       *proc // the daemon running now
}

func newDaemonRig(t *testing.T, h *hostTools) *daemonRig {
	t.Helper()
	dir, err := os.MkdirTemp("", "zcd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &daemonRig{h: h, dir: dir, conf: filepath.Join(dir, "zchost.toml"), control: filepath.Join(dir, "zchost.sock")}
}

// head is the top of every configuration file the tests write.
func (r *daemonRig) head() string {
	return fmt.Sprintf("state_dir = %q\ncontrol = %q\nlog_level = \"info\"\n", r.dir, r.control)
}

// write replaces the configuration file.
func (r *daemonRig) write(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(r.conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start starts the daemon; with wait it returns once the daemon logged
// that it is ready (re-adoption done).
func (r *daemonRig) start(t *testing.T, ctx context.Context, wait bool) *proc {
	t.Helper()
	r.d = r.h.start(t, r.h.zchost, "daemon", "--config", r.conf)
	if wait {
		r.waitReady(t, ctx, r.d)
	}
	return r.d
}

// waitReady waits for p to log "daemon ready".
func (r *daemonRig) waitReady(t *testing.T, ctx context.Context, p *proc) {
	t.Helper()
	p.awaitLog(t, ctx, "daemon ready", "zchost daemon")
}

// kill kills the daemon with SIGKILL and waits for it to be gone.
func (r *daemonRig) kill(t *testing.T) {
	t.Helper()
	if err := r.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-r.d.done
}

// status asks the running daemon through `zchost status --json`.
func (r *daemonRig) status(t *testing.T, ctx context.Context) []agent.State {
	t.Helper()
	out := r.h.run(t, ctx, r.h.zchost, "status", "--json", "--control", r.control)
	var rep struct {
		OK       bool          `json:"ok"`
		PID      int           `json:"pid"`
		Clusters []agent.State `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.OK {
		t.Fatalf("zchost status --json: %q: %v", out, err)
	}
	if rep.PID != r.d.cmd.Process.Pid {
		t.Errorf("zchost status: pid %d, the daemon started is %d", rep.PID, r.d.cmd.Process.Pid)
	}
	return rep.Clusters
}

// reload runs `zchost reload` and returns its output and error.
func (r *daemonRig) reload(t *testing.T, ctx context.Context) (string, error) {
	t.Helper()
	p := r.h.start(t, r.h.zchost, "reload", "--control", r.control)
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second) // a hang bound
	defer cancel()
	out, err := p.wait(wctx)
	if wctx.Err() != nil && ctx.Err() == nil {
		// A hung daemon: its goroutines (SIGQUIT) go to the test log.
		r.d.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-r.d.done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("zchost reload: no reply in 90 s; the daemon's goroutines are in the log above")
	}
	return out + p.stderrText(), err
}

// readerScript is a guest that waits for cluster id, counts queue q with
// zcount in the background (a stats line every 100 ms), prints zcount's
// pid once ("ZCPID N") and its exit status if it ever ends ("ZCOUNTEXIT
// S"), and every second the pids of the running zcount processes and what
// zcguest list sees ("ZCLIST PIDS JSON"). It runs until the VM is killed.
func readerScript(id uint32, q int) string {
	return countingScript(id, fmt.Sprintf(`( sh -c 'echo "ZCPID $$"; exec zcount -i zc:%d@%d --interval 100ms'; echo "ZCOUNTEXIT $?" ) &`, id, q))
}

// countingScript waits for cluster id, starts the background reader
// line, then prints ZCLIST lines (zcount's pids and zcguest list) every
// second until the VM is killed.
func countingScript(id uint32, reader string) string {
	return fmt.Sprintf(`
zcguest wait -c %d --timeout 900s --poll 5ms || exit 1
%s
while true; do
	echo "ZCLIST $(pidof zcount | tr ' ' ,) $(zcguest list --json)"
	sleep 1
done`, id, reader)
}

// guestList is one ZCLIST line: zcount's pids and zcguest list's devices.
type guestList struct {
	at   time.Time
	pids string
	devs []struct {
		Addr    string  `json:"addr"`
		Cluster *uint32 `json:"cluster"`
	}
}

var (
	listLine  = regexp.MustCompile(`^ZCLIST (\S*) (\[.*\])$`)
	pidLine   = regexp.MustCompile(`^ZCPID (\d+)$`)
	countLine = regexp.MustCompile(`^zc:\d+@\d+  Absolute: (\d+) pkts`)
)

// lastList returns the last ZCLIST line read after since.
func lastList(t *testing.T, vm *VM, since time.Time) (guestList, bool) {
	t.Helper()
	lines := vm.Lines()
	for i := len(lines) - 1; i >= 0 && lines[i].Time.After(since); i-- {
		m := listLine.FindStringSubmatch(lines[i].Text)
		if m == nil {
			continue
		}
		l := guestList{at: lines[i].Time, pids: m[1]}
		if err := json.Unmarshal([]byte(m[2]), &l.devs); err != nil {
			t.Fatalf("guest list %q: %v", lines[i].Text, err)
		}
		return l, true
	}
	return guestList{}, false
}

// waitList waits for a ZCLIST line read after since.
func waitList(t *testing.T, ctx context.Context, vm *VM, since time.Time) guestList {
	t.Helper()
	for {
		if l, ok := lastList(t, vm, since); ok {
			return l
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no guest list after %v: %v", since.Format(time.TimeOnly), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// guestCount returns the packet count of the last zcount stats line read
// at or before until (0 when none).
func guestCount(vm *VM, until time.Time) uint64 {
	lines := vm.Lines()
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i].Time.After(until) {
			continue
		}
		if m := countLine.FindStringSubmatch(lines[i].Text); m != nil {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			return n
		}
	}
	return 0
}

// waitCountAbove waits for a zcount stats line read after since with a
// count above n and returns when the host read it.
func waitCountAbove(t *testing.T, ctx context.Context, vm *VM, since time.Time, n uint64) (time.Time, uint64) {
	t.Helper()
	for {
		for _, l := range vm.Lines() {
			if !l.Time.After(since) {
				continue
			}
			if m := countLine.FindStringSubmatch(l.Text); m != nil {
				if c, _ := strconv.ParseUint(m[1], 10, 64); c > n {
					return l.Time, c
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("guest count stays at %d after %v: %v", n, since.Format(time.TimeOnly), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// hostCount returns the last count a host zcount logged.
func hostCount(p *proc) uint64 {
	var n uint64
	for _, l := range strings.Split(p.stderrText(), "\n") {
		if m := countLine.FindStringSubmatch(l); m != nil {
			n, _ = strconv.ParseUint(m[1], 10, 64)
		}
	}
	return n
}

// checkGuestAlive fails t when the guest's zcount ended or printed an
// error, or its pid is not the one it started with.
func checkGuestAlive(t *testing.T, name string, vm *VM, pid string) {
	t.Helper()
	for _, l := range vm.Lines() {
		if strings.HasPrefix(l.Text, "ZCOUNTEXIT") || strings.HasPrefix(l.Text, "zcount:") && !strings.Contains(l.Text, "idle waits") {
			t.Errorf("vm %s: %q: the guest's zcount ended or failed", name, l.Text)
		}
	}
	if l, ok := lastList(t, vm, time.Time{}); !ok || l.pids != pid {
		t.Errorf("vm %s: zcount pids now %q, want the one started, %s", name, l.pids, pid)
	}
}

// backends lists the VM's memory backends and ivshmem devices over QMP
// (the daemon dials per operation; the test dials in between).
func backends(t *testing.T, ctx context.Context, vm *VM) (mems []string, devs []qmp.Attachment) {
	t.Helper()
	c, err := qmp.Dial(ctx, vm.QMPPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	objs, err := c.Objects(ctx, "memory-backend-file")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if strings.HasPrefix(o, "zcmem-") {
			mems = append(mems, o)
		}
	}
	if devs, err = c.Regions(ctx); err != nil {
		t.Fatal(err)
	}
	return mems, devs
}

// checkOneBackend fails t unless the VM holds exactly one zcmem backend,
// used by its one ivshmem device, and returns them.
func checkOneBackend(t *testing.T, ctx context.Context, name string, vm *VM) (string, qmp.Attachment) {
	t.Helper()
	mems, devs := backends(t, ctx, vm)
	t.Logf("vm %s: qom-list /objects memory backends %v, devices %+v", name, mems, devs)
	if len(mems) != 1 || len(devs) != 1 || devs[0].MemID != mems[0] {
		t.Errorf("vm %s: memory backends %v and devices %+v; want one backend, used by the one device", name, mems, devs)
		return "", qmp.Attachment{}
	}
	return mems[0], devs[0]
}

// inodes returns the inode of each region file of cluster id in dir.
func inodes(t *testing.T, dir string, id uint32) map[string]uint64 {
	t.Helper()
	m := map[string]uint64{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("zc-%d", id)
	for _, e := range ents {
		if n := e.Name(); n == base || strings.HasPrefix(n, base+".vm") {
			fi, err := os.Stat(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			m[n] = fi.Sys().(*syscall.Stat_t).Ino
		}
	}
	return m
}

// TestDaemonRestart: a zchost daemon exports one queue each to two VMs
// from a configuration file (a third queue is read by a host zcount).
// Killed with SIGKILL and started again with the same file, it re-adopts
// everything: both guests' zcount processes go on (same pid, no error)
// and count packets sent after the restart, each guest still sees one
// device at the same address, QEMU holds the same device and memory
// backend (no re-plug, no orphan), the region files are the same (same
// inodes), zchost status shows both VMs adopted and plugged, and the
// host zcount counts on. It logs the time from starting the daemon again
// to the first packet a guest reads, over a few restarts.
func TestDaemonRestart(t *testing.T) {
	const (
		id       = 99
		restarts = 3
	)
	h := newHostTools(t)
	ctx := testCtx(t, 20*time.Minute)
	names := []string{"A", "B"}
	vms := make([]*VM, 2)
	for i := range vms {
		vms[i] = Start(t, Name("vm"+names[i]), Timeout(20*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(readerScript(id, i)))
	}
	r := newDaemonRig(t, h)
	r.write(t, r.head()+fmt.Sprintf(`
[[cluster]]
id = %d
queues = 3
mode = "round-robin"
sources = ["gen:len=%d,count=1e9,rate=2000"]
queue_len = 1024
backing = "shm"
vm_recover = "0"

[[cluster.export]]
vm = %q
queues = [0]

[[cluster.export]]
vm = %q
queues = [1]
`, id, frameLen, vms[0].QMPPath(), vms[1].QMPPath()))
	r.start(t, ctx, true)
	hostReader := h.start(t, h.zcount, "-i", fmt.Sprintf("zc:%d@2", id), "--interval", "200ms")

	pids := make([]string, 2)
	addrs := make([]string, 2)
	mems := make([]string, 2)
	devIDs := make([]string, 2)
	for i, vm := range vms {
		_, m, err := vm.ExpectRegexp(ctx, pidLine)
		if err != nil {
			t.Fatal(err)
		}
		pids[i] = m[1]
		waitCountAbove(t, ctx, vm, time.Time{}, 0)
		l := waitList(t, ctx, vm, time.Now())
		if len(l.devs) != 1 || l.devs[0].Cluster == nil || *l.devs[0].Cluster != id {
			t.Fatalf("vm %s: zcguest list %+v, want one device of cluster %d", names[i], l.devs, id)
		}
		addrs[i] = l.devs[0].Addr
		var dev qmp.Attachment
		mems[i], dev = checkOneBackend(t, ctx, names[i], vm)
		devIDs[i] = dev.DevID
	}
	if t.Failed() {
		t.FailNow()
	}
	files := inodes(t, h.dir, id)
	if len(files) != 3 {
		t.Fatalf("region files %v, want the cluster's and two VMs'", files)
	}

	var took []time.Duration
	for round := 1; round <= restarts; round++ {
		hostBefore := hostCount(hostReader)
		r.kill(t)
		// Let the guests read what was queued: their counts stop.
		time.Sleep(1500 * time.Millisecond)
		start := time.Now()
		d := r.start(t, ctx, false)
		for i, vm := range vms {
			base := guestCount(vm, start)
			at, n := waitCountAbove(t, ctx, vm, start, base)
			took = append(took, at.Sub(start))
			t.Logf("restart %d: vm %s reads again %v after the daemon started (count %d -> %d)", round, names[i], at.Sub(start).Round(time.Millisecond), base, n)
		}
		r.waitReady(t, ctx, d)
		log := d.stderrText()
		if n := strings.Count(log, "device adopted"); n != 2 {
			t.Errorf("restart %d: the daemon adopted %d devices, want 2", round, n)
		}
		if strings.Contains(log, "exported to vm") || strings.Contains(log, "not adopted") {
			t.Errorf("restart %d: the daemon made something afresh instead of adopting it; see its log", round)
		}

		// What the guests, QEMU, the host and the daemon say now.
		since := time.Now()
		for i, vm := range vms {
			l := waitList(t, ctx, vm, since)
			if len(l.devs) != 1 || l.devs[0].Addr != addrs[i] {
				t.Errorf("restart %d: vm %s: zcguest list %+v, want the one device at %s", round, names[i], l.devs, addrs[i])
			}
			checkGuestAlive(t, names[i], vm, pids[i])
			mem, dev := checkOneBackend(t, ctx, names[i], vm)
			if mem != mems[i] || dev.DevID != devIDs[i] {
				t.Errorf("restart %d: vm %s holds backend %s device %s, want the first ones, %s and %s (no re-plug)", round, names[i], mem, dev.DevID, mems[i], devIDs[i])
			}
		}
		if now := inodes(t, h.dir, id); !mapsEqual(now, files) {
			t.Errorf("restart %d: region files %v, before %v", round, now, files)
		}
		st := r.status(t, ctx)
		if len(st) != 1 || st[0].Cluster != id || !st[0].Adopted || len(st[0].VMs) != 2 {
			t.Fatalf("restart %d: zchost status %+v, want cluster %d adopted with two VMs", round, st, id)
		}
		for i, v := range st[0].VMs {
			if v.VM != vms[i].QMPPath() || !v.Plugged || !v.Adopted || !slices.Equal(v.Queues, []int{i}) {
				t.Errorf("restart %d: zchost status vm %+v, want %s queue %d adopted and plugged", round, v, vms[i].QMPPath(), i)
			}
		}
		var stats struct {
			zc.ClusterInfo
			VMRegions []zc.ClusterInfo `json:"vm_regions"`
		}
		if out := h.run(t, ctx, h.zchost, "stats", "-c", fmt.Sprint(id), "--json"); json.Unmarshal([]byte(out), &stats) != nil {
			t.Errorf("restart %d: zchost stats --json: %q", round, out)
		}
		if stats.State != "ok" || len(stats.VMRegions) != 2 {
			t.Errorf("restart %d: zchost stats: %+v, want the cluster and two VM regions, ok", round, stats)
		}
		for i, v := range stats.VMRegions {
			if want := filepath.Join(h.dir, fmt.Sprintf("zc-%d.vm%d", id, i+1)); v.Path != want || v.State != "ok" {
				t.Errorf("restart %d: zchost stats vm region %s %s (%s), want %s ok", round, v.Path, v.State, v.Failure, want)
			}
		}
		// The host reader goes on too.
		for hostCount(hostReader) <= hostBefore {
			select {
			case <-hostReader.done:
				t.Fatalf("restart %d: the host zcount exited: %v", round, hostReader.err)
			case <-ctx.Done():
				t.Fatalf("restart %d: the host zcount stays at %d", round, hostBefore)
			case <-time.After(100 * time.Millisecond):
			}
		}
		if t.Failed() {
			break
		}
	}
	if len(took) > 0 {
		slices.Sort(took)
		t.Logf("restart to first guest packet: median %v over %d reads (%d restarts x 2 VMs; min %v, max %v; %s, zcount stats every 100 ms)",
			took[len(took)/2].Round(time.Millisecond), len(took), len(took)/2, took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), vms[0].AccelName())
	}
	select {
	case <-hostReader.done:
		t.Errorf("the host zcount exited: %v\n%s", hostReader.err, hostReader.stderrText())
	default:
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestDaemonOrphanMemdev: the daemon is killed between object-add and
// device_add (the test hook ZC_TEST_PAUSE_AFTER_OBJECT_ADD in host/qmp
// pauses it there), leaving a memory backend no device uses. Started
// again without the hook, it removes that backend and plugs the region:
// QEMU then holds one zcmem backend, the one the device uses, and the
// guest sees one device and counts packets.
func TestDaemonOrphanMemdev(t *testing.T) {
	const id = 98
	h := newHostTools(t)
	ctx := testCtx(t, 10*time.Minute)
	vm := Start(t, Name("vm"), Timeout(10*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(readerScript(id, 0)))
	r := newDaemonRig(t, h)
	r.write(t, r.head()+fmt.Sprintf(`
[[cluster]]
id = %d
queues = 1
sources = ["gen:len=%d,count=1e9,rate=2000"]
queue_len = 1024
backing = "shm"
vm_recover = "0"

[[cluster.export]]
vm = %q
`, id, frameLen, vm.QMPPath()))

	// The guest runs (its script waits for the device) before the kill.
	if _, err := vm.Expect(ctx, BootedMarker); err != nil {
		t.Fatal(err)
	}
	pause := filepath.Join(r.dir, "paused")
	t.Setenv("ZC_TEST_PAUSE_AFTER_OBJECT_ADD", pause)
	d := r.start(t, ctx, false)
	os.Unsetenv("ZC_TEST_PAUSE_AFTER_OBJECT_ADD")
	for {
		if _, err := os.Stat(pause); err == nil {
			break
		}
		select {
		case <-d.done:
			t.Fatalf("zchost daemon exited before the pause: %v", d.err)
		case <-ctx.Done():
			t.Fatalf("the daemon never paused after object-add: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.kill(t)
	mems, devs := backends(t, ctx, vm)
	t.Logf("after the kill: memory backends %v, devices %+v", mems, devs)
	if len(mems) != 1 || len(devs) != 0 {
		t.Fatalf("after a kill between object-add and device_add: backends %v, devices %+v; want one orphan backend", mems, devs)
	}
	orphan := mems[0]

	d = r.start(t, ctx, true)
	if !strings.Contains(d.stderrText(), orphan) {
		t.Errorf("the daemon's log does not name the orphan backend %s it should have removed", orphan)
	}
	mem, _ := checkOneBackend(t, ctx, "", vm)
	if mem == orphan {
		t.Errorf("the orphan backend %s is still there", orphan)
	}
	_, m, err := vm.ExpectRegexp(ctx, pidLine)
	if err != nil {
		t.Fatal(err)
	}
	waitCountAbove(t, ctx, vm, time.Time{}, 0)
	l := waitList(t, ctx, vm, time.Now())
	if len(l.devs) != 1 || l.devs[0].Cluster == nil || *l.devs[0].Cluster != id {
		t.Errorf("the guest sees %+v, want one device of cluster %d", l.devs, id)
	}
	checkGuestAlive(t, "", vm, m[1])
}

// daemonStats is `zchost stats -c ID --json`: the cluster's region and
// the VMs' own.
type daemonStats struct {
	zc.ClusterInfo
	VMRegions []zc.ClusterInfo `json:"vm_regions"`
}

// queueStats returns the daemon's record of queue q in region path.
func (s daemonStats) queueStats(path string, q int) (zc.QueueStats, bool) {
	for _, r := range append([]zc.ClusterInfo{s.ClusterInfo}, s.VMRegions...) {
		if r.Path != path {
			continue
		}
		for _, qs := range r.Queues {
			if qs.Queue == q {
				return qs, true
			}
		}
	}
	return zc.QueueStats{}, false
}

// exactScript is VM A of TestDaemonReload: it waits for cluster id and
// reads queue 0 with zcount --verify -n n in the background (a stats line
// every 200 ms, its pid once as "ZCPID N", then "ZCDONE STATUS SUMMARY"
// when it ends), printing ZCLIST lines every second as readerScript does.
func exactScript(id uint32, n uint64) string {
	return countingScript(id, fmt.Sprintf(`( sh -c 'echo "ZCPID $$"; exec zcount -i zc:%d@0 -n %d --verify --json --interval 200ms >/tmp/sum'; echo "ZCDONE $? $(cat /tmp/sum)" ) &`, id, n))
}

var doneLine = regexp.MustCompile(`^ZCDONE (\d+) (\{.*\})$`)

// TestDaemonReload: one lossless cluster of three queues, fed round-robin
// by a generator of a fixed count, 3N packets: zc's Balancer deals packet
// i to output i mod 3 (its round-robin counter runs across bursts), so
// each queue gets exactly N. VM A reads queue 0 with zcount --verify -n
// N, VM B queue 1, each in a region of its own; queue 2 is not exported
// and VM C waits for a device. While the stream runs, the file is
// rewritten (B's export removed, C's added on queue 2) and `zchost
// reload` applies it: B's device is unplugged (its zcount sees the queue
// go, its guest no device, QEMU no backend), C's is plugged and C counts,
// queue 1 comes back to the cluster's own region, and A's device is not
// touched: the same zcount process counts on and ends with exactly N
// packets, all verified and in order, none dropped, and the daemon's
// record of A's queue says N sent, none dropped, none left. A second
// rewrite changing the cluster's queues is refused, naming
// file:line:key, and nothing changes.
//
// Lossless means the generator waits for room in a full queue, every
// other queue with it: a queue nobody reads would stop A's stream too.
// So the queues while they are in the cluster's own region are read by
// host zcount processes on zc:ID@1 and zc:ID@2 (the cluster's own queue
// is attached as long as the daemon runs; it is fed only while no VM
// region holds that queue): @2 before the reload (then C holds queue 2),
// @1 after it (B's queue back in the cluster's region). The @1 reader
// counting after the reload is how the test sees that queue come back.
func TestDaemonReload(t *testing.T) {
	const (
		id = 97
		// n frames for each queue; at 2000 frames/s the stream lasts
		// about two minutes after the guests start reading, through the
		// reload. Each queue waits for its reader (lossless), so a slow
		// boot delays the stream instead of shortening it.
		n = 80000
	)
	h := newHostTools(t)
	ctx := testCtx(t, 20*time.Minute)
	vmA := Start(t, Name("vmA"), Timeout(20*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(exactScript(id, n)))
	vmB := Start(t, Name("vmB"), Timeout(20*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(readerScript(id, 1)))
	vmC := Start(t, Name("vmC"), Timeout(20*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(readerScript(id, 2)))
	r := newDaemonRig(t, h)
	cluster := func(queues int) string {
		return fmt.Sprintf(`
[[cluster]]
id = %d
queues = %d
mode = "round-robin"
lossless = true
sources = ["gen:len=%d,count=%d,rate=2000"]
queue_len = 1024
backing = "shm"
vm_recover = "0"
`, id, queues, frameLen, 3*n)
	}
	export := func(vm *VM, q int) string {
		return fmt.Sprintf("\n[[cluster.export]]\nvm = %q\nqueues = [%d]\n", vm.QMPPath(), q)
	}
	r.write(t, r.head()+cluster(3)+export(vmA, 0)+export(vmB, 1))
	r.start(t, ctx, true)
	host1 := h.start(t, h.zcount, "-i", fmt.Sprintf("zc:%d@1", id), "--interval", "200ms")
	host2 := h.start(t, h.zcount, "-i", fmt.Sprintf("zc:%d@2", id), "--interval", "200ms")

	var pidA, pidB string
	for _, v := range []struct {
		vm  *VM
		pid *string
	}{{vmA, &pidA}, {vmB, &pidB}} {
		_, m, err := v.vm.ExpectRegexp(ctx, pidLine)
		if err != nil {
			t.Fatal(err)
		}
		*v.pid = m[1]
		waitCountAbove(t, ctx, v.vm, time.Time{}, 0)
	}
	memA, devA := checkOneBackend(t, ctx, "A", vmA)
	addrA := waitList(t, ctx, vmA, time.Now()).devs[0].Addr
	if mems, devs := backends(t, ctx, vmC); len(mems) != 0 || len(devs) != 0 {
		t.Errorf("vm C holds backends %v, devices %+v before it is exported", mems, devs)
	}
	for hostCount(host2) == 0 {
		select {
		case <-host2.done:
			t.Fatalf("the host zcount on queue 2 exited: %v", host2.err)
		case <-ctx.Done():
			t.Fatalf("the host zcount on queue 2 counts nothing: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	filesBefore := inodes(t, h.dir, id)

	// Remove B's export and add C's on queue 2, while A's stream runs.
	r.write(t, r.head()+cluster(3)+export(vmA, 0)+export(vmC, 2))
	before := time.Now()
	countBefore := guestCount(vmA, before)
	if countBefore >= n || slices.ContainsFunc(vmA.Lines(), func(l Line) bool { return doneLine.MatchString(l.Text) }) {
		t.Fatalf("vm A read all %d frames before the reload: raise the count so that the stream runs through it", n)
	}
	if c := hostCount(host1); c != 0 {
		t.Errorf("the host zcount on queue 1 counted %d while vm B's region held the queue, want 0", c)
	}
	out, err := r.reload(t, ctx)
	if err != nil {
		t.Fatalf("zchost reload: %v\n%s", err, out)
	}
	reloaded := time.Now()
	t.Logf("zchost reload (%v; vm A had read %d of %d): %s", reloaded.Sub(before).Round(time.Millisecond), countBefore, n, strings.TrimSpace(out))
	if !strings.Contains(out, vmB.QMPPath()+" unexported") || !strings.Contains(out, vmC.QMPPath()+" exported") {
		t.Errorf("zchost reload says %q, want vm B unexported and vm C exported", out)
	}

	// B: unplugged.
	if _, err := vmB.Expect(ctx, "ZCOUNTEXIT"); err != nil {
		t.Errorf("vm B's zcount did not end when its queue was unplugged: %v", err)
	}
	if l := waitList(t, ctx, vmB, time.Now()); len(l.devs) != 0 {
		t.Errorf("vm B sees %+v after the reload, want no device", l.devs)
	}
	if mems, devs := backends(t, ctx, vmB); len(mems) != 0 || len(devs) != 0 {
		t.Errorf("vm B holds backends %v, devices %+v after the reload, want none", mems, devs)
	}
	// C: plugged, counting.
	_, m, err := vmC.ExpectRegexp(ctx, pidLine)
	if err != nil {
		t.Fatal(err)
	}
	pidC := m[1]
	waitCountAbove(t, ctx, vmC, time.Time{}, 0)
	if l := waitList(t, ctx, vmC, time.Now()); len(l.devs) != 1 || l.devs[0].Cluster == nil || *l.devs[0].Cluster != id {
		t.Errorf("vm C sees %+v after the reload, want one device of cluster %d", l.devs, id)
	}
	checkOneBackend(t, ctx, "C", vmC)
	checkGuestAlive(t, "C", vmC, pidC)
	// Queue 1 is back in the cluster's own region.
	for hostCount(host1) == 0 {
		select {
		case <-host1.done:
			t.Fatalf("the host zcount on queue 1 exited: %v", host1.err)
		case <-ctx.Done():
			t.Fatalf("queue 1 did not come back to the cluster's region (its host zcount counts nothing): %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if log := r.d.stderrText(); strings.Contains(log, "not routed back") || strings.Contains(log, "did not take the change") {
		t.Errorf("the daemon could not move a queue between regions; see its log")
	}

	// checkA checks A's device, backend and zcount process, and that the
	// daemon exports to A and C only.
	doneA := func() bool {
		return slices.ContainsFunc(vmA.Lines(), func(l Line) bool { return doneLine.MatchString(l.Text) })
	}
	checkA := func(when string) {
		t.Helper()
		if !doneA() {
			checkGuestAlive(t, "A", vmA, pidA)
		}
		if l := waitList(t, ctx, vmA, time.Now()); len(l.devs) != 1 || l.devs[0].Addr != addrA {
			t.Errorf("%s: vm A sees %+v, want its one device at %s", when, l.devs, addrA)
		}
		if mem, dev := checkOneBackend(t, ctx, "A", vmA); mem != memA || dev.DevID != devA.DevID {
			t.Errorf("%s: vm A holds %s/%s, want %s/%s (untouched)", when, mem, dev.DevID, memA, devA.DevID)
		}
		st := r.status(t, ctx)
		var got []string
		if len(st) == 1 {
			for _, v := range st[0].VMs {
				if !v.Plugged {
					t.Errorf("%s: zchost status: vm %s not plugged", when, v.VM)
				}
				got = append(got, fmt.Sprintf("%s%v", v.VM, v.Queues))
			}
		}
		want := []string{fmt.Sprintf("%s[0]", vmA.QMPPath()), fmt.Sprintf("%s[2]", vmC.QMPPath())}
		slices.Sort(got)
		slices.Sort(want)
		if len(st) != 1 || !slices.Equal(got, want) {
			t.Errorf("%s: zchost status %+v, want vms A on queue 0 and C on queue 2, plugged", when, st)
		}
	}
	// A counts on after the reload, in the same process.
	if doneA() {
		t.Fatalf("vm A read all %d frames during the reload: raise the count so that the stream runs through it", n)
	}
	waitCountAbove(t, ctx, vmA, reloaded, guestCount(vmA, reloaded))
	checkA("after the reload")
	files := inodes(t, h.dir, id)
	if len(files) != 3 || files[fmt.Sprintf("zc-%d.vm1", id)] != filesBefore[fmt.Sprintf("zc-%d.vm1", id)] {
		t.Errorf("region files %v after the reload (before %v): want the cluster's, A's as it was, C's", files, filesBefore)
	}

	// A changed cluster definition is refused.
	text := r.head() + cluster(4) + export(vmA, 0) + export(vmC, 2)
	r.write(t, text)
	line := 1 + strings.Count(text[:strings.Index(text, "queues = 4")], "\n")
	out, err = r.reload(t, ctx)
	if err == nil {
		t.Fatalf("zchost reload of a changed queue count succeeded: %s", out)
	}
	want := fmt.Sprintf("%s:%d: cluster[0].queues:", r.conf, line)
	t.Logf("zchost reload refused: %s", strings.TrimSpace(out))
	if !strings.Contains(out, want) {
		t.Errorf("zchost reload says %q, want it to name %q", out, want)
	}
	checkA("after the refused reload")
	if now := inodes(t, h.dir, id); !mapsEqual(now, files) {
		t.Errorf("region files %v after the refused reload, before %v", now, files)
	}

	// A's count is exact.
	_, m, err = vmA.ExpectRegexp(ctx, doneLine)
	if err != nil {
		t.Fatal(err)
	}
	var s summary
	if err := json.Unmarshal([]byte(m[2]), &s); err != nil {
		t.Fatalf("vm A's zcount summary %q: %v", m[2], err)
	}
	if m[1] != "0" || s.Drops != 0 {
		t.Errorf("vm A's zcount exited %s with %d queue drops, want 0 and none", m[1], s.Drops)
	}
	s.check(t, "vm A", n)
	// The daemon's record (zchost stats takes the producer counters from
	// the status file, rewritten within a second of a change): exactly n sent, none
	// dropped, none left. Sent only grows: wait for it to reach n.
	pathA := filepath.Join(h.dir, fmt.Sprintf("zc-%d.vm1", id))
	for {
		var stats daemonStats
		if out := h.run(t, ctx, h.zchost, "stats", "-c", fmt.Sprint(id), "--json"); json.Unmarshal([]byte(out), &stats) != nil {
			t.Fatalf("zchost stats --json: %q", out)
		}
		qs, ok := stats.queueStats(pathA, 0)
		if !ok {
			t.Fatalf("zchost stats: no queue 0 in vm A's region %s: %+v", pathA, stats)
		}
		if qs.Sent >= n {
			if qs.Sent != n || qs.Drops != 0 || qs.Depth != 0 || qs.Received != n {
				t.Errorf("zchost stats: vm A's queue 0 in %s: %+v, want %d sent and received, none dropped, none left", pathA, qs, n)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("zchost stats: vm A's queue 0 stays at %d sent: %v", qs.Sent, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	for _, p := range []*proc{host1, host2} {
		select {
		case <-p.done:
			t.Errorf("a host zcount exited: %v\n%s", p.err, p.stderrText())
		default:
		}
	}
}
