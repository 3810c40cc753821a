package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/testgate"
)

// VM is a running QEMU guest owned by one test. It is killed when the test
// ends (or when its Timeout passes).
type VM struct {
	t       testing.TB
	cmd     *exec.Cmd
	dir     string
	qmp     string
	ctl     string
	accel   string
	con     *console
	exited  chan struct{}
	exitErr error
	started time.Time
}

// Accel returns the accelerator QEMU runs with ("kvm" or "tcg") and the
// -cpu value, following VMTEST_ACCEL and [testgate.KVM].
func Accel() (accel, cpu string) {
	switch os.Getenv("VMTEST_ACCEL") {
	case "tcg":
		return "tcg", "max"
	case "kvm":
		if cpu, ok := testgate.KVMCPU(); ok {
			return "kvm", cpu
		}
		return "kvm", "host"
	}
	if cpu, ok := testgate.KVMCPU(); ok {
		return "kvm", cpu
	}
	return "tcg", "max"
}

// Start boots a guest for t. It skips t in -short mode and when QEMU,
// busybox or a kernel is missing, and fails it when the guest cannot be
// built or started. It returns once QEMU listens on its QMP socket, so a
// test may dial [VM.QMPPath] at once.
func Start(t testing.TB, opts ...Option) *VM {
	t.Helper()
	testgate.Short(t, "boots a QEMU guest")
	qemu := testgate.QEMU(t)
	busybox := testgate.Busybox(t)
	k := GuestKernel(t)
	c := defaultConfig()
	for _, o := range opts {
		o(c)
	}
	if c.name == "" {
		c.name = c.machine
	}

	mods, err := k.modulePaths(c.modules)
	if err != nil {
		t.Skipf("vmtest: requires kernel modules %v: %v", c.modules, err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatalf("vmtest: read busybox: %v", err)
	}
	r := &initramfs{busybox: bb, binaries: map[string][]byte{}, modules: mods, script: c.script}
	for name, pkg := range c.binaries {
		r.binaries[name] = BuildGo(t, pkg)
	}
	if err := r.addHostFiles(c.files); err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	img, err := r.build()
	if err != nil {
		t.Fatalf("vmtest: build initramfs: %v", err)
	}
	// Unix socket paths are limited to 108 bytes: keep the directory short
	// rather than under t.TempDir's long test-named path.
	dir, err := os.MkdirTemp("", "vmtest-")
	if err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	initrd := filepath.Join(dir, "initrd.gz")
	if err := os.WriteFile(initrd, img, 0o644); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("vmtest: write initramfs: %v", err)
	}

	accel, cpu := Accel()
	vm := &VM{
		t: t, dir: dir, accel: accel,
		qmp:    filepath.Join(dir, "qmp.sock"),
		ctl:    filepath.Join(dir, "ctl.sock"),
		con:    newConsole(),
		exited: make(chan struct{}),
	}
	args := c.qemuArgs(accel, cpu, k.Vmlinuz, initrd, vm.qmp, vm.ctl)
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	vm.cmd = exec.CommandContext(ctx, qemu, args...)
	vm.cmd.WaitDelay = 5 * time.Second
	stdout, err := vm.cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatalf("vmtest: %v", err)
	}
	stderr, err := vm.cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatalf("vmtest: %v", err)
	}
	t.Logf("vmtest: %s: %s %s", c.name, qemu, strings.Join(args, " "))
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		cancel()
		os.RemoveAll(dir)
		t.Fatalf("vmtest: start %s: %v", qemu, err)
	}
	errDone := make(chan struct{})
	go func() {
		defer close(errDone)
		newConsole().read(stderr, func(s string) { t.Logf("%s qemu: %s", c.name, s) })
	}()
	go func() {
		vm.con.read(stdout, func(s string) { t.Logf("%s: %s", c.name, s) })
		<-errDone
		vm.exitErr = vm.cmd.Wait()
		cancel()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		vm.Kill()
		os.RemoveAll(dir)
	})
	if err := vm.waitQMP(c.timeout); err != nil {
		t.Fatalf("vmtest: %s: %v", c.name, err)
	}
	return vm
}

// waitQMP waits until a connection to QEMU's QMP socket succeeds, so that
// callers can dial QMPPath as soon as Start returns. The socket file
// appears when QEMU binds it, a moment before QEMU listens: a dial in
// between fails with "connection refused" (seen under load). The probe
// connection is closed at once; QEMU then serves the next client. It gives
// up when QEMU exits or after timeout.
func (vm *VM) waitQMP(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := vm.dialRetry(ctx, vm.qmp)
	switch {
	case errors.Is(err, errQEMUExited):
		return fmt.Errorf("QEMU exited before listening on its QMP socket: %v", vm.exitErr)
	case err != nil:
		return fmt.Errorf("QEMU not listening on its QMP socket %s after %v: %w", vm.qmp, timeout, err)
	}
	c.Close()
	return nil
}

// DialCtl connects to the host end of the VM's virtio-serial port (see
// [VirtioSerial]). QEMU binds that socket after its QMP socket, so right
// after Start it may not be there yet: DialCtl retries until ctx ends.
func (vm *VM) DialCtl(ctx context.Context) (net.Conn, error) {
	c, err := vm.dialRetry(ctx, vm.ctl)
	if err != nil {
		return nil, fmt.Errorf("vmtest: dial the ctl port %s: %w", vm.ctl, err)
	}
	return c, nil
}

// errQEMUExited: QEMU exited while dialRetry waited for its socket.
var errQEMUExited = errors.New("QEMU exited")

// dialRetry dials QEMU's unix socket at path every 5 ms until it answers,
// QEMU exits (errQEMUExited) or ctx ends (the last dial error and ctx's).
func (vm *VM) dialRetry(ctx context.Context, path string) (net.Conn, error) {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-vm.exited:
			return nil, fmt.Errorf("%w: %w", errQEMUExited, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// QMPPath returns the path of the VM's QMP unix socket.
func (vm *VM) QMPPath() string { return vm.qmp }

// CtlPath returns the path of the unix socket behind the virtio-serial port
// (see [VirtioSerial]).
func (vm *VM) CtlPath() string { return vm.ctl }

// AccelName returns "kvm" or "tcg".
func (vm *VM) AccelName() string { return vm.accel }

// Started returns when QEMU was started.
func (vm *VM) Started() time.Time { return vm.started }

// Expect waits for the next console line containing substr.
func (vm *VM) Expect(ctx context.Context, substr string) (Line, error) {
	return vm.con.expect(ctx, fmt.Sprintf("%q", substr), func(s string) bool { return strings.Contains(s, substr) })
}

// ExpectRegexp waits for the next console line matching re and returns it
// with re's submatches.
func (vm *VM) ExpectRegexp(ctx context.Context, re *regexp.Regexp) (Line, []string, error) {
	l, err := vm.con.expect(ctx, "/"+re.String()+"/", re.MatchString)
	if err != nil {
		return l, nil, err
	}
	return l, re.FindStringSubmatch(l.Text), nil
}

// Lines returns every console line so far.
func (vm *VM) Lines() []Line { return vm.con.all() }

// Wait waits for QEMU to exit and returns its error (nil for status 0).
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		return vm.exitErr
	case <-ctx.Done():
		return fmt.Errorf("vmtest: waiting for QEMU to exit: %w", ctx.Err())
	}
}

// Shutdown waits for the guest's script to finish, checks it exited 0 and
// that QEMU then exited 0.
func (vm *VM) Shutdown(ctx context.Context) error {
	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`^`+ExitMarker+` (\d+)$`))
	if err != nil {
		return err
	}
	if m[1] != "0" {
		return fmt.Errorf("vmtest: guest script exited %s", m[1])
	}
	return vm.Wait(ctx)
}

// Kill stops QEMU if it still runs and waits for its output to drain.
func (vm *VM) Kill() {
	select {
	case <-vm.exited:
		return
	default:
	}
	_ = vm.cmd.Process.Signal(syscall.SIGKILL)
	<-vm.exited
}

// ResultPrefix starts the console lines that carry results from the guest
// to the host: "ZCRESULT " followed by one JSON value.
const ResultPrefix = "ZCRESULT "

// Result waits for the next result line and decodes its JSON into v.
func (vm *VM) Result(ctx context.Context, v any) (Line, error) {
	l, err := vm.con.expect(ctx, "a "+strings.TrimSpace(ResultPrefix)+" line", func(s string) bool { return strings.HasPrefix(s, ResultPrefix) })
	if err != nil {
		return l, err
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(l.Text, ResultPrefix)), v); err != nil {
		return l, fmt.Errorf("vmtest: decode result %q: %w", l.Text, err)
	}
	return l, nil
}

// FormatResult returns the console line a guest program prints to report v
// to the host; see [VM.Result].
func FormatResult(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return ResultPrefix + string(b), nil
}
