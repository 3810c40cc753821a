package vmtest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// PID returns the QEMU process's id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times (100 on
// every Linux architecture Go supports).
const clockTicks = 100

// CPUTime returns the CPU time (user plus system) the QEMU process has used
// so far, from /proc/PID/stat, in 10 ms ticks.
func (vm *VM) CPUTime() (time.Duration, error) {
	return ProcCPUTime(vm.PID())
}

// ProcCPUTime returns the CPU time (user plus system) process pid has used,
// from /proc/PID/stat (fields 14 and 15, after the parenthesised command).
func ProcCPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
