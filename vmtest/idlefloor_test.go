package vmtest

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuUse is the CPU time a process used over a measured stretch of wall
// time.
type cpuUse struct {
	cpu, wall time.Duration
	ticks     bool // measured in /proc/PID/stat's 10 ms ticks: schedstat was unreadable
	exited    int  // threads that exited meanwhile: their last share is missing
}

// share returns the fraction of one CPU the process used.
func (u cpuUse) share() float64 {
	if u.wall <= 0 {
		return 0
	}
	return u.cpu.Seconds() / u.wall.Seconds()
}

func (u cpuUse) String() string {
	s := fmt.Sprintf("%v (%.2f%% of a CPU)", u.cpu.Round(10*time.Microsecond), 100*u.share())
	if u.ticks {
		s += " [10 ms ticks]"
	}
	if u.exited > 0 {
		s += fmt.Sprintf(" [%d threads exited meanwhile, their share missing]", u.exited)
	}
	return s
}

// ratio returns a/b of two shares, +Inf when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return math.Inf(1)
	}
	return a / b
}

// measureCPU returns the CPU time process pid uses over the next d. It sums
// what each thread's /proc/PID/task/TID/schedstat gains (nanoseconds):
// /proc/PID/stat counts 10 ms ticks, coarser than the 3 ms that 0.1% of a
// CPU comes to over 3 s. Without schedstat it falls back to ticks.
func measureCPU(pid int, d time.Duration) (cpuUse, error) {
	before, err := threadCPU(pid)
	start := time.Now()
	if err != nil {
		t0, err := ProcCPUTime(pid)
		if err != nil {
			return cpuUse{}, err
		}
		time.Sleep(d)
		t1, err := ProcCPUTime(pid)
		if err != nil {
			return cpuUse{}, err
		}
		return cpuUse{cpu: t1 - t0, wall: time.Since(start), ticks: true}, nil
	}
	time.Sleep(d)
	after, err := threadCPU(pid)
	if err != nil {
		return cpuUse{}, err
	}
	u := cpuUse{wall: time.Since(start)}
	for tid, ran := range after {
		u.cpu += ran - before[tid] // a new thread: all of its time is new
	}
	for tid := range before {
		if _, ok := after[tid]; !ok {
			u.exited++
		}
	}
	return u, nil
}

// threadCPU returns the CPU time each thread of process pid has run so far,
// by thread id, from the first field of /proc/PID/task/TID/schedstat.
func threadCPU(pid int) (map[string]time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("thread CPU of process %d: %w", pid, err)
	}
	m := make(map[string]time.Duration, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if os.IsNotExist(err) && e.Name() != strconv.Itoa(pid) {
			continue // the thread exited since ReadDir
		}
		if err != nil {
			return nil, fmt.Errorf("thread CPU of process %d: %w", pid, err)
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return nil, fmt.Errorf("thread CPU of process %d: empty %s/%s/schedstat", pid, dir, e.Name())
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("thread CPU of process %d: %w", pid, err)
		}
		m[e.Name()] = time.Duration(ns)
	}
	return m, nil
}
