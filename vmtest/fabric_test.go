package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/qmp"
)

// End-to-end tests of the fabric: the real zchost on the host hot-plugs a
// cluster into a running guest, the real examples (zcount, zsend) run on
// either side. Every binary is built once by BuildGo; the host runs the
// very bytes the initramfs carries.
const (
	zchostPkg = "github.com/zcfabric/zc/cmd/zchost"
	zcountPkg = "github.com/zcfabric/zc/examples/zcount"
	zsendPkg  = "github.com/zcfabric/zc/examples/zsend"
	frameLen  = 64
)

// summary is zcount's --json output.
type summary struct {
	Queue      string `json:"queue"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	Drops      uint64 `json:"drops"`
	Verified   uint64 `json:"verified"`
	Corrupt    uint64 `json:"corrupt"`
	OutOfOrder uint64 `json:"out_of_order"`
	Error      string `json:"error"`
}

func (s summary) check(t *testing.T, who string, n uint64) {
	t.Helper()
	if s.Packets != n || s.Bytes != n*frameLen || s.Verified != n || s.Corrupt != 0 || s.OutOfOrder != 0 || s.Error != "" {
		t.Errorf("%s: zcount %+v, want %d packets, %d bytes, all verified, no errors", who, s, n, n*frameLen)
	}
}

// hostTools are the host-side binaries and the region directory they share.
type hostTools struct {
	zchost, zcount, zsend string
	zcountSum             string // sha256 of the zcount file, hex
	dir                   string // ZC_DIR
}

func newHostTools(t *testing.T) *hostTools {
	t.Helper()
	bin := t.TempDir()
	h := &hostTools{}
	for _, b := range []struct {
		dst *string
		pkg string
	}{{&h.zchost, zchostPkg}, {&h.zcount, zcountPkg}, {&h.zsend, zsendPkg}} {
		*b.dst = filepath.Join(bin, filepath.Base(b.pkg))
		if err := os.WriteFile(*b.dst, BuildGo(t, b.pkg), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.ReadFile(h.zcount)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(f)
	h.zcountSum = hex.EncodeToString(sum[:])
	base := "/dev/shm"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = ""
	}
	if h.dir, err = os.MkdirTemp(base, "zc-vmtest-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(h.dir) })
	return h
}

// proc is a host child process: stderr goes to the test log, stdout is
// kept.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer // a copy of what went to the test log
	done   chan struct{}
	err    error
}

func (h *hostTools) start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "ZC_DIR="+h.dir, "ZC_SYSFS="+filepath.Join(h.dir, "nosys"))
	p.cmd.Stdout = lockedWriter{&p.mu, &p.stdout}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(bin)
	t.Logf("host: %s %s", name, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("host %s: %s", name, sc.Text())
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// wait waits for the process to exit and returns its error and stdout.
func (p *proc) wait(ctx context.Context) (string, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.done
		return "", fmt.Errorf("%s: %w", p.cmd.Path, ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String(), p.err
}

// stop sends SIGTERM and waits for the process to exit by itself (a
// minute's hang bound); an exit with an error or a hang fails the test.
func (p *proc) stop(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 60*time.Second) // a hang bound, not a performance threshold
	defer cancel()
	if _, err := p.wait(stopCtx); err != nil {
		t.Fatalf("%s after SIGTERM: %v", filepath.Base(p.cmd.Path), err)
	}
}

// expectGone reads the next result of the guest's reader and checks that
// it ended with "the queue went away" (its queue was unplugged under it).
func expectGone(t *testing.T, ctx context.Context, vm *VM, who string) {
	t.Helper()
	var gone summary
	if _, err := vm.Result(ctx, &gone); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(gone.Error, "went away") {
		t.Errorf("%s: %+v, want the error \"the queue went away\"", who, gone)
	}
}

// stderrText returns what the process wrote to stderr so far.
// awaitLog waits until p has logged text on stderr; it fails the test if
// p exits first or ctx ends (what names p in the message).
func (p *proc) awaitLog(t *testing.T, ctx context.Context, text, what string) {
	t.Helper()
	for !strings.Contains(p.stderrText(), text) {
		select {
		case <-ctx.Done():
			t.Fatalf("%s never logged %q: %v\n%s", what, text, ctx.Err(), p.stderrText())
		case <-p.done:
			t.Fatalf("%s exited before it logged %q: %v\n%s", what, text, p.err, p.stderrText())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// interrupt stops a serving zchost the way a user does (it detaches its
// VMs on the way out) and waits for it.
func (p *proc) interrupt(ctx context.Context) error {
	p.cmd.Process.Signal(syscall.SIGINT)
	_, err := p.wait(ctx)
	return err
}

// run runs a host tool to completion and returns its stdout.
func (h *hostTools) run(t *testing.T, ctx context.Context, bin string, args ...string) string {
	t.Helper()
	out, err := h.start(t, bin, args...).wait(ctx)
	if err != nil {
		t.Fatalf("%s %s: %v", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return out
}

// shaLine prints the sha256 of the guest's /bin/zcount as a result.
const shaLine = `echo "ZCRESULT {\"sha256\":\"$(sha256sum /bin/zcount | cut -d' ' -f1)\"}"`

func (h *hostTools) checkSameBinary(t *testing.T, ctx context.Context, vm *VM) {
	t.Helper()
	var r struct {
		SHA256 string `json:"sha256"`
	}
	if _, err := vm.Result(ctx, &r); err != nil {
		t.Fatal(err)
	}
	if r.SHA256 != h.zcountSum {
		t.Errorf("guest /bin/zcount sha256 %s, host's zcount %s: not the same binary", r.SHA256, h.zcountSum)
	}
}

// TestFabricHostToGuest: zchost run -i gen --lossless --vm on the host,
// zcount --verify in the guest counts exactly N frames with the right bytes
// and sequence, on pc and q35; the guest's zcount is byte for byte the
// host's.
func TestFabricHostToGuest(t *testing.T) {
	for _, machine := range []string{"pc", "q35"} {
		t.Run(machine, func(t *testing.T) {
			const n = 20000
			h := newHostTools(t)
			vm := Start(t, Machine(machine), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`%s
zcguest wait -c 99 --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcount -i zc:99@0 -n %d --verify --json --interval 0)"
zcguest wait -c 99 --gone --timeout 60s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, shaLine, n)))
			ctx := testCtx(t, 100*time.Second)
			h.checkSameBinary(t, ctx, vm)
			zchost := h.start(t, h.zchost, "run", "-c", "99", "-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, n), "-n", "1",
				"--lossless", "--backing", "shm", "--stats-interval", "0", "--vm", vm.QMPPath())
			var s summary
			if _, err := vm.Result(ctx, &s); err != nil {
				t.Fatal(err)
			}
			s.check(t, machine+" guest", n)
			if _, err := zchost.wait(ctx); err != nil {
				t.Errorf("zchost run: %v", err)
			}
			if err := vm.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFabricGuestToHost: zsend in the guest produces into the queue's own
// buffers (zchost run --queue-buffers, no source), zcount --verify on the
// host counts them.
func TestFabricGuestToHost(t *testing.T) {
	const n = 20000
	h := newHostTools(t)
	vm := Start(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), GoBinary("zsend", zsendPkg), Script(fmt.Sprintf(`%s
zcguest wait -c 99 --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zsend -o zc:99@0 -n %d -l %d --json)"
zcguest wait -c 99 --gone --timeout 60s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, shaLine, n, frameLen)))
	ctx := testCtx(t, 100*time.Second)
	h.checkSameBinary(t, ctx, vm)
	zchost := h.start(t, h.zchost, "run", "-c", "99", "-n", "1", "--queue-buffers", "1024", "--backing", "shm",
		"--stats-interval", "0", "--vm", vm.QMPPath())
	out := h.run(t, ctx, h.zcount, "-i", "zc:99@0", "-n", fmt.Sprint(n), "--verify", "--json", "--interval", "0", "--wait", "60s")
	var s summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("host zcount output %q: %v", out, err)
	}
	s.check(t, "host", n)
	expectSent(t, ctx, vm, "guest", n)
	if err := zchost.interrupt(ctx); err != nil {
		t.Errorf("zchost run: %v", err)
	}
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestFabricUnplug unplugs the region (zchost detach) while zcount reads in
// the guest: zcount exits 1 saying the queue went away. Then the region is
// plugged again, once with zchost attach and then with qmp directly, each
// time with fresh QEMU ids, and a fresh zcount reads from it. Each re-plug
// logs the latency from device_add to a packet read in the guest; the
// median is what docs/PERFORMANCE.md reports.
func TestFabricUnplug(t *testing.T) {
	const rounds = 5
	h := newHostTools(t)
	vm := Start(t, GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c 99 --timeout 60s --poll 5ms || exit 1
echo ZCREADING
zcount -i zc:99@0 --json --interval 200ms > /tmp/z.json
echo "ZCRESULT {\"exit\":$?,\"summary\":$(cat /tmp/z.json)}"
for r in $(seq %d); do
	echo "ZCREPLUG $r"
	zcguest wait -c 99 --timeout 60s --poll 2ms || exit 1
	echo "ZCRESULT $(zcount -i zc:99@0 -n 100 --force --json --interval 0)"
	zcguest wait -c 99 --gone --timeout 60s --poll 5ms || exit 1
done
sleep 1 # sysfs drops the device before QEMU completes the unplug: let the host's object-del finish before power-off`, rounds)), Timeout(3*time.Minute))
	ctx := testCtx(t, 150*time.Second)
	zchost := h.start(t, h.zchost, "run", "-c", "99", "-i", fmt.Sprintf("gen:len=%d,count=1000000000,rate=20000", frameLen), "-n", "1",
		"--lossless", "--shared", "--backing", "shm", "--stats-interval", "0", "--vm", vm.QMPPath())
	if _, err := vm.Expect(ctx, "ZCREADING"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, "Absolute:"); err != nil { // zcount is counting
		t.Fatal(err)
	}
	out := h.run(t, ctx, h.zchost, "detach", "--qmp", vm.QMPPath(), "-c", "99")
	var ids []string
	var det struct{ Mem, Dev string }
	if err := json.Unmarshal([]byte(out), &det); err != nil || det.Dev == "" {
		t.Fatalf("zchost detach printed %q: %v", out, err)
	}
	ids = append(ids, det.Mem, det.Dev)
	if _, err := vm.Expect(ctx, "the queue went away"); err != nil {
		t.Fatal(err)
	}
	var gone struct {
		Exit    int     `json:"exit"`
		Summary summary `json:"summary"`
	}
	if _, err := vm.Result(ctx, &gone); err != nil {
		t.Fatal(err)
	}
	if gone.Exit != 1 || gone.Summary.Packets == 0 || !strings.Contains(gone.Summary.Error, "went away") {
		t.Errorf("guest zcount after unplug: exit %d, %+v; want exit 1, some packets, an error saying the queue went away", gone.Exit, gone.Summary)
	}

	info, err := inspect(h, 99)
	if err != nil {
		t.Fatal(err)
	}
	visibleRE := regexp.MustCompile(`^cluster 99 at `)
	var visible, usable []time.Duration
	for r := 1; r <= rounds; r++ {
		if _, err := vm.Expect(ctx, fmt.Sprintf("ZCREPLUG %d", r)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // let zcguest wait start polling
		var a qmp.Attachment
		start := time.Now()
		if r == 1 {
			out := h.run(t, ctx, h.zchost, "attach", "--qmp", vm.QMPPath(), "-c", "99")
			var att struct{ Mem, Dev string }
			if err := json.Unmarshal([]byte(out), &att); err != nil || att.Dev == "" {
				t.Fatalf("zchost attach printed %q: %v", out, err)
			}
			a = qmp.Attachment{MemID: att.Mem, DevID: att.Dev}
		} else {
			c, err := qmp.Dial(ctx, vm.QMPPath())
			if err != nil {
				t.Fatal(err)
			}
			start = time.Now()
			a, err = c.AttachRegion(ctx, qmp.AttachSpec{Path: info.File, Size: info.Size, Name: "c99"})
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		if slices.Contains(ids, a.MemID) || slices.Contains(ids, a.DevID) {
			t.Errorf("re-plug %d reused an id: %s %s (earlier %v)", r, a.MemID, a.DevID, ids)
		}
		ids = append(ids, a.MemID, a.DevID)
		vl, _, err := vm.ExpectRegexp(ctx, visibleRE)
		if err != nil {
			t.Fatal(err)
		}
		var s summary
		ul, err := vm.Result(ctx, &s)
		if err != nil {
			t.Fatal(err)
		}
		if s.Packets != 100 || s.Error != "" {
			t.Errorf("re-plug %d: guest zcount %+v, want 100 packets", r, s)
		}
		if r > 1 { // the first includes zchost attach's process start
			visible = append(visible, vl.Time.Sub(start))
			usable = append(usable, ul.Time.Sub(start))
		}
		t.Logf("re-plug %d (%s): ids %s %s; device_add to guest-visible %v, to a packet read by a fresh guest zcount %v",
			r, vm.AccelName(), a.MemID, a.DevID, vl.Time.Sub(start).Round(time.Millisecond), ul.Time.Sub(start).Round(time.Millisecond))
		if r == 1 {
			h.run(t, ctx, h.zchost, "detach", "--qmp", vm.QMPPath(), "--dev", a.DevID, "--mem", a.MemID)
		} else {
			c, err := qmp.Dial(ctx, vm.QMPPath())
			if err != nil {
				t.Fatal(err)
			}
			err = c.Detach(ctx, a)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	slices.Sort(visible)
	slices.Sort(usable)
	t.Logf("HOTPLUG %s: device_add to guest-visible median %v (min %v, max %v); to queue usable (packet read by a fresh zcount) median %v (min %v, max %v), %d rounds",
		vm.AccelName(), visible[len(visible)/2].Round(time.Millisecond), visible[0].Round(time.Millisecond), visible[len(visible)-1].Round(time.Millisecond),
		usable[len(usable)/2].Round(time.Millisecond), usable[0].Round(time.Millisecond), usable[len(usable)-1].Round(time.Millisecond), len(usable))
	if err := zchost.interrupt(ctx); err != nil {
		t.Errorf("zchost run: %v", err)
	}
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// inspect reads a cluster of the tools' region directory from this process.
func inspect(h *hostTools, id uint32) (zc.ClusterInfo, error) {
	defer inToolsDir(h)()
	return zc.Inspect(id)
}

// inspectVMs reads the per-VM regions of a cluster of the tools' region
// directory (what each guest reads and returns) from this process.
func inspectVMs(h *hostTools, id uint32) ([]zc.ClusterInfo, error) {
	defer inToolsDir(h)()
	return zc.InspectVMRegions(id)
}

// inToolsDir points ZC_DIR at the tools' region directory, and returns
// what puts it back.
func inToolsDir(h *hostTools) func() {
	old, had := os.LookupEnv("ZC_DIR")
	os.Setenv("ZC_DIR", h.dir)
	return func() {
		if had {
			os.Setenv("ZC_DIR", old)
		} else {
			os.Unsetenv("ZC_DIR")
		}
	}
}

// TestFabricTwoVMs runs two guests at once, each with its own cluster (99
// and 100) exported by its own zchost: each guest sees only its own region,
// cannot open the other's queue, and counts its own frames.
func TestFabricTwoVMs(t *testing.T) {
	const n = 10000
	h := newHostTools(t)
	ctx := testCtx(t, 100*time.Second)
	ids := []uint32{99, 100}
	vms := make([]*VM, len(ids))
	for i, id := range ids {
		other := ids[1-i]
		vms[i] = Start(t, Name(fmt.Sprintf("vm%d", id)), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
zcguest wait -c %[1]d --timeout 60s --poll 5ms || exit 1
echo "ZCRESULT $(zcguest list --json)"
zcount -i zc:%[2]d@0 -n 1 --interval 0 >/dev/null; echo "ZCRESULT {\"other_exit\":$?}"
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[3]d --verify --json --interval 0)"
zcguest wait -c %[1]d --gone --timeout 60s --poll 5ms || exit 1
sleep 1 # let QEMU see the eject before power-off`, id, other, n)))
	}
	var hosts []*proc
	for i, id := range ids {
		hosts = append(hosts, h.start(t, h.zchost, "run", "-c", fmt.Sprint(id), "-i", fmt.Sprintf("gen:len=%d,count=%d", frameLen, n), "-n", "1",
			"--lossless", "--backing", "shm", "--stats-interval", "0", "--vm", vms[i].QMPPath()))
	}
	for i, id := range ids {
		var list []struct {
			Addr    string  `json:"addr"`
			Cluster *uint32 `json:"cluster"`
		}
		if _, err := vms[i].Result(ctx, &list); err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].Cluster == nil || *list[0].Cluster != id {
			t.Errorf("vm %d sees ivshmem devices %+v, want only cluster %d", id, list, id)
		}
		var other struct {
			Exit int `json:"other_exit"`
		}
		if _, err := vms[i].Result(ctx, &other); err != nil {
			t.Fatal(err)
		}
		if other.Exit == 0 {
			t.Errorf("vm %d opened cluster %d's queue", id, ids[1-i])
		}
		var s summary
		if _, err := vms[i].Result(ctx, &s); err != nil {
			t.Fatal(err)
		}
		s.check(t, fmt.Sprintf("vm %d", id), n)
	}
	for i, p := range hosts {
		if _, err := p.wait(ctx); err != nil {
			t.Errorf("zchost run -c %d: %v", ids[i], err)
		}
	}
	for _, vm := range vms {
		if err := vm.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
}
