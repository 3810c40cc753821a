package xdpgen

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// testRunAttr is the BPF_PROG_TEST_RUN member of union bpf_attr
// (include/uapi/linux/bpf.h, "test"): 76 bytes, padded to 80.
type testRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// testRunLive runs prog on repeat live frames copied from frame, batch at
// a time: one bpf(2) call. Unlike cilium/ebpf's Program.Run it returns
// EINTR when a signal interrupts the kernel's loop (cilium starts the
// whole run again), so a stop request can cut a long call short.
func testRunLive(progFD int, frame []byte, repeat, batch uint32) error {
	attr := testRunAttr{
		progFD:     uint32(progFD),
		dataSizeIn: uint32(len(frame)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat:     repeat,
		flags:      unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		batchSize:  batch,
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(frame)
	if errno != 0 {
		return errno
	}
	return nil
}
