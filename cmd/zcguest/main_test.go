package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc/guest"
)

// fakeSysfs builds a sysfs tree with one ivshmem device carrying cluster 99
// and one without a zcfabric header, and returns its root and the region.
func fakeSysfs(t *testing.T) (string, []byte) {
	t.Helper()
	root := t.TempDir()
	region := make([]byte, 4096)
	copy(region, "ZCFABRIC")
	binary.LittleEndian.PutUint32(region[24:], 99)
	for i := 32; i < len(region); i++ {
		region[i] = byte(i)
	}
	for addr, bar := range map[string][]byte{"0000:00:04.0": region, "0000:00:05.0": make([]byte, 8192)} {
		dir := filepath.Join(root, "bus", "pci", "devices", addr)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{"vendor": []byte("0x1af4\n"), "device": []byte("0x1110\n"), "resource2": bar} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root, region
}

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	rc := run(context.Background(), args, &out, &errOut)
	return rc, out.String(), errOut.String()
}

func TestListWaitSum(t *testing.T) {
	root, region := fakeSysfs(t)

	rc, out, stderr := runCmd(t, "list", "--sysfs", root)
	if rc != 0 || !strings.Contains(out, "0000:00:04.0") || !strings.Contains(out, " 99") || !strings.Contains(out, "(no zcfabric header)") {
		t.Errorf("list: rc %d, out:\n%s%s", rc, out, stderr)
	}

	rc, out, stderr = runCmd(t, "wait", "-c", "99", "--timeout", "2s", "--sysfs", root)
	if rc != 0 || !strings.HasPrefix(out, "cluster 99 at 0000:00:04.0 (4096 bytes)") {
		t.Errorf("wait: rc %d, out %q, stderr %q", rc, out, stderr)
	}
	rc, _, stderr = runCmd(t, "wait", "-c", "7", "--timeout", "30ms", "--sysfs", root)
	if rc != 1 || !strings.Contains(stderr, "deadline exceeded") {
		t.Errorf("wait for absent cluster: rc %d, stderr %q; want 1 and a timeout", rc, stderr)
	}
	rc, out, _ = runCmd(t, "wait", "-c", "7", "--gone", "--sysfs", root)
	if rc != 0 || !strings.HasPrefix(out, "cluster 7 gone") {
		t.Errorf("wait --gone for absent cluster: rc %d, out %q", rc, out)
	}

	rc, out, stderr = runCmd(t, "sum", "-c", "99", "--len", "1000", "--json", "--sysfs", root)
	var res sumResult
	if rc != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("sum: rc %d, out %q, stderr %q", rc, out, stderr)
	}
	if want := crc32.ChecksumIEEE(region[:1000]); res.CRC32 != want || res.Len != 1000 || res.Cluster != 99 {
		t.Errorf("sum = %+v, want crc32 %08x over 1000 bytes", res, want)
	}
	rc, out, _ = runCmd(t, "sum", "-c", "99", "--sysfs", root)
	if want := fmt.Sprintf("%08x  cluster 99", crc32.ChecksumIEEE(region)); rc != 0 || !strings.HasPrefix(out, want) {
		t.Errorf("sum of all: rc %d, out %q, want prefix %q", rc, out, want)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"wait"}, {"sum", "-c", "99", "extra"}, {"wait", "-c", "5000000000"}} {
		if rc, _, stderr := runCmd(t, args...); rc != 2 || stderr == "" {
			t.Errorf("zcguest %q: rc %d, stderr %q; want 2 and a message", args, rc, stderr)
		}
	}
	if rc, out, _ := runCmd(t, "help"); rc != 0 || !strings.Contains(out, "zcguest wait -c ID") {
		t.Errorf("help: rc %d, out %q", rc, out)
	}
}

// TestWaitNoticeFlagsNeedNotice checks that the flags serving --notice are
// refused without it instead of being ignored: wait --gone --on-notice CMD
// used to report the cluster gone and never run CMD.
func TestWaitNoticeFlagsNeedNotice(t *testing.T) {
	root, _ := fakeSysfs(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--on-notice", "echo STOP"}, "--on-notice needs --notice"},
		{[]string{"--dev", t.TempDir()}, "--dev needs --notice"},
		{[]string{"--notice"}, "--notice needs --gone"},
	} {
		args := append([]string{"wait", "-c", "7", "--sysfs", root}, tc.args...)
		if tc.want != "--notice needs --gone" {
			args = append(args, "--gone")
		}
		rc, out, stderr := runCmd(t, args...)
		if rc != 2 || !strings.Contains(stderr, "zcguest wait: "+tc.want) || out != "" {
			t.Errorf("zcguest %q: rc %d, out %q, stderr %q; want 2 and %q", args, rc, out, stderr, tc.want)
		}
	}
}

// TestWaitGonePoll checks that wait --gone --poll 0 polls at the default
// interval, as wait without --gone does, instead of spinning, and that a
// negative --poll is refused.
func TestWaitGonePoll(t *testing.T) {
	root, _ := fakeSysfs(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var polls []time.Duration
	after = func(d time.Duration) <-chan time.Time {
		polls = append(polls, d)
		cancel() // cluster 99 stays plugged: end the wait at its first poll
		return nil
	}
	t.Cleanup(func() { after = time.After })
	var out, errOut bytes.Buffer
	rc := run(ctx, []string{"wait", "-c", "99", "--gone", "--poll", "0", "--sysfs", root}, &out, &errOut)
	if rc != 1 || !strings.Contains(errOut.String(), "cluster 99 still plugged") {
		t.Errorf("wait --gone --poll 0, cancelled: rc %d, stderr %q; want 1, still plugged", rc, errOut.String())
	}
	if want := []time.Duration{guest.DefaultPoll}; !slices.Equal(polls, want) {
		t.Errorf("wait --gone --poll 0 polled at %v, want %v", polls, want)
	}

	rc, out2, stderr := runCmd(t, "wait", "-c", "7", "--gone", "--poll", "-1ms", "--sysfs", root)
	if rc != 2 || !strings.Contains(stderr, "--poll -1ms: must not be negative") || out2 != "" {
		t.Errorf("wait --poll -1ms: rc %d, out %q, stderr %q; want 2 and a message naming --poll", rc, out2, stderr)
	}
}

// TestTimeoutFlags checks that --timeout 0 means "wait forever" in ctl as
// in wait (ctl used to fail at once with "context deadline exceeded"), and
// that every command refuses a negative --timeout (wait waited forever).
func TestTimeoutFlags(t *testing.T) {
	root, _ := fakeSysfs(t) // no virtio-serial port: ctl waits for zc.ctl
	for _, args := range [][]string{
		{"ctl", "list", "--timeout", "0", "--sysfs", root, "--dev", t.TempDir()},
		{"ctl", "plug", "-c", "99", "--timeout", "0", "--sysfs", root, "--dev", t.TempDir()},
	} {
		// Nothing answers: ctl must wait until the caller gives up. The
		// delay only ends the test; no result depends on it.
		ctx, cancel := context.WithCancel(context.Background())
		stop := time.AfterFunc(50*time.Millisecond, cancel)
		var out, errOut bytes.Buffer
		rc := run(ctx, args, &out, &errOut)
		stop.Stop()
		cancel()
		if rc != 1 || !strings.Contains(errOut.String(), "context canceled") || strings.Contains(errOut.String(), "deadline exceeded") {
			t.Errorf("zcguest %q, cancelled: rc %d, stderr %q; want 1 and context canceled, no deadline", args, rc, errOut.String())
		}
	}
	dev := t.TempDir()
	for _, args := range [][]string{
		{"wait", "-c", "7", "--gone", "--timeout", "-1s", "--sysfs", root},
		{"ctl", "list", "--timeout", "-1s", "--sysfs", root, "--dev", dev},
		{"ctl", "plug", "-c", "99", "--timeout", "-1s", "--sysfs", root, "--dev", dev},
	} {
		rc, out, stderr := runCmd(t, args...)
		if rc != 2 || !strings.Contains(stderr, "--timeout -1s: must not be negative") || out != "" {
			t.Errorf("zcguest %q: rc %d, out %q, stderr %q; want 2 and a message naming --timeout", args, rc, out, stderr)
		}
	}
}

// TestUsageErrorsNameFlag checks that a usage error names the command and
// the flag at fault, not a list of everything that could have been wrong.
func TestUsageErrorsNameFlag(t *testing.T) {
	root, _ := fakeSysfs(t)
	for _, tc := range []struct {
		args      []string
		want, not string
	}{
		{[]string{"sum", "-c", "99", "--len", "-1", "--sysfs", root}, "zcguest sum: --len -1: must not be negative", "-c ID is required"},
		{[]string{"sum", "--len", "10", "--sysfs", root}, "zcguest sum: -c ID is required", "--len"},
		{[]string{"ctl", "plug", "-c", "99", "--queues", "0,,1", "--sysfs", root}, `zcguest ctl plug: --queues "0,,1": bad queue ""`, ""},
		{[]string{"ctl", "plug", "-c", "99", "--queues", "-1", "--sysfs", root}, `zcguest ctl plug: --queues "-1": bad queue "-1"`, ""},
	} {
		rc, out, stderr := runCmd(t, tc.args...)
		msg, _, _ := strings.Cut(stderr, "\n") // the rest is the command's help
		if rc != 2 || !strings.HasPrefix(msg, tc.want) || (tc.not != "" && strings.Contains(msg, tc.not)) || out != "" {
			t.Errorf("zcguest %q: rc %d, out %q, stderr %q; want 2 and %q first", tc.args, rc, out, stderr, tc.want)
		}
	}
}

// TestCtlHelp checks that "zcguest ctl -h" prints ctl's usage and exits 0,
// as "zcguest -h" does, instead of calling -h an unknown command, and that
// a failing ctl command says which one failed.
func TestCtlHelp(t *testing.T) {
	for _, arg := range []string{"help", "-h", "--help"} {
		if rc, out, stderr := runCmd(t, "ctl", arg); rc != 0 || !strings.Contains(out, "zcguest ctl plug -c ID") || stderr != "" {
			t.Errorf("zcguest ctl %s: rc %d, out %q, stderr %q; want 0 and ctl's usage", arg, rc, out, stderr)
		}
	}
	if rc, _, stderr := runCmd(t, "ctl", "bogus"); rc != 2 || !strings.Contains(stderr, `unknown command "bogus"`) {
		t.Errorf("zcguest ctl bogus: rc %d, stderr %q; want 2 and unknown command", rc, stderr)
	}
	// No control channel under this sysfs, and 1ns to find it.
	root, _ := fakeSysfs(t)
	rc, _, stderr := runCmd(t, "ctl", "list", "--timeout", "1ns", "--sysfs", root, "--dev", t.TempDir())
	if rc != 1 || !strings.HasPrefix(stderr, "zcguest ctl list: ") {
		t.Errorf("zcguest ctl list without a channel: rc %d, stderr %q; want 1 and an error naming ctl list", rc, stderr)
	}
}

// TestSysfsFromEnv: with $ZC_SYSFS set and no --sysfs, the devices and
// their counters both come from $ZC_SYSFS (the devices came from /sys).
func TestSysfsFromEnv(t *testing.T) {
	root, region := fakeSysfs(t)
	t.Setenv(guest.SysfsEnv, root)
	rc, out, stderr := runCmd(t, "list")
	if rc != 0 || !strings.Contains(out, "0000:00:04.0") || !strings.Contains(out, " 99") {
		t.Errorf("list with $%s: rc %d, out:\n%s%s", guest.SysfsEnv, rc, out, stderr)
	}
	rc, out, _ = runCmd(t, "sum", "-c", "99")
	if want := fmt.Sprintf("%08x  cluster 99", crc32.ChecksumIEEE(region)); rc != 0 || !strings.HasPrefix(out, want) {
		t.Errorf("sum with $%s: rc %d, out %q, want prefix %q", guest.SysfsEnv, rc, out, want)
	}
}
