package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/internal/idle"
)

// Source writes packets into buffers of a cluster's engine pool.
type Source interface {
	// Name is the source as given on the command line (gen:..., eth0).
	Name() string
	// Recv fills up to len(pkts) packets with buffers taken from pool and
	// returns how many, without blocking (0 when nothing is there now).
	// It returns io.EOF once the source is exhausted (a generator's count,
	// the end of a pcap file), together with its last packets.
	Recv(pool *zc.Pool, pkts []zc.Packet) (int, error)
	// Stats returns the source's counters.
	Stats() SourceStats
	// Close releases the source's kernel resources.
	Close() error
}

// SourceStats are a source's counters.
type SourceStats struct {
	// Packets and Bytes count what the source handed to the engine.
	Packets, Bytes uint64
	// KernelDrops counts what the kernel dropped before the source saw it
	// (AF_PACKET drops, AF_XDP rx_dropped + rx_ring_full).
	KernelDrops uint64
	// NoBuffer counts times the source had to wait for a free buffer.
	NoBuffer uint64
	// Filtered counts packets received and rejected by the source's
	// user-space BPF filter (SourceOptions.Filter).
	Filtered uint64
	// Truncated counts frames longer than a buffer, delivered cut to the
	// buffer size (a pcap file's, or AF_PACKET's).
	Truncated uint64
	// Position is how far a Resumable source got: frames generated
	// (filtered ones included), records read. Resume continues from it.
	Position uint64
}

// Waiter is a source that knows when its next packet is due (a paced
// generator): an engine whose every live source is a Waiter sleeps until
// the earliest instead of polling.
type Waiter interface {
	// ReadyAt returns when the next packet is due, or the zero time when
	// it does not know (poll).
	ReadyAt() time.Time
}

// Finite is a source that ends by itself: a generator with a count, a
// pcap replay. Opened again (an agent restarted, adopting its
// predecessor's cluster), it starts from its beginning unless it is
// Resumable and resumed.
type Finite interface {
	Finite() bool
}

// Resumable is a source that can continue where an earlier one of the
// same spec got (SourceStats.Position): an agent that adopts its
// predecessor's cluster resumes its generators and replays instead of
// sending them again from the start.
type Resumable interface {
	Finite
	// Resume, before the first Recv, skips the first position frames or
	// records, as if this source had produced them.
	Resume(position uint64)
	// Position is SourceStats.Position, cheaply: how far the source got.
	Position() uint64
}

var (
	_ Resumable = (*Gen)(nil)
	_ Resumable = (*Pcap)(nil)
)

// EngineStats count what an engine run moved.
type EngineStats struct {
	Packets, Bytes uint64
	Elapsed        time.Duration
	// Failed lists the sources that stopped on an error (each error names
	// its source); the others went on.
	Failed []error
}

// Engine moves packets from its sources through a balancer onto the
// cluster's queues. Run it on one goroutine (the pool and queues are
// single-threaded).
type Engine struct {
	Pool     *zc.Pool
	Sources  []Source
	Balancer *zc.Balancer
	// Burst is the number of packets moved per step (default 32).
	Burst int
	// OnIdle, if set, is called when no source had anything.
	OnIdle func()
	// OnStart, if set, is called once the sources are ready to take
	// packets (an AF_XDP source's fill ring is stocked), before the first
	// Recv. Frames that arrive after it are not lost for want of a buffer.
	OnStart func()
	// OnSourceError, if set, is called (on Run's goroutine) when a source
	// fails; Run goes on with the others.
	OnSourceError func(s Source, err error)
	// Control, if set, is polled between bursts (every 64 busy bursts and
	// on every idle poll): each function received runs on Run's
	// goroutine, the only one that may touch the pool and the balancer
	// (Balancer.Replace). A sender calls Wake, else a Run asleep on quiet
	// sockets takes the function only when it wakes (up to pollSlice).
	Control <-chan func()
	// OnPosition, if set, is called on Run's goroutine with a finite
	// Resumable source's index and position (Resumable.Position) each
	// time the position moved, after the burst went through the
	// balancer: what was pushed, exactly, for a successor to resume from
	// after a kill (an agent keeps it in a status.Marks).
	OnPosition func(source int, position uint64)

	mu         sync.Mutex
	snap       []SourceStats // the sources' counters as last published by Run
	pollSleeps atomic.Uint64
	pw         atomic.Pointer[poller] // Run's, while it runs
}

// Wake makes a Run asleep in poll(2) on its sources' sockets look at
// Control now: send a Control function, then call Wake (a Run asleep on
// a paced source's timer selects on Control already). Safe from any
// goroutine; a Run that is not asleep looks at Control soon anyway.
func (e *Engine) Wake() {
	if p := e.pw.Load(); p != nil {
		p.poke()
	}
}

// PollSleeps returns how many times Run slept in poll(2) on its sources'
// sockets because the wire was quiet (Pollable), a sleep in progress
// included. Safe from any goroutine.
func (e *Engine) PollSleeps() uint64 { return e.pollSleeps.Load() }

// publishEvery is how often Run copies its sources' counters for
// SourceStats.
const publishEvery = 250 * time.Millisecond

// SourceStats returns each source's counters (in Sources order) as Run
// last published them: about every 250 ms while packets come, within
// 250 ms after they stop, and when it returns. Safe from any goroutine,
// unlike Source.Stats while Run runs.
func (e *Engine) SourceStats() []SourceStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.snap)
}

// publish copies the sources' counters for SourceStats (on Run's
// goroutine: Source.Stats is not safe against a concurrent Recv).
func (e *Engine) publish() {
	snap := make([]SourceStats, len(e.Sources))
	for i, s := range e.Sources {
		snap[i] = s.Stats()
	}
	e.mu.Lock()
	e.snap = snap
	e.mu.Unlock()
}

// primer is a source that stocks kernel rings from the pool before its
// first Recv.
type primer interface {
	prime(pool *zc.Pool)
}

// Run moves packets until every source is exhausted or failed, or ctx
// ends, and returns nil. A source that fails (its error, or a fault on
// the region memory it writes) stops alone: it is listed in
// EngineStats.Failed and reported to OnSourceError. A queue that fails is
// the balancer's business (the queue's loss only, see zc.Balancer). Under
// full load a stop is noticed within 64 bursts.
func (e *Engine) Run(ctx context.Context) (EngineStats, error) {
	var st EngineStats
	start := time.Now()
	burst := e.Burst
	if burst <= 0 || burst > zc.MaxBurst {
		burst = 32
	}
	pkts := make([]zc.Packet, burst)
	live := make([]bool, len(e.Sources))
	nlive := len(e.Sources)
	for i := range live {
		live[i] = true
	}
	for _, s := range e.Sources {
		if p, ok := s.(primer); ok {
			p.prime(e.Pool)
		}
	}
	if e.OnStart != nil {
		e.OnStart()
	}
	var pace idle.Pacer
	done := ctx.Done()
	pw := newPoller(ctx, &e.pollSleeps)
	e.pw.Store(pw)
	defer func() { e.pw.Store(nil); pw.close() }()
	e.publish()
	defer e.publish()
	// pending: the sources' counters may have moved since the last
	// publish (packets came, or a sleep ended: a frame that was filtered
	// out moves a counter too). A pending engine sleeps at most until the
	// next publish is due.
	published, iter, pending := time.Now(), 0, false
	var timer *time.Timer
	// The finite sources whose positions OnPosition follows.
	marked := make([]uint64, len(e.Sources))
	follow := make([]Resumable, len(e.Sources))
	if e.OnPosition != nil {
		for i, s := range e.Sources {
			if r, ok := s.(Resumable); ok && r.Finite() {
				follow[i], marked[i] = r, r.Position()
			}
		}
	}
	for nlive > 0 {
		got := 0
		for i, s := range e.Sources {
			if !live[i] {
				continue
			}
			var n int
			var err error
			if ferr := zc.CatchFault(func() { n, err = s.Recv(e.Pool, pkts) }); ferr != nil {
				n, err = 0, ferr
			}
			if n > 0 {
				got += n
				pending = true
				st.Packets += uint64(n)
				for j := range pkts[:n] {
					st.Bytes += uint64(len(pkts[j].Data))
				}
				if perr := e.Balancer.Push(ctx, pkts[:n]); perr != nil {
					// Only a stop ends a push early: queues fail alone.
					st.Elapsed = time.Since(start)
					return st, nil
				}
			}
			if r := follow[i]; r != nil {
				if pos := r.Position(); pos != marked[i] {
					marked[i] = pos
					e.OnPosition(i, pos)
				}
			}
			if errors.Is(err, io.EOF) {
				live[i] = false
				nlive--
			} else if err != nil {
				live[i] = false
				nlive--
				err = fmt.Errorf("zchost: source %s: %w", s.Name(), err)
				st.Failed = append(st.Failed, err)
				if e.OnSourceError != nil {
					e.OnSourceError(s, err)
				}
			}
		}
		pace.Work(got)
		busy := idle.Busy(got)
		if iter++; iter&255 == 0 || !busy {
			if now := time.Now(); now.Sub(published) >= publishEvery {
				e.publish()
				published, pending = now, false
			}
		}
		if busy && iter&63 != 0 {
			continue
		}
		select { // not ctx.Err(): that takes a mutex on every idle poll
		case <-done:
			st.Elapsed = time.Since(start)
			return st, nil
		case f := <-e.Control:
			f()
		default:
		}
		if busy {
			continue
		}
		e.Balancer.Reclaim()
		if e.OnIdle != nil {
			e.OnIdle()
		}
		if pace.Quiet() && pw.sleep(e.Sources, live, pollLimit(pending, published)) {
			// Every source is a socket the kernel wakes us on.
			pace.Reset()
			pending = true
			continue
		}
		if d, nap := e.idleFor(live); nap {
			// Due within a couple of milliseconds: one nanosleep on this
			// thread, about 60 µs late, instead of polling through it.
			idle.Nap(d)
			pace.Reset()
			continue
		} else if d > 0 {
			// Every source is waiting for its time: sleep until then,
			// woken early by a stop or a control function, with the
			// counters published first if the sleep is long (they stand
			// still meanwhile; after a short one they are on the way).
			if pending && d >= publishEvery {
				e.publish()
				published, pending = time.Now(), false
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			select {
			case <-done:
				timer.Stop()
				st.Elapsed = time.Since(start)
				return st, nil
			case f := <-e.Control:
				timer.Stop()
				f()
			case <-timer.C:
			}
			pace.Reset()
			pending = true
			continue
		}
		pace.Wait()
	}
	st.Elapsed = time.Since(start)
	return st, nil
}

// pollLimit is how long a poll(2) sleep may last: a whole pollSlice, or
// while counters may have moved (pending) until their next publish is due.
func pollLimit(pending bool, published time.Time) time.Duration {
	if !pending {
		return pollSlice
	}
	return max(publishEvery-time.Since(published), time.Millisecond)
}

// longIdle is the shortest sleep the engine takes on a timer rather than
// with the pacer's naps (Go timers are about a millisecond late here).
const longIdle = 2 * time.Millisecond

// maxIdleSleep bounds one timer sleep of an engine whose sources are all
// paced. A stop or a control function wakes it earlier; the bound only
// keeps a wrong ReadyAt from holding it for long.
const maxIdleSleep = 10 * time.Second

// idleFor returns how long the engine may sleep because every live source
// said when its next packet is due (Waiter), or 0 to go on polling. A
// sleep on a timer ends a little early (the timer's lateness) and lasts
// at most maxIdleSleep (the counters were published before it: nothing
// changes while every source waits); one shorter than longIdle plus that
// lateness is a nap (nanosleep, nap true) until the packet is due.
func (e *Engine) idleFor(live []bool) (d time.Duration, nap bool) {
	var next time.Time
	for i, s := range e.Sources {
		if !live[i] {
			continue
		}
		w, ok := s.(Waiter)
		if !ok {
			return 0, false
		}
		at := w.ReadyAt()
		if at.IsZero() {
			return 0, false
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	d = time.Until(next)
	switch {
	case d < 20*time.Microsecond:
		return 0, false
	case d < longIdle+time.Millisecond:
		return d, true
	}
	return min(d-time.Millisecond, maxIdleSleep), false
}
