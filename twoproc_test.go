package zc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/cpuset"
)

// The two-process tests and benchmarks re-execute the test binary as a
// child that runs only TestHelperProcess; the environment tells it what
// to do. ZC_DIR is inherited, so the child finds the parent's region.
const (
	envHelper = "ZC_HELPER"       // mode: check, drain, count, socket
	envQueue  = "ZC_HELPER_QUEUE" // zc:ID@Q to attach as consumer
	envCount  = "ZC_HELPER_COUNT" // packets to expect (check, count, socket)
	envBurst  = "ZC_HELPER_BURST" // receive burst (count, socket)
	envCPU    = "ZC_HELPER_CPU"   // CPU index to pin the consumer to
)

// flagEnd marks the last packet of a stream in drain mode.
const flagEnd = 0xE0F

// helperResult is what the child prints on stdout, as one JSON line,
// after a line "ready" once it has attached.
type helperResult struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	First   uint32 `json:"first"`
	Last    uint32 `json:"last"`
	Error   string `json:"error,omitempty"`
}

// TestHelperProcess is the child side of the two-process tests; run on
// its own it skips.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("child of the two-process tests and benchmarks; runs only when they start it")
	}
	res, err := runHelper(mode)
	if err != nil {
		res.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	if err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// helperDeadline bounds every wait of a child, so that a child whose
// parent died or stalled exits instead of hanging.
const helperDeadline = 2 * time.Minute

func runHelper(mode string) (helperResult, error) {
	count, _ := strconv.ParseUint(os.Getenv(envCount), 10, 64)
	burst, _ := strconv.Atoi(os.Getenv(envBurst))
	if burst <= 0 || burst > MaxBurst {
		burst = 32
	}
	switch mode {
	case "socket":
		return helperSocket(count, burst)
	case "create":
		return helperCreate(count)
	}
	q, err := Open(os.Getenv(envQueue))
	if err != nil {
		return helperResult{}, err
	}
	defer q.Close()
	fmt.Println("ready")
	switch mode {
	case "check":
		return helperCheck(q, count, true)
	case "drain":
		return helperCheck(q, 0, false)
	case "count":
		var res helperResult
		var err error
		cpu, cerr := strconv.Atoi(os.Getenv(envCPU))
		if cerr != nil {
			cpu = 1
		}
		cpuset.Pinned(cpu, func() { res, err = helperCount(q, count, burst) })
		return res, err
	}
	return helperResult{}, fmt.Errorf("unknown helper mode %q", mode)
}

// seqLen is the length of packet seq in the correctness tests: 4 to 1500
// bytes, varied.
func seqLen(seq uint32) int { return 4 + int(seq*131%1497) }

// fillSeq writes packet seq: its number (big-endian) then a pattern that
// depends on the number and the position.
func fillSeq(p *Packet, seq uint32) {
	n := seqLen(seq)
	p.Data = p.Data[:n]
	binary.BigEndian.PutUint32(p.Data, seq)
	for i := 4; i < n; i++ {
		p.Data[i] = byte(seq>>3) ^ byte(i)
	}
	p.Seq = seq
}

// checkSeq checks every byte of a packet written by fillSeq.
func checkSeq(p *Packet) (uint32, error) {
	if len(p.Data) < 4 {
		return 0, fmt.Errorf("packet of %d bytes", len(p.Data))
	}
	seq := binary.BigEndian.Uint32(p.Data)
	if p.Seq != seq || len(p.Data) != seqLen(seq) {
		return seq, fmt.Errorf("packet %d: metadata seq %d, length %d, want %d", seq, p.Seq, len(p.Data), seqLen(seq))
	}
	for i := 4; i < len(p.Data); i++ {
		if p.Data[i] != byte(seq>>3)^byte(i) {
			return seq, fmt.Errorf("packet %d: byte %d is %#x, want %#x", seq, i, p.Data[i], byte(seq>>3)^byte(i))
		}
	}
	return seq, nil
}

// helperCheck receives and checks packets written by fillSeq. With exact
// it wants sequence numbers 0..count-1 in order; otherwise strictly
// increasing ones (a drop policy leaves gaps) until a packet flagged
// flagEnd, which it does not count.
func helperCheck(q *Queue, count uint64, exact bool) (helperResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), helperDeadline)
	defer cancel()
	var res helperResult
	got := make([]Packet, 32)
	for !exact || res.Packets < count {
		n, err := q.RecvBurstWait(ctx, got)
		if err != nil {
			return res, err
		}
		for i := range got[:n] {
			p := &got[i]
			if p.Flags == flagEnd {
				q.Release(got[:n]...)
				if i != n-1 {
					return res, fmt.Errorf("%d packets after the end marker", n-1-i)
				}
				return res, nil
			}
			seq, err := checkSeq(p)
			if err != nil {
				return res, err
			}
			switch {
			case exact && seq != uint32(res.Packets):
				return res, fmt.Errorf("got packet %d, want %d", seq, res.Packets)
			case !exact && res.Packets > 0 && seq <= res.Last:
				return res, fmt.Errorf("got packet %d after %d", seq, res.Last)
			}
			if res.Packets == 0 {
				res.First = seq
			}
			res.Last = seq
			res.Packets++
			res.Bytes += uint64(len(p.Data))
		}
		if err := q.Release(got[:n]...); err != nil {
			return res, err
		}
	}
	return res, nil
}

// helperCount is the consumer of BenchmarkTwoProc: it spins on RecvBurst
// (as a pinned poller would) and checks the sequence number in the first
// four bytes of each packet.
func helperCount(q *Queue, count uint64, burst int) (helperResult, error) {
	var res helperResult
	got := make([]Packet, burst)
	start, idle := time.Now(), 0
	for res.Packets < count {
		n, err := q.RecvBurst(got)
		if err != nil {
			return res, err
		}
		if n == 0 {
			idle++
			if idle&127 == 0 {
				runtime.Gosched()
			}
			if idle&(1<<16-1) == 0 && time.Since(start) > helperDeadline {
				return res, fmt.Errorf("timed out after %d packets", res.Packets)
			}
			continue
		}
		for i := range got[:n] {
			if s := binary.LittleEndian.Uint32(got[i].Data); s != uint32(res.Packets) {
				return res, fmt.Errorf("got packet %d, want %d", s, res.Packets)
			}
			res.Packets++
			res.Bytes += uint64(len(got[i].Data))
		}
		if err := q.Release(got[:n]...); err != nil {
			return res, err
		}
	}
	return res, nil
}

// helperSocket is the consumer of the socket baseline: 64-byte records,
// a little-endian sequence number in the first four bytes, on fd 3.
func helperSocket(count uint64, burst int) (helperResult, error) {
	f := os.NewFile(3, "socket")
	if f == nil {
		return helperResult{}, errors.New("no socket on fd 3")
	}
	defer f.Close()
	fmt.Println("ready")
	var res helperResult
	buf := make([]byte, 64*burst)
	var err error
	cpu, cerr := strconv.Atoi(os.Getenv(envCPU))
	if cerr != nil {
		cpu = 1
	}
	cpuset.Pinned(cpu, func() {
		for res.Packets < count {
			k := min(uint64(burst), count-res.Packets)
			if _, err = io.ReadFull(f, buf[:64*k]); err != nil {
				return
			}
			for i := range k {
				if s := binary.LittleEndian.Uint32(buf[64*i:]); s != uint32(res.Packets) {
					err = fmt.Errorf("got record %d, want %d", s, res.Packets)
					return
				}
				res.Packets++
				res.Bytes += 64
			}
		}
	})
	return res, err
}

// child is a running helper process.
type child struct {
	cmd    *exec.Cmd
	lines  chan string   // stdout, line by line; closed at EOF
	done   chan struct{} // closed once the child exited and was reaped
	err    error         // cmd.Wait's result, set before done is closed
	stderr *syncBuffer
}

// startChild starts the test binary as a helper in mode, with extra
// environment and files (fd 3 onwards), from an unpinned thread.
func startChild(t testing.TB, mode string, env []string, files ...*os.File) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(append(os.Environ(), envHelper+"="+mode), env...)
	cmd.ExtraFiles = files
	c := &child{cmd: cmd, lines: make(chan string, 16), done: make(chan struct{}), stderr: &syncBuffer{}}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cpuset.Start(cmd); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// line waits for the child's next stdout line.
func (c *child) line(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			<-c.done
			t.Fatalf("helper exited early: %v\nstderr:\n%s", c.err, c.stderr)
		}
		return l
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		t.Fatalf("helper silent for %v\nstderr:\n%s", timeout, c.stderr)
	}
	return ""
}

// result waits for the child's JSON line and its exit.
func (c *child) result(t testing.TB, timeout time.Duration) helperResult {
	t.Helper()
	l := c.line(t, timeout)
	var res helperResult
	if err := json.Unmarshal([]byte(l), &res); err != nil {
		t.Fatalf("helper printed %q: %v\nstderr:\n%s", l, err, c.stderr)
	}
	<-c.done
	if c.err != nil || res.Error != "" {
		t.Fatalf("helper: exit %v, error %q\nstderr:\n%s", c.err, res.Error, c.stderr)
	}
	return res
}

// exited reports whether the child has exited (without waiting).
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// syncBuffer is a bytes.Buffer safe for the exec copier and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// produceSeq sends packets first..first+n-1 written by fillSeq. With
// wait it waits while the queue is full (lossless); otherwise it drops
// what does not fit, as a capture engine would. It returns the next
// sequence number.
func produceSeq(ctx context.Context, t testing.TB, q *Queue, first, n uint32, wait bool) uint32 {
	t.Helper()
	pkts := make([]Packet, 32)
	seq, end := first, first+n
	for seq != end {
		k, err := q.Alloc(pkts[:min(uint32(len(pkts)), end-seq)])
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			// Every buffer is out on loan: only a consumer can free one.
			if !wait {
				t.Fatalf("no free buffer at packet %d under the drop policy", seq)
			}
			if err := ctx.Err(); err != nil {
				t.Fatalf("packet %d: %v", seq, err)
			}
			runtime.Gosched()
			continue
		}
		for i := range pkts[:k] {
			fillSeq(&pkts[i], seq+uint32(i))
		}
		var sent int
		if wait {
			sent, err = q.SendBurstWait(ctx, pkts[:k])
		} else {
			sent, err = q.SendBurst(pkts[:k])
			q.Drop(pkts[sent:k])
		}
		if err != nil {
			t.Fatalf("send packet %d: %v", seq+uint32(sent), err)
		}
		seq += uint32(k)
	}
	return seq
}

// TestTwoProcess sends a million sequence-numbered packets of varied
// lengths to a consumer in another process, through a real region on
// /dev/shm, losslessly. The child checks every sequence number and every
// byte; the parent checks the child's counts and the queue's counters in
// the region.
func TestTwoProcess(t *testing.T) {
	total := uint32(1_000_000)
	if testing.Short() {
		total = 100_000
	}
	c := newCluster(t, Config{ID: 41, Queues: 1, QueueLen: 1024})
	prod := mustQ(t)(c.Producer(0))
	ch := startChild(t, "check", []string{envQueue + "=zc:41@0", envCount + "=" + strconv.Itoa(int(total))})
	if l := ch.line(t, time.Minute); l != "ready" {
		t.Fatalf("helper said %q\nstderr:\n%s", l, ch.stderr)
	}
	// Stop producing if the child dies: SendBurstWait would wait forever.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-ch.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	produceSeq(ctx, t, prod, 0, total, true)
	res := ch.result(t, time.Minute)

	var wantBytes uint64
	for s := range total {
		wantBytes += uint64(seqLen(s))
	}
	if res.Packets != uint64(total) || res.Bytes != wantBytes || res.First != 0 || res.Last != total-1 {
		t.Fatalf("child received %+v, want %d packets, %d bytes", res, total, wantBytes)
	}
	prod.Pool().Reclaim()
	st := prod.Stats()
	if st.Sent != uint64(total) || st.Received != st.Sent || st.SentBytes != wantBytes || st.ReceivedBytes != wantBytes {
		t.Fatalf("stats: sent %d (%d B) received %d (%d B), want %d (%d B)", st.Sent, st.SentBytes, st.Received, st.ReceivedBytes, total, wantBytes)
	}
	if st.Drops != 0 || st.Bad != 0 || st.BadReturns != 0 || st.Depth != 0 {
		t.Fatalf("stats: drops %d bad %d bad returns %d depth %d", st.Drops, st.Bad, st.BadReturns, st.Depth)
	}
	if st.Returned != uint64(total) || st.Reclaimed != uint64(total) || prod.Outstanding() != 0 {
		t.Fatalf("returned %d reclaimed %d outstanding %d, want %d, %d, 0", st.Returned, st.Reclaimed, prod.Outstanding(), total, total)
	}
	if st.Consumer != 0 {
		t.Fatalf("consumer end still held by pid %d after the child closed it", st.Consumer)
	}
}

// TestTwoProcessConsumerKilled kills the consumer process mid-stream. The
// producer goes on under the drop policy (drops counted, nothing waits),
// and a new process attaches to the consumer end the dead one still holds
// in the region: the stale owner is replaced, the new consumer receives
// what was queued and what follows, and the counters add up.
func TestTwoProcessConsumerKilled(t *testing.T) {
	const slots = 256
	c := newCluster(t, Config{ID: 42, Queues: 1, QueueLen: slots})
	prod := mustQ(t)(c.Producer(0))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	queue := envQueue + "=zc:42@0"

	first := startChild(t, "drain", []string{queue})
	if l := first.line(t, time.Minute); l != "ready" {
		t.Fatalf("first helper said %q", l)
	}
	if pid := prod.Stats().Consumer; pid != uint32(first.cmd.Process.Pid) {
		t.Fatalf("consumer owner %d, want the first child %d", pid, first.cmd.Process.Pid)
	}
	// Stream until the first child has taken a good number of packets.
	var seq, attempts uint32
	for prod.Stats().Received < 20_000 {
		if first.exited() || ctx.Err() != nil {
			t.Fatalf("first child received %d packets, then: exited %v, ctx %v\nstderr:\n%s", prod.Stats().Received, first.exited(), ctx.Err(), first.stderr)
		}
		seq = produceSeq(ctx, t, prod, seq, 1000, false)
		attempts += 1000
	}
	first.cmd.Process.Kill()
	<-first.done

	// Nobody consumes: the queue fills and the rest is dropped, counted.
	before := prod.Stats()
	if before.Consumer != uint32(first.cmd.Process.Pid) {
		t.Fatalf("consumer owner %d after the kill, want the dead child's %d", before.Consumer, first.cmd.Process.Pid)
	}
	seq = produceSeq(ctx, t, prod, seq, 10_000, false)
	attempts += 10_000
	mid := prod.Stats()
	if mid.Drops-before.Drops < 10_000-slots || mid.Sent+mid.Drops != uint64(attempts) {
		t.Fatalf("with no consumer: sent %d drops %d (before %d/%d), attempts %d", mid.Sent, mid.Drops, before.Sent, before.Drops, attempts)
	}

	// A new consumer replaces the dead one.
	second := startChild(t, "drain", []string{queue})
	if l := second.line(t, time.Minute); l != "ready" {
		t.Fatalf("second helper said %q", l)
	}
	if pid := prod.Stats().Consumer; pid != uint32(second.cmd.Process.Pid) {
		t.Fatalf("consumer owner %d, want the second child %d", pid, second.cmd.Process.Pid)
	}
	seq = produceSeq(ctx, t, prod, seq, 20_000, false)
	attempts += 20_000
	// The end marker goes in losslessly.
	var end [1]Packet
	for {
		if n, err := prod.Alloc(end[:]); err != nil || n == 1 {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		runtime.Gosched()
	}
	fillSeq(&end[0], seq)
	end[0].Flags = flagEnd
	if _, err := prod.SendBurstWait(ctx, end[:]); err != nil {
		t.Fatalf("end marker: %v\nstderr:\n%s", err, second.stderr)
	}
	attempts++
	res := second.result(t, time.Minute)

	st := prod.Stats()
	if st.Sent+st.Drops != uint64(attempts) {
		t.Fatalf("sent %d + drops %d != %d attempts", st.Sent, st.Drops, attempts)
	}
	if st.Received != st.Sent || st.Depth != 0 || st.Bad != 0 {
		t.Fatalf("sent %d received %d depth %d bad %d", st.Sent, st.Received, st.Depth, st.Bad)
	}
	if res.Packets+1 != st.Received-before.Received || res.Packets == 0 {
		t.Fatalf("second child got %d packets (+1 end marker), the queue counted %d after the kill", res.Packets, st.Received-before.Received)
	}
	if st.Consumer != 0 {
		t.Fatalf("consumer end held by %d after the second child closed it", st.Consumer)
	}
	prod.Pool().Reclaim()
	t.Logf("sent %d, dropped %d, first child %d, second %d; buffers the killed child held, recovered at the second attach: %d; outstanding now %d",
		st.Sent, st.Drops, before.Received, res.Packets, st.Recovered, prod.Outstanding())
	// The handshake gave back everything the killed child held: nothing
	// is lent any more once the second child released all it read.
	if prod.Outstanding() != 0 {
		t.Fatalf("%d buffers still lent after the second consumer drained and closed (recovered %d)", prod.Outstanding(), st.Recovered)
	}
	if strings.TrimSpace(second.stderr.String()) != "" {
		t.Logf("second child stderr: %s", second.stderr)
	}
}
