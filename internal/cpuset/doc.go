// Package cpuset pins goroutines to CPUs for benchmarks and tools that
// want a producer and a consumer on different cores.
//
// Pinning is per OS thread: Pin locks the calling goroutine to its thread
// (runtime.LockOSThread) and sets that thread's affinity. The affinity of
// a thread is inherited by every process it starts, so a pinned thread
// must not start children: a child started from a thread pinned to CPU 0
// runs its whole runtime on CPU 0, next to its parent (measured: a
// two-process benchmark fell from ~300 to 0.65 M packets/s). Start runs
// exec.Cmd.Start on a thread whose affinity is reset to every allowed CPU.
//
// CPU numbers given to Pin are indices into the set of CPUs the process
// was allowed when it started (a container or taskset may allow CPUs 2
// and 3 only; Pin(0) then means CPU 2). With fewer than two allowed CPUs
// pinning buys nothing; Pin returns ErrTooFewCPUs and leaves the thread as
// it was, so callers can log and carry on unpinned.
package cpuset
