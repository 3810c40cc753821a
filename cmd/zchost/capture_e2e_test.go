package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/netns"
	"github.com/zcfabric/zc/internal/testgate"
)

// agentLog collects a child's stderr line by line and says when a line
// containing a given text has appeared.
type agentLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func newAgentLog(c *exec.Cmd) (*agentLog, error) {
	r, err := c.StderrPipe()
	if err != nil {
		return nil, err
	}
	l := &agentLog{lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.buf.WriteString(sc.Text() + "\n")
			l.mu.Unlock()
			select {
			case l.lines <- sc.Text():
			default:
			}
		}
		close(l.lines)
	}()
	return l, nil
}

func (l *agentLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor waits for a line containing s; false if the log ended first or
// the guard timeout passed (a hang, not a performance threshold).
func (l *agentLog) waitFor(s string, guard time.Duration) bool {
	t := time.After(guard)
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				return false
			}
			if strings.Contains(line, s) {
				return true
			}
		case <-t:
			return false
		}
	}
}

// agentProc is a zchost child started with startAgent.
type agentProc struct {
	cmd  *exec.Cmd
	log  *agentLog
	done chan error
}

// startAgent starts `ip args...` (ip netns exec NS zchost run ...), kills
// it at cleanup if still running, and waits for it to log that its sources
// started.
func startAgent(t *testing.T, args []string) *agentProc {
	t.Helper()
	return waitSources(t, launch(t, exec.Command("ip", args...)))
}

// launch starts cmd with its log read line by line, and kills it at
// cleanup if it still runs.
func launch(t *testing.T, cmd *exec.Cmd) *agentProc {
	t.Helper()
	a := &agentProc{cmd: cmd, done: make(chan error, 1)}
	var err error
	if a.log, err = newAgentLog(a.cmd); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			a.cmd.Process.Kill()
			<-a.done
		}
	})
	return a
}

// waitSources waits for an agent to log that its sources started.
func waitSources(t *testing.T, a *agentProc) *agentProc {
	t.Helper()
	if !a.log.waitFor("sources started", 30*time.Second) {
		t.Fatalf("zchost did not start its sources\n%s", a.log.String())
	}
	return a
}

// stop interrupts the agent, fails the test unless it exits cleanly, and
// returns its log.
func (a *agentProc) stop(t *testing.T) string {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("zchost: %v\n%s", err, a.log.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("zchost did not stop on SIGINT\n%s", a.log.String())
	}
	return a.log.String()
}

func TestRunCaptureAFXDP(t *testing.T) {
	testRunCapture(t, []string{"afxdp:IF"}, "AF_XDP copy/driver", 0, nil)
}

// TestRunCaptureAFXDPRing: ?ring=N sizes the socket's fill and RX rings.
func TestRunCaptureAFXDPRing(t *testing.T) {
	testRunCapture(t, []string{"afxdp:IF?ring=256"}, "AF_XDP copy/driver", 0, nil)
}

func TestRunCaptureAFXDPGeneric(t *testing.T) {
	testRunCapture(t, []string{"afxdp:IF?xdp=generic"}, "AF_XDP copy/generic", 0, nil)
}

func TestRunCaptureAFPacket(t *testing.T) {
	testRunCapture(t, []string{"afpacket:IF"}, "AF_PACKET TPACKET_V3", 0, nil)
}

// TestRunCaptureBest: zc:IF picks AF_XDP (copy mode on veth) by itself.
func TestRunCaptureBest(t *testing.T) {
	testRunCapture(t, []string{"zc:IF"}, "AF_XDP copy", 0, nil)
}

// TestRunCaptureTwoQueues: -i afxdp:IF@0 -i afxdp:IF@2 on a 4-queue veth,
// frames steered to RX queue 0, then 2, then 0 again: one balancer, every
// frame exactly once.
func TestRunCaptureTwoQueues(t *testing.T) {
	testRunCapture(t, []string{"afxdp:IF@0", "afxdp:IF@2"}, "AF_XDP copy/driver", 4, []int{0, 2, 0})
}

var sourceTotalRE = regexp.MustCompile(`source total: name=(\S+) packets=(\d+) bytes=(\d+) kernel_drops=(\d+)`)

// testRunCapture runs the built `zchost run -i SPEC...` inside one
// namespace of a veth pair (ip netns exec) and a `zcount -n N --json` child
// on its queue, sends N distinct test frames from the peer namespace (in
// equal parts steered to each RX queue of steer, if any, on a veth of
// queues queues) and checks that zcount received exactly N frames with
// exactly their bytes, that the agent's summaries agree, and that its log
// names the capture mode.
func testRunCapture(t *testing.T, specs []string, wantMode string, queues int, steer []int) {
	testgate.NetAdmin(t)
	const (
		total  = 3000
		window = 128
	)
	bin := binaries(t)
	dir, err := os.MkdirTemp("/dev/shm", "zccap-")
	if err != nil {
		t.Fatalf("temp dir on /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir) // zc.Inspect below and both children
	p := netns.New(t, netns.Config{Queues: queues})
	id := 0x7c000000 | rand.Uint32N(1<<24)
	ids := strconv.FormatUint(uint64(id), 10)

	var wantBytes uint64
	for seq := range uint32(total) {
		wantBytes += uint64(netns.FrameLen(seq, 1400))
	}
	count := exec.Command(filepath.Join(bin, "zcount"), "-i", "zc:"+ids+"@0", "-n", strconv.Itoa(total),
		"--json", "--wait", "30s", "--interval", "0")
	var cout, cerr bytes.Buffer
	count.Stdout, count.Stderr = &cout, &cerr
	if err := count.Start(); err != nil {
		t.Fatal(err)
	}
	countDone := make(chan error, 1)
	go func() { countDone <- count.Wait() }()
	t.Cleanup(func() {
		select {
		case <-countDone:
		default:
			count.Process.Kill()
			<-countDone
		}
	})

	// ip netns exec execs zchost in place: the pid is the agent's.
	args := []string{"netns", "exec", p.A.NS, filepath.Join(bin, "zchost"), "run",
		"-c", ids, "--wait-consumers", "10s", "--stats-interval", "0", "--backing", "shm"}
	for _, spec := range specs {
		args = append(args, "-i", strings.ReplaceAll(spec, "IF", p.A.Ifname))
	}
	agent := startAgent(t, args)
	alog := agent.log

	tx, err := p.B.OpenRaw(netns.EtherType)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	// Flow control on the queue's Sent counter keeps at most window frames
	// in flight, so nothing is lost for want of room anywhere.
	queued := func() uint64 {
		info, err := zc.Inspect(id)
		if err != nil {
			t.Fatalf("zc.Inspect: %v", err)
		}
		return info.Queues[0].Sent
	}
	var buf []byte
	guard := time.Now().Add(60 * time.Second)
	for seq := uint32(0); seq < total; seq++ {
		if len(steer) > 0 && int(seq)%(total/len(steer)) == 0 {
			if err := p.B.SteerTX(steer[int(seq)/(total/len(steer))]); err != nil {
				t.Fatal(err)
			}
		}
		for uint64(seq)-min(uint64(seq), queued()) >= window {
			if time.Now().After(guard) {
				t.Fatalf("agent stalled at %d queued of %d sent\n%s", queued(), seq, alog.String())
			}
			time.Sleep(50 * time.Microsecond)
		}
		buf = netns.AppendFrame(buf[:0], p.A.MAC, p.B.MAC, seq, netns.FrameLen(seq, 1400))
		if err := tx.Send(buf); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-countDone:
		countDone <- err // for the cleanup
		if err != nil {
			t.Fatalf("zcount: %v\n%s%s\nagent:\n%s", err, cout.String(), cerr.String(), alog.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("zcount did not get %d packets\nagent:\n%s", total, alog.String())
	}
	var r countResult
	if err := json.Unmarshal(cout.Bytes(), &r); err != nil {
		t.Fatalf("zcount output %q: %v", cout.String(), err)
	}
	if r.Packets != total || r.Bytes != wantBytes || r.Drops != 0 || r.Error != "" {
		t.Errorf("zcount: %+v, want %d packets, %d bytes, no drops", r, total, wantBytes)
	}

	log := agent.stop(t)
	t.Logf("zchost log:\n%s", log)
	modeLine := ""
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "source ") && strings.Contains(l, wantMode) {
			modeLine = l
		}
	}
	if modeLine == "" {
		t.Errorf("no log line names the capture mode %q", wantMode)
	}
	ms := sourceTotalRE.FindAllStringSubmatch(log, -1)
	if len(ms) != len(specs) {
		t.Fatalf("%d source totals in the log, want %d", len(ms), len(specs))
	}
	var pk, by uint64
	for _, m := range ms {
		n, _ := strconv.ParseUint(m[2], 10, 64)
		b, _ := strconv.ParseUint(m[3], 10, 64)
		pk, by = pk+n, by+b
		if m[4] != "0" || (len(steer) > 0 && n == 0) {
			t.Errorf("agent source total %s: packets=%s kernel_drops=%s, want some and 0", m[1], m[2], m[4])
		}
	}
	if pk != total || by != wantBytes {
		t.Errorf("agent sources: %d packets, %d bytes; want %d, %d", pk, by, total, wantBytes)
	}
}
