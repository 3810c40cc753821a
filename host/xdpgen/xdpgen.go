// Package xdpgen floods an interface with frames from inside the kernel.
//
// A user-space generator (trafgen, zsend) pays a system call, an skb and a
// socket's send-buffer accounting for every frame, and on a veth pair the
// receiver's work runs on the sender's CPU as well: on a small machine it
// cannot offer more than a capture can take, so it cannot rank captures.
// xdpgen uses the kernel's XDP "live frame" test mode instead
// (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, Linux >= 5.18): the
// kernel builds each frame from a template in a page pool and runs a small
// XDP program on it that counts the frame in a map and redirects it to the
// target interface's ndo_xdp_xmit, without an skb. On a veth the frame
// lands in the peer's receive ring as an XDP frame, as a NIC's DMA would:
// the peer needs NAPI for that (an XDP program attached, or GRO on:
// `ethtool -K PEER gro on`), otherwise the kernel refuses each frame.
//
// The count in the map is exact (it is what the program ran on), whatever
// interrupted the system call. Frames the target could not take because
// its ring was full are counted by its driver (veth:
// tx_queue_N_xdp_xmit_errors in `ethtool -S`), but a veth whose peer has
// no NAPI refuses every frame without counting it: compare Sent with the
// interface's tx_packets, as `zchost flood` does.
package xdpgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// MaxBatch is the kernel's limit on frames per live-frame batch
// (TEST_XDP_MAX_BATCH).
const MaxBatch = 256

// ErrUnsupported: the kernel has no XDP live-frame mode, or the process may
// not load BPF programs.
var ErrUnsupported = errors.New("xdpgen: kernel XDP live-frame mode unavailable")

// Flood sends copies of one frame out of one interface. Its methods must be
// called from one goroutine at a time, except Sent.
type Flood struct {
	ifname string
	frame  []byte
	batch  uint32
	count  *ebpf.Map
	prog   *ebpf.Program
}

// Config says where and what to send.
type Config struct {
	// Ifname is the interface to send out of, in the calling thread's
	// network namespace.
	Ifname string
	// Frame is the template every frame copies: a whole Ethernet frame, at
	// least 14 bytes and at most a page less XDP headroom.
	Frame []byte
	// Batch is how many frames the kernel builds and flushes at a time
	// (1..MaxBatch; 0 means MaxBatch).
	Batch int
}

// Open loads the generator program for cfg.Ifname.
func Open(cfg Config) (*Flood, error) {
	if len(cfg.Frame) < 14 || len(cfg.Frame) > 3500 {
		return nil, fmt.Errorf("xdpgen: %s: frame of %d bytes: want 14 to 3500", cfg.Ifname, len(cfg.Frame))
	}
	if cfg.Batch < 0 || cfg.Batch > MaxBatch {
		return nil, fmt.Errorf("xdpgen: %s: batch %d: want 1 to %d", cfg.Ifname, cfg.Batch, MaxBatch)
	}
	batch := uint32(cfg.Batch)
	if batch == 0 {
		batch = MaxBatch
	}
	ifi, err := net.InterfaceByName(cfg.Ifname)
	if err != nil {
		return nil, fmt.Errorf("xdpgen: %s: %w", cfg.Ifname, err)
	}
	count, err := ebpf.NewMap(&ebpf.MapSpec{Name: "zc_gen_count", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("xdpgen: %s: counter map: %w", cfg.Ifname, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "zc_gen",
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: program(count.FD(), ifi.Index),
	})
	if err != nil {
		count.Close()
		return nil, fmt.Errorf("xdpgen: %s: load program: %w", cfg.Ifname, err)
	}
	return &Flood{ifname: cfg.Ifname, frame: append([]byte(nil), cfg.Frame...), batch: batch, count: count, prog: prog}, nil
}

// program counts the frame in slot 0 of the map (an atomic add) and
// returns bpf_redirect(ifindex, 0).
func program(mapFD, ifindex int) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.R10, -4, 0, asm.Word), // key = 0
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "redirect"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R1, int32(ifindex)).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
	}
}

// Send pushes n frames. A signal that interrupts the kernel's loop does
// not cut it short: Send goes on with the frames not sent yet (Sent counts
// exactly).
func (f *Flood) Send(n uint32) error {
	_, err := f.send(context.Background(), n)
	return err
}

// errENOTSUPP is the kernel's internal ENOTSUPP (524), which bpf(2)
// returns for a program type without test runs.
const errENOTSUPP = unix.Errno(524)

// send pushes n frames, or fewer if ctx ends first: it then interrupts
// the call in progress and returns false.
func (f *Flood) send(ctx context.Context, n uint32) (bool, error) {
	for n > 0 {
		before, err := f.Sent()
		if err != nil {
			return false, err
		}
		err = f.runOnce(ctx, n)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, unix.EINTR) {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM) || errors.Is(err, errENOTSUPP) {
				return false, fmt.Errorf("xdpgen: send %d frames out of %s: %w (%w)", n, f.ifname, ErrUnsupported, err)
			}
			return false, fmt.Errorf("xdpgen: send %d frames out of %s: %w", n, f.ifname, err)
		}
		if ctx.Err() != nil {
			return false, nil
		}
		after, err := f.Sent()
		if err != nil {
			return false, err
		}
		n -= uint32(min(after-before, uint64(n)))
	}
	return true, nil
}

// runOnce is one bpf(2) call for n frames. Once ctx ends, a watcher sends
// SIGURG (which the Go runtime expects at any time: it is its preemption
// signal) to the calling thread, every millisecond until the call
// returns, so that the kernel's loop sees a pending signal and ends with
// EINTR.
func (f *Flood) runOnce(ctx context.Context, n uint32) error {
	if ctx.Done() == nil {
		return testRunLive(f.prog.FD(), f.frame, n, f.batch)
	}
	runtime.LockOSThread() // the signal must reach this thread
	defer runtime.UnlockOSThread()
	var (
		mu     sync.Mutex
		inCall = true
		pid    = unix.Getpid()
		tid    = unix.Gettid()
	)
	stop := context.AfterFunc(ctx, func() {
		for {
			mu.Lock()
			if !inCall {
				mu.Unlock()
				return
			}
			_ = unix.Tgkill(pid, tid, unix.SIGURG)
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	})
	err := testRunLive(f.prog.FD(), f.frame, n, f.batch)
	mu.Lock()
	inCall = false
	mu.Unlock()
	stop()
	return err
}

// Sent returns how many frames the program has run on (handed to the
// target's transmit) since Open.
func (f *Flood) Sent() (uint64, error) {
	var v uint64
	if err := f.count.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("xdpgen: %s: read counter: %w", f.ifname, err)
	}
	return v, nil
}

// Run sends until count frames have gone (0: no limit), ctx is done or
// the duration d has passed (0: no limit), at most pps frames a second
// (0: as fast as the kernel builds them). It returns the frames sent.
// When ctx ends, the kernel call in progress is interrupted: Run returns
// within a millisecond or so, not at the end of the call.
//
// Each Send pays a fixed cost (the kernel sets up and tears down a page
// pool; measured here: 15-20 ms, BenchmarkSend), so Run grows its calls until one
// takes about 50 ms, and paces in steps of at most 100 ms worth of frames:
// a paced flood comes in bursts at full speed.
func (f *Flood) Run(ctx context.Context, count uint64, pps float64, d time.Duration) (uint64, error) {
	start := time.Now()
	chunk := uint64(16 * MaxBatch)
	rate := 0.0 // frames per second of the last call
	for {
		sent, err := f.Sent()
		if err != nil {
			return sent, err
		}
		if count > 0 && sent >= count {
			return sent, nil
		}
		if stopped(ctx.Done()) || (d > 0 && time.Since(start) >= d) {
			return sent, nil
		}
		n := chunk
		if count > 0 {
			n = min(n, count-sent)
		}
		if d > 0 && rate > 0 {
			n = min(n, max(MaxBatch, uint64((d-time.Since(start)).Seconds()*rate)))
		}
		if pps > 0 {
			n = min(n, max(1, uint64(pps/10)))
			due := start.Add(time.Duration(float64(sent) / pps * 1e9))
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
				continue
			}
		}
		t0 := time.Now()
		whole, err := f.send(ctx, uint32(n))
		if err != nil || !whole {
			s, _ := f.Sent()
			return s, err
		}
		dt := time.Since(t0)
		rate = float64(n) / max(dt.Seconds(), 1e-6)
		if dt < 50*time.Millisecond && chunk < 1<<24 {
			chunk *= 2
		}
	}
}

// stopped reports whether done is closed, without blocking.
func stopped(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Close unloads the program.
func (f *Flood) Close() error {
	return errors.Join(f.prog.Close(), f.count.Close())
}
