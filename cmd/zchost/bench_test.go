package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkEndToEnd moves b.N 64-byte frames from zsend to zcount, two
// processes, through a cluster that zchost created (zsend produces with
// the queue's own buffers; zcount verifies every frame). The timer runs
// from zsend's start to zcount's exit, process start-up included. The
// baseline in the same run is the same count of 64-byte messages written
// one per write(2) into a SOCK_SEQPACKET unix socketpair and read by a
// child process one per read(2): a copy through a socket.
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("zsend-zcount", benchZsendZcount)
	b.Run("socket", benchSocket)
}

func benchZsendZcount(b *testing.B) {
	bin := binaries(b)
	env := shmEnv(b)
	id := strconv.Itoa(60000 + os.Getpid()%5000)
	agent := exec.Command(filepath.Join(bin, "zchost"), "run", "-c", id, "-n", "1", "--queue-buffers", "4096", "--backing", "shm", "--stats-interval", "0")
	agent.Env = env
	if err := agent.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { agent.Process.Signal(os.Interrupt); agent.Wait() }()
	n := strconv.Itoa(b.N)
	count := exec.Command(filepath.Join(bin, "zcount"), "-i", "zc:"+id+"@0", "-n", n, "--verify", "--json", "--wait", "20s", "--interval", "0")
	count.Env = env
	out, _ := count.StdoutPipe()
	if err := count.Start(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // both attached: the timer measures the transfer
	send := exec.Command(filepath.Join(bin, "zsend"), "-o", "zc:"+id+"@0", "-n", n, "-l", "64", "--wait", "20s")
	send.Env = env
	b.ResetTimer()
	if err := send.Start(); err != nil {
		b.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		err := send.Wait()
		if err != nil {
			count.Process.Kill() // zcount would wait forever
		}
		sent <- err
	}()
	guard := time.AfterFunc(time.Minute+time.Duration(b.N)*time.Microsecond, func() { count.Process.Kill() })
	defer guard.Stop()
	var res struct {
		Packets, Verified uint64
		PPS               float64
	}
	derr := json.NewDecoder(out).Decode(&res)
	count.Wait()
	b.StopTimer()
	if err := <-sent; err != nil {
		b.Fatalf("zsend: %v", err)
	}
	if derr != nil {
		b.Fatalf("zcount: %v", derr)
	}
	if res.Packets != uint64(b.N) || res.Verified != uint64(b.N) {
		b.Fatalf("zcount: %+v of %d", res, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

func benchSocket(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		b.Fatal(err)
	}
	parent, childEnd := os.NewFile(uintptr(fds[0]), "parent"), os.NewFile(uintptr(fds[1]), "child")
	defer parent.Close()
	child := exec.Command(os.Args[0], "-test.run=^TestHelperSocketSink$")
	child.Env = append(os.Environ(), "ZC_SINK_COUNT="+strconv.Itoa(b.N))
	child.ExtraFiles = []*os.File{childEnd}
	stdout, _ := child.StdoutPipe()
	b.ResetTimer()
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	childEnd.Close()
	msg := make([]byte, 64)
	for i := range b.N {
		binary.BigEndian.PutUint64(msg, uint64(i))
		if _, err := parent.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	child.Wait()
	b.StopTimer()
	if line != fmt.Sprintf("%d\n", b.N) {
		b.Fatalf("sink read %q of %d", line, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
}

// TestHelperSocketSink is the baseline's child process: it reads
// ZC_SINK_COUNT 64-byte messages from fd 3, checks their order, and
// prints the count.
func TestHelperSocketSink(t *testing.T) {
	want, err := strconv.Atoi(os.Getenv("ZC_SINK_COUNT"))
	if err != nil {
		t.Skip("helper process for BenchmarkEndToEnd")
	}
	f := os.NewFile(3, "sock")
	buf := make([]byte, 64)
	for i := range want {
		n, err := f.Read(buf)
		if err != nil && err != io.EOF || n != 64 || binary.BigEndian.Uint64(buf) != uint64(i) {
			fmt.Printf("bad message %d: %d bytes, %v\n", i, n, err)
			os.Exit(1)
		}
	}
	fmt.Printf("%d\n", want)
	os.Exit(0)
}
