// Package netns builds throwaway test networks: two network namespaces joined
// by a veth pair, with unique names per test, links up, IPv6 off (so the
// kernel sends no neighbour discovery noise) and everything removed in
// t.Cleanup, even when the test fails. It also runs functions inside a
// namespace and opens raw AF_PACKET sockets there to inject and observe
// frames.
//
// Traffic only ever flows between the two namespaces a Pair owns; nothing
// touches the root namespace's interfaces.
//
// Namespaces are entered with runtime.LockOSThread + setns(2) on a fresh
// goroutine whose thread is never unlocked, so the Go runtime discards that
// thread when the goroutine returns and no other goroutine ever runs in the
// namespace by accident. Sockets created inside Do keep their namespace
// after Do returns and may be used from any goroutine.
package netns

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace and interface this package
// creates, so leftovers are easy to spot (`ip netns list | grep zct`).
const Prefix = "zct"

// End is one side of a Pair: a namespace and the veth interface in it.
type End struct {
	NS      string           // namespace name, as in `ip netns list`
	Ifname  string           // veth interface name inside NS
	Ifindex int              // interface index inside NS
	MAC     net.HardwareAddr // the interface's address
}

// Pair is two namespaces joined by a veth pair: A.Ifname in A.NS is the
// peer of B.Ifname in B.NS.
type Pair struct {
	A, B End
}

// Config tunes New. The zero value gives MTU 1500 and one queue each way.
type Config struct {
	MTU int // MTU of both veth ends; 0 means 1500
	// Queues is the number of RX and TX queues of each veth end (0: the
	// kernel's default, one). veth hands a frame sent on TX queue N of one
	// end to RX queue N of the other; End.SteerTX picks N.
	Queues int
}

// New creates two namespaces and a veth pair between them, brings both ends
// up and registers their removal with t.Cleanup. It fails the test if any
// step fails (after removing what it had made). The caller must have passed
// testgate.NetAdmin.
func New(t testing.TB, cfg Config) *Pair {
	t.Helper()
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	id := uniqueID()
	p := &Pair{
		A: End{NS: Prefix + id + "-nsa", Ifname: Prefix + id + "a"},
		B: End{NS: Prefix + id + "-nsb", Ifname: Prefix + id + "b"},
	}
	t.Cleanup(func() {
		if err := p.remove(); err != nil {
			t.Errorf("netns: cleanup: %v", err)
		}
	})
	var nq []string
	if cfg.Queues > 0 {
		nq = []string{"numtxqueues", fmt.Sprint(cfg.Queues), "numrxqueues", fmt.Sprint(cfg.Queues)}
	}
	add := append(append([]string{"link", "add", p.A.Ifname}, nq...), "netns", p.A.NS, "type", "veth", "peer", "name", p.B.Ifname)
	add = append(append(add, nq...), "netns", p.B.NS)
	steps := [][]string{
		{"netns", "add", p.A.NS},
		{"netns", "add", p.B.NS},
		add,
	}
	for _, e := range []End{p.A, p.B} {
		steps = append(steps,
			[]string{"-n", e.NS, "link", "set", "lo", "up"},
			[]string{"-n", e.NS, "link", "set", e.Ifname, "mtu", fmt.Sprint(cfg.MTU), "up"},
		)
	}
	for _, args := range steps {
		if err := ip(args...); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	for _, e := range []*End{&p.A, &p.B} {
		err := e.Do(func() error {
			for _, f := range []string{"all", "default", e.Ifname} {
				path := filepath.Join("/proc/sys/net/ipv6/conf", f, "disable_ipv6")
				if err := os.WriteFile(path, []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("disable ipv6: %w", err)
				}
			}
			ifi, err := net.InterfaceByName(e.Ifname)
			if err != nil {
				return err
			}
			e.Ifindex, e.MAC = ifi.Index, ifi.HardwareAddr
			return nil
		})
		if err != nil {
			t.Fatalf("netns: set up %s in %s: %v", e.Ifname, e.NS, err)
		}
	}
	// The kernel turns a veth's carrier on (and gives it a queueing
	// discipline) through linkwatch, which may run up to a second later:
	// a frame sent before that is dropped without a trace, and a test
	// that sends a window of frames then waits for them stalls for good.
	for _, e := range []End{p.A, p.B} {
		if err := waitUp(e, 5*time.Second); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	return p
}

// waitUp waits until e's link reports operational state UP.
func waitUp(e End, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		out, err := exec.Command("ip", "-n", e.NS, "-o", "link", "show", e.Ifname).CombinedOutput()
		if err == nil && bytes.Contains(out, []byte("state UP")) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s not up after %v: %s", e.Ifname, e.NS, d, bytes.TrimSpace(out))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// remove deletes both namespaces; the veth pair goes with them.
func (p *Pair) remove() error {
	var errs []error
	for _, ns := range []string{p.A.NS, p.B.NS} {
		if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); err != nil {
			continue
		}
		errs = append(errs, ip("netns", "del", ns))
	}
	return errors.Join(errs...)
}

// Names returns the namespace and interface names the pair uses, for
// leftover checks.
func (p *Pair) Names() []string {
	return []string{p.A.NS, p.B.NS, p.A.Ifname, p.B.Ifname}
}

// Do runs fn on a fresh OS thread that has joined the namespace e.NS, and
// returns fn's error. The thread is discarded afterwards.
func (e End) Do(fn func() error) error {
	return Run(e.NS, fn)
}

// Run runs fn on a fresh OS thread that has joined the named network
// namespace (a file under /var/run/netns), and returns fn's error. The
// thread is locked for the whole call and discarded afterwards, so the
// namespace never leaks to other goroutines.
func Run(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		f, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			errc <- fmt.Errorf("netns: open %s: %w", ns, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netns: setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Leftovers returns those of names that still exist as a network namespace
// or as an interface in the root namespace (shown by `ip netns list` and
// `ip link`).
func Leftovers(names ...string) ([]string, error) {
	var out []string
	nsl, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("netns: ip netns list: %w: %s", err, bytes.TrimSpace(nsl))
	}
	links, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("netns: ip link show: %w: %s", err, bytes.TrimSpace(links))
	}
	for _, n := range names {
		for _, line := range strings.Split(string(nsl), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == n {
				out = append(out, "netns "+n)
			}
		}
		for _, line := range strings.Split(string(links), "\n") {
			// "12: name@peer: <...>" or "12: name: <...>"
			if f := strings.Fields(line); len(f) > 1 {
				name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
				if name == n {
					out = append(out, "link "+n)
				}
			}
		}
	}
	return out, nil
}

// LinkShow returns `ip -d link show dev ifname` run inside the namespace ns,
// for tests that look for an attached XDP program ("xdp" / "xdpgeneric").
func LinkShow(ns, ifname string) (string, error) {
	out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "dev", ifname).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("netns: ip -n %s link show %s: %w: %s", ns, ifname, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// SteerTX makes every frame e sends from now on leave on its TX queue q,
// which veth delivers to RX queue q of the peer: it sets the transmit
// packet steering (XPS) map of tx-q to every CPU and those of the other
// queues to none. It applies to sockets that let the kernel pick the queue
// (Raw does: PACKET_QDISC_BYPASS picks through XPS by the sending CPU).
// The writes go to the namespace's own sysfs, through `ip netns exec`.
func (e End) SteerTX(q int) error {
	possible, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return fmt.Errorf("netns: steer %s to tx queue %d: %w", e.Ifname, q, err)
	}
	// "0-N" (or "0"): a mask of CPUs 0..N.
	last := 0
	if _, hi, ok := strings.Cut(strings.TrimSpace(string(possible)), "-"); ok {
		fmt.Sscan(hi, &last)
	}
	all := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(last+1)), big.NewInt(1))
	// sysfs wants 32-bit groups separated by commas.
	hex := all.Text(16)
	var groups []string
	for len(hex) > 8 {
		groups = append([]string{hex[len(hex)-8:]}, groups...)
		hex = hex[:len(hex)-8]
	}
	mask := strings.Join(append([]string{hex}, groups...), ",")
	script := fmt.Sprintf(`set -e
q=%d; mask=%s; dir=/sys/class/net/%s/queues
[ -e "$dir/tx-$q/xps_cpus" ] || { echo "no tx queue $q" >&2; exit 1; }
for f in "$dir"/tx-*/xps_cpus; do echo 0 > "$f"; done
echo "$mask" > "$dir/tx-$q/xps_cpus"`, q, mask, e.Ifname)
	out, err := exec.Command("ip", "netns", "exec", e.NS, "sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: steer %s in %s to tx queue %d: %w: %s", e.Ifname, e.NS, q, err, bytes.TrimSpace(out))
	}
	return nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// uniqueID returns 8 random hex digits: Prefix+id+"a" is 12 bytes, inside
// IFNAMSIZ-1 = 15.
func uniqueID() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}
