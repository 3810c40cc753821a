package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens a unixgram socket as systemd does and points
// $NOTIFY_SOCKET at it.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@zc-sdnotify-test-" + strconv.Itoa(os.Getpid()),
	} {
		t.Run(name, func(t *testing.T) {
			c := listen(t, name)
			for _, tc := range []struct {
				send func() error
				want string
			}{
				{Ready, "READY=1"},
				{Stopping, "STOPPING=1"},
				{Watchdog, "WATCHDOG=1"},
				{func() error { return Status("re-adopted 2 regions\nserving") }, "STATUS=re-adopted 2 regions serving"},
				{func() error { return Notify("READY=1\nSTATUS=up") }, "READY=1\nSTATUS=up"},
			} {
				if err := tc.send(); err != nil {
					t.Fatal(err)
				}
				if got := recv(t, c); got != tc.want {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			}
			if err := Reloading(); err != nil {
				t.Fatal(err)
			}
			got := recv(t, c)
			usec, ok := strings.CutPrefix(got, "RELOADING=1\nMONOTONIC_USEC=")
			if n, err := strconv.ParseInt(usec, 10, 64); !ok || err != nil || n <= 0 {
				t.Errorf("Reloading sent %q; want RELOADING=1 and a positive MONOTONIC_USEC", got)
			}
		})
	}
}

func TestUnset(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for _, f := range []func() error{Ready, Stopping, Watchdog, Reloading, func() error { return Status("x") }} {
		if err := f(); err != nil {
			t.Errorf("without NOTIFY_SOCKET: %v; want nil", err)
		}
	}
}

func TestErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if err := Ready(); !errors.Is(err, ErrUnsupported) {
		t.Errorf("vsock socket: %v; want ErrUnsupported", err)
	}
	absent := filepath.Join(t.TempDir(), "absent")
	t.Setenv("NOTIFY_SOCKET", absent)
	if err := Ready(); err == nil || !strings.Contains(err.Error(), absent) {
		t.Errorf("absent socket: %v; want an error naming it", err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"30000000", "", 30 * time.Second, true},
		{"30000000", me, 30 * time.Second, true},
		{"30000000", "1", 0, false}, // another process's
		{"30000000", "x", 0, false},
		{"", "", 0, false},
		{"0", me, 0, false},
		{"-5", me, 0, false},
		{"10s", me, 0, false},
		{"99999999999999999999", me, 0, false},
		{"9223372036854775", me, 9223372036854775 * time.Microsecond, true},
		{"9223372036854776", me, 0, false}, // overflows a Duration
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		if d, ok := WatchdogInterval(); d != tc.want || ok != tc.ok {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v, %v", tc.usec, tc.pid, d, ok, tc.want, tc.ok)
		}
	}
}
