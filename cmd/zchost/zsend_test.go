package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/pcaptest"
)

// zsendRun runs zchost run (no source, the queue's own buffers), zcount
// on its queue 0 and zsend into it, and returns zcount's and zsend's
// summaries.
func zsendRun(t *testing.T, id string, count int, zcountArgs []string, zsendArgs ...string) (countResult, map[string]any) {
	t.Helper()
	bin := binaries(t)
	env := shmEnv(t)
	agent := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-n", "1", "--queue-buffers", "1024", "--backing", "shm", "--stats-interval", "0")
	agent.Env = env
	var alog bytes.Buffer
	agent.Stdout, agent.Stderr = &alog, &alog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		agent.Process.Signal(os.Interrupt)
		agent.Wait()
	}()
	cnt := exec.Command(filepath.Join(bin, "zcount"), append([]string{"-i", "zc:" + id + "@0", "-n", strconv.Itoa(count), "--json", "--interval", "0", "--wait", "20s"}, zcountArgs...)...)
	cnt.Env = env
	var cout, cerr bytes.Buffer
	cnt.Stdout, cnt.Stderr = &cout, &cerr
	if err := cnt.Start(); err != nil {
		t.Fatal(err)
	}
	defer cnt.Process.Kill()
	send := exec.Command(filepath.Join(bin, "zsend"), append([]string{"-o", "zc:" + id + "@0", "--json", "--wait", "20s"}, zsendArgs...)...)
	send.Env = env
	sout, err := send.Output()
	if err != nil {
		t.Fatalf("zsend: %v\nagent:\n%s", err, alog.String())
	}
	done := make(chan error, 1)
	go func() { done <- cnt.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("zcount: %v\n%s", err, cerr.String())
		}
	case <-time.After(60 * time.Second): // a hang bound
		t.Fatalf("zcount did not finish\n%s", cerr.String())
	}
	var r countResult
	if err := json.Unmarshal(cout.Bytes(), &r); err != nil {
		t.Fatalf("zcount output %q: %v", cout.String(), err)
	}
	var s map[string]any
	if err := json.Unmarshal(sout, &s); err != nil {
		t.Fatalf("zsend output %q: %v", sout, err)
	}
	return r, s
}

// TestZsendIntoZcount: zsend's lossless fast path (frames made in place,
// Reserve/Commit) into zcount --verify, the queue's 1024 buffers each
// reused about 300 times: every frame arrives once, in order, intact,
// with the byte counts of both sides equal.
func TestZsendIntoZcount(t *testing.T) {
	const n = 300_000
	for _, tc := range []struct {
		name string
		args []string
		size int
	}{
		{"64B-timestamped", []string{"-l", "64"}, 64},
		{"1500B-no-meta", []string{"-l", "1500", "--timestamp=false"}, 1500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strconv.Itoa(30000 + os.Getpid()%10000)
			r, s := zsendRun(t, id, n, []string{"--verify"}, append(tc.args, "-n", strconv.Itoa(n))...)
			if r.Packets != n || r.Verified != n || r.Corrupt != 0 || r.OutOfOrder != 0 || r.Bytes != uint64(n*tc.size) {
				t.Errorf("zcount: %+v, want %d packets verified, %d bytes", r, n, n*tc.size)
			}
			if s["packets"] != float64(n) || s["bytes"] != float64(n*tc.size) || s["drops"] != float64(0) {
				t.Errorf("zsend: %v, want %d packets, %d bytes, no drops", s, n, n*tc.size)
			}
		})
	}
}

// TestZsendPcap: zsend -f sends a pcap file's frames, each whole; zsend
// stops at the file's end and says how many it sent.
func TestZsendPcap(t *testing.T) {
	const n = 1000
	var want uint64
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = make([]byte, 2048)
		frames[i] = frames[i][:zc.SynthFrame(frames[i], uint64(i), 60+i%1400, 64)]
		want += uint64(len(frames[i]))
	}
	path := pcaptest.File(t, frames...)
	id := strconv.Itoa(20000 + os.Getpid()%10000)
	r, s := zsendRun(t, id, n, []string{"--verify"}, "-f", path, "-n", "0")
	if r.Packets != n || r.Verified != n || r.Bytes != want {
		t.Errorf("zcount: %+v, want %d packets verified, %d bytes", r, n, want)
	}
	if s["packets"] != float64(n) || s["bytes"] != float64(want) {
		t.Errorf("zsend: %v, want %d packets, %d bytes", s, n, want)
	}
}
