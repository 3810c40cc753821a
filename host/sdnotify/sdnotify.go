// Package sdnotify tells systemd how a Type=notify service is doing, by the
// datagram protocol of sd_notify(3): "READY=1", "STATUS=...", "WATCHDOG=1"
// sent to the unix socket named by $NOTIFY_SOCKET (a path, or an abstract
// name written "@name"). Pure Go: no cgo, no libsystemd.
//
// Every function is a no-op returning nil when $NOTIFY_SOCKET is unset (the
// service was not started by systemd, or the unit is not Type=notify), so
// callers need not check. The environment is read at each call; the
// variables are left in place.
//
// Watchdog: with WatchdogSec= in the unit, systemd sets WATCHDOG_USEC (and
// WATCHDOG_PID); WatchdogInterval returns it, and the service sends
// Watchdog() more often than that (half the interval is customary), from
// the code whose progress it vouches for.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrUnsupported: $NOTIFY_SOCKET names a socket this package cannot reach
// (systemd's vsock: form, or something else than a path or "@name").
var ErrUnsupported = errors.New("sdnotify: unsupported NOTIFY_SOCKET")

// Notify sends state, one or more "KEY=VALUE" lines, to the service
// manager. It returns nil without sending when $NOTIFY_SOCKET is unset.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("%w: %q", ErrUnsupported, addr)
	}
	// Go maps a leading '@' to the abstract namespace's NUL.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: connect %s: %w", addr, err)
	}
	defer conn.Close()
	n, err := conn.Write([]byte(state))
	if err != nil {
		return fmt.Errorf("sdnotify: send %q to %s: %w", firstLine(state), addr, err)
	}
	if n != len(state) {
		return fmt.Errorf("sdnotify: send %q to %s: short write (%d of %d bytes)", firstLine(state), addr, n, len(state))
	}
	return nil
}

// Ready tells systemd that start-up is finished (READY=1): a Type=notify
// unit counts as started, and units ordered after it start, only then.
func Ready() error { return Notify("READY=1") }

// Reloading tells systemd that the service is reloading its
// configuration (RELOADING=1, with the CLOCK_MONOTONIC time systemd
// requires of Type=notify-reload units); send Ready when done.
func Reloading() error {
	return Notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
}

// Stopping tells systemd that the service is shutting down (STOPPING=1).
func Stopping() error { return Notify("STOPPING=1") }

// Status sets the one-line status `systemctl status` shows (STATUS=...).
// Line breaks in s become spaces.
func Status(s string) error {
	return Notify("STATUS=" + strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s))
}

// Watchdog tells systemd that the service is alive (WATCHDOG=1); with
// WatchdogSec= set it must come more often than WatchdogInterval.
func Watchdog() error { return Notify("WATCHDOG=1") }

// WatchdogInterval returns the watchdog timeout systemd enforces on this
// process ($WATCHDOG_USEC), and false when there is none: the variable is
// unset, zero or malformed, or $WATCHDOG_PID names another process (the
// variables were inherited from a parent).
func WatchdogInterval() (time.Duration, bool) {
	us, err := strconv.ParseUint(os.Getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || us == 0 || us > uint64(1<<63-1)/uint64(time.Microsecond) {
		return 0, false
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, err := strconv.Atoi(p)
		if err != nil || pid != os.Getpid() {
			return 0, false
		}
	}
	return time.Duration(us) * time.Microsecond, true
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
