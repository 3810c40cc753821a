package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/afpacket"
	"github.com/zcfabric/zc/host/afxdp"
	"github.com/zcfabric/zc/internal/idle"
	"golang.org/x/sys/unix"
)

// Sink sends packets out of an interface. Send copies each packet (into
// an AF_XDP UMEM frame or an AF_PACKET TX ring slot) before it returns, so
// the caller may release the packets as soon as Send has taken them.
type Sink interface {
	// Name is the sink as given (afxdp:eth0@0, afpacket:eth0).
	Name() string
	// Send queues copies of pkts for sending and returns how many it took
	// from the front; fewer than len(pkts) when its ring is full (call
	// again later). Frames too long for the sink are taken, dropped and
	// counted in SinkStats.TooLong.
	Send(pkts []zc.Packet) (int, error)
	// Flush asks the kernel to send what is queued.
	Flush() error
	// Stats returns the sink's counters.
	Stats() SinkStats
	// Mode says how the sink sends ("AF_XDP copy", "AF_PACKET TPACKET_V2").
	Mode() string
	// Close releases the socket; frames still queued may be lost.
	Close() error
}

// SinkStats are a sink's counters.
type SinkStats struct {
	// Packets and Bytes count frames queued for sending.
	Packets, Bytes uint64
	// TooLong counts frames dropped because they exceed the sink's frames.
	TooLong uint64
	// Full counts Send calls that found the ring full.
	Full uint64
	// KernelDrops counts frames the kernel refused from the sink's ring
	// (AF_XDP tx_invalid_descs; AF_PACKET reports none).
	KernelDrops uint64
	// IfTxDropped is the growth of the interface's tx_dropped counter
	// (/proc/net/dev of the sink's namespace) since the sink opened: frames
	// the device dropped, whoever sent them. On veth it counts frames the
	// peer could not take. Zero when unreadable.
	IfTxDropped uint64
}

// devCounters reads one interface's line of /proc/net/dev in the network
// namespace it was opened in (the seq file keeps that namespace).
type devCounters struct {
	f    *os.File
	name string
	buf  []byte
	base uint64
}

func openDevCounters(ifname string) *devCounters {
	f, err := os.Open("/proc/thread-self/net/dev")
	if err != nil {
		return nil
	}
	d := &devCounters{f: f, name: ifname, buf: make([]byte, 64<<10)}
	d.base, _ = d.txDropped()
	return d
}

// txDropped returns the interface's tx_dropped counter.
func (d *devCounters) txDropped() (uint64, error) {
	n, err := d.f.ReadAt(d.buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read /proc/net/dev for %s: %w", d.name, err)
	}
	for _, line := range strings.Split(string(d.buf[:n]), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != d.name {
			continue
		}
		// rx: bytes packets errs drop fifo frame compressed multicast,
		// tx: bytes packets errs drop ...
		f := strings.Fields(rest)
		if len(f) < 12 {
			break
		}
		return strconv.ParseUint(f[11], 10, 64)
	}
	return 0, fmt.Errorf("/proc/net/dev: no interface %s", d.name)
}

// since returns how much tx_dropped grew since open.
func (d *devCounters) since() uint64 {
	if d == nil {
		return 0
	}
	v, err := d.txDropped()
	if err != nil || v < d.base {
		return 0
	}
	return v - d.base
}

func (d *devCounters) close() {
	if d != nil {
		d.f.Close()
	}
}

// PacedSink sends through another Sink at most Rate packets per second:
// Send takes only what the schedule allows, sleeping (at most 10 ms a
// call) until the next packet is due. Credit left unused is capped at 32
// packets, so a stalled sender does not burst afterwards.
type PacedSink struct {
	Sink
	per   float64 // nanoseconds between packets
	start time.Time
	next  float64 // when the next packet is due, ns after start
}

// NewPacedSink wraps s so that it sends at most pps packets per second.
func NewPacedSink(s Sink, pps float64) *PacedSink {
	return &PacedSink{Sink: s, per: 1e9 / pps, start: time.Now()}
}

// Send implements Sink.
func (p *PacedSink) Send(pkts []zc.Packet) (int, error) {
	now := float64(time.Since(p.start))
	if floor := now - 32*p.per; p.next < floor {
		p.next = floor
	}
	if wait := p.next - now; wait > 0 {
		time.Sleep(time.Duration(min(wait, 10e6)))
		if now = float64(time.Since(p.start)); p.next > now {
			return 0, nil
		}
	}
	allowed := int((now-p.next)/p.per) + 1
	k, err := p.Sink.Send(pkts[:min(len(pkts), allowed)])
	p.next += float64(k) * p.per
	return k, err
}

// OpenSink opens a transmit path in the calling thread's network
// namespace:
//
//	afxdp:IF[@Q][?mode=copy|zerocopy|auto]   AF_XDP TX ring (own UMEM, one copy)
//	afpacket:IF                              AF_PACKET TPACKET_V2 TX ring
//	zc:IF[@Q], IF                            AF_XDP, else AF_PACKET
func OpenSink(spec string) (Sink, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		kind, rest = "zc", spec
	}
	body, query, _ := strings.Cut(rest, "?")
	name, qs, hasQ := strings.Cut(body, "@")
	if name == "" {
		return nil, fmt.Errorf("sink %q: no interface: %w", spec, ErrBadSpec)
	}
	queue := 0
	if hasQ {
		var err error
		if queue, err = strconv.Atoi(qs); err != nil || queue < 0 || kind == "afpacket" {
			return nil, fmt.Errorf("sink %q: bad queue %q: %w", spec, qs, ErrBadSpec)
		}
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("sink %q: %w: %w", spec, ErrBadSpec, err)
	}
	bind := afxdp.BindAuto
	for k, v := range q {
		switch {
		case k == "mode" && v[0] == "copy":
			bind = afxdp.BindCopy
		case k == "mode" && (v[0] == "zerocopy" || v[0] == "zc"):
			bind = afxdp.BindZeroCopy
		case k == "mode" && v[0] == "auto":
		default:
			return nil, fmt.Errorf("sink %q: option %s=%s (want mode=copy|zerocopy|auto): %w", spec, k, v[0], ErrBadSpec)
		}
	}
	switch kind {
	case "afxdp":
		return OpenAFXDPSink(name, queue, bind)
	case "afpacket":
		if query != "" {
			return nil, fmt.Errorf("sink %q: afpacket takes no options: %w", spec, ErrBadSpec)
		}
		return OpenAFPacketSink(name)
	case "zc":
		s, err := OpenAFXDPSink(name, queue, bind)
		if err == nil {
			return s, nil
		}
		p, perr := OpenAFPacketSink(name)
		if perr != nil {
			return nil, fmt.Errorf("sink %q: AF_XDP: %v; AF_PACKET: %w", spec, err, perr)
		}
		return p, nil
	}
	return nil, fmt.Errorf("sink %q: unknown kind %q (want afxdp:, afpacket:, zc: or an interface): %w", spec, kind, ErrBadSpec)
}

// AFXDPSink sends through a transmit-only AF_XDP socket over a UMEM of
// its own: each packet is copied once into a UMEM frame (the cluster's
// buffers may live in another process or a guest's view of the region, so
// the sink does not register them).
type AFXDPSink struct {
	name  string
	sock  *afxdp.Socket
	umem  []byte
	fsize uint32
	free  []uint64
	done  []uint64
	descs []afxdp.Desc
	pidx  []int // packet index of each desc
	st    SinkStats
	dev   *devCounters
}

const (
	sinkFrames    = 4096
	sinkFrameSize = 2048
)

// OpenAFXDPSink opens a transmit-only AF_XDP socket on queue of ifname.
func OpenAFXDPSink(ifname string, queue int, bind afxdp.BindMode) (*AFXDPSink, error) {
	name := fmt.Sprintf("afxdp:%s@%d", ifname, queue)
	umem, err := unix.Mmap(-1, 0, sinkFrames*sinkFrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("%s: map UMEM: %w", name, err)
	}
	sock, err := afxdp.Open(ifname, queue, umem, sinkFrameSize, afxdp.Options{Bind: bind, NoRX: true})
	if err != nil {
		unix.Munmap(umem)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s := &AFXDPSink{name: name, sock: sock, umem: umem, fsize: sinkFrameSize,
		free: make([]uint64, 0, sinkFrames), done: make([]uint64, zc.MaxBurst), descs: make([]afxdp.Desc, zc.MaxBurst), pidx: make([]int, zc.MaxBurst),
		dev: openDevCounters(ifname)}
	for i := sinkFrames - 1; i >= 0; i-- {
		s.free = append(s.free, uint64(i)*sinkFrameSize)
	}
	return s, nil
}

// Name implements Sink.
func (s *AFXDPSink) Name() string { return s.name }

// Mode implements Sink.
func (s *AFXDPSink) Mode() string { return "AF_XDP " + s.sock.Mode().Bind.String() }

// Stats implements Sink.
func (s *AFXDPSink) Stats() SinkStats {
	st := s.st
	if s.sock != nil {
		if xs, err := s.sock.Stats(); err == nil {
			st.KernelDrops = xs.TxInvalidDescs
		}
	}
	if s.dev != nil {
		st.IfTxDropped = s.dev.since()
	}
	return st
}

func (s *AFXDPSink) complete() {
	for {
		n := s.sock.Complete(s.done)
		s.free = append(s.free, s.done[:n]...)
		if n < len(s.done) {
			return
		}
	}
}

// Send implements Sink.
func (s *AFXDPSink) Send(pkts []zc.Packet) (int, error) {
	s.complete()
	taken, k := 0, 0
	for taken < len(pkts) && k < len(s.descs) && len(s.free) > 0 {
		p := &pkts[taken]
		if len(p.Data) > int(s.fsize) {
			s.st.TooLong++
			taken++
			continue
		}
		a := s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
		copy(s.umem[a:a+uint64(s.fsize)], p.Data)
		s.descs[k] = afxdp.Desc{Addr: a, Len: uint32(len(p.Data))}
		s.pidx[k] = taken
		k++
		taken++
	}
	m, err := s.sock.Transmit(s.descs[:k])
	if m < k {
		// The TX ring is full: the frames not queued go back to the free
		// list, and their packets (and any after them) are not taken.
		s.st.Full++
		for _, d := range s.descs[m:k] {
			s.free = append(s.free, d.Addr)
		}
		// Too-long packets after the first one not queued are handed
		// back too, so they must not stay counted: the caller offers them
		// again.
		for _, p := range pkts[s.pidx[m]:taken] {
			if len(p.Data) > int(s.fsize) {
				s.st.TooLong--
			}
		}
		taken = s.pidx[m]
	}
	for _, d := range s.descs[:m] {
		s.st.Bytes += uint64(d.Len)
	}
	s.st.Packets += uint64(m)
	if err != nil {
		return taken, fmt.Errorf("%s: transmit: %w", s.name, err)
	}
	return taken, nil
}

// Flush implements Sink.
func (s *AFXDPSink) Flush() error {
	s.complete()
	return s.sock.Kick()
}

// Close implements Sink.
func (s *AFXDPSink) Close() error {
	if s.sock == nil {
		return nil
	}
	s.st = s.Stats()
	err := s.sock.Close()
	s.sock = nil
	s.dev.close()
	s.dev = nil
	err = errors.Join(err, unix.Munmap(s.umem))
	if err != nil {
		return fmt.Errorf("%s: close: %w", s.name, err)
	}
	return nil
}

// AFPacketSink sends through an AF_PACKET TPACKET_V2 TX ring (one copy
// into a ring slot, one sendto per burst).
type AFPacketSink struct {
	name   string
	tx     *afpacket.TX
	frames [][]byte
	st     SinkStats
	dev    *devCounters
}

// OpenAFPacketSink opens a TX ring on ifname.
func OpenAFPacketSink(ifname string) (*AFPacketSink, error) {
	tx, err := afpacket.OpenTX(ifname, afpacket.TXOptions{})
	if err != nil {
		return nil, fmt.Errorf("afpacket:%s: %w", ifname, err)
	}
	return &AFPacketSink{name: "afpacket:" + ifname, tx: tx, frames: make([][]byte, 0, zc.MaxBurst), dev: openDevCounters(ifname)}, nil
}

// Name implements Sink.
func (s *AFPacketSink) Name() string { return s.name }

// Mode implements Sink.
func (s *AFPacketSink) Mode() string { return "AF_PACKET TPACKET_V2" }

// Stats implements Sink.
func (s *AFPacketSink) Stats() SinkStats {
	st := s.st
	if s.dev != nil {
		st.IfTxDropped = s.dev.since()
	}
	return st
}

// Send implements Sink.
func (s *AFPacketSink) Send(pkts []zc.Packet) (int, error) {
	taken := 0
	for taken < len(pkts) {
		s.frames = s.frames[:0]
		for _, p := range pkts[taken:min(len(pkts), taken+cap(s.frames))] {
			s.frames = append(s.frames, p.Data)
		}
		n, err := s.tx.Send(s.frames)
		for _, f := range s.frames[:n] {
			s.st.Bytes += uint64(len(f))
		}
		s.st.Packets += uint64(n)
		taken += n
		if errors.Is(err, afpacket.ErrFrameTooLong) {
			s.st.TooLong++
			taken++
			continue
		}
		if err != nil {
			return taken, fmt.Errorf("%s: send: %w", s.name, err)
		}
		if n < len(s.frames) {
			s.st.Full++
			break
		}
	}
	return taken, nil
}

// Flush implements Sink.
func (s *AFPacketSink) Flush() error { return s.tx.Flush() }

// Close implements Sink.
func (s *AFPacketSink) Close() error {
	if s.tx == nil {
		return nil
	}
	s.st = s.Stats()
	err := s.tx.Close()
	s.tx = nil
	s.dev.close()
	s.dev = nil
	if err != nil {
		return fmt.Errorf("%s: close: %w", s.name, err)
	}
	return nil
}

// TxStats count what a transmit loop moved.
type TxStats struct {
	Packets, Bytes uint64
	Elapsed        time.Duration
	// NotHeld counts Release calls the queue refused in part
	// (zc.ErrNotHeld): packets it did not hold. RecvBurst refuses a
	// handle it holds already, so this stays 0 unless a bug hands a packet
	// back twice; TransmitQueue counts it and goes on.
	NotHeld uint64
}

// Add adds o's counters to st (Elapsed too), for a loop run in parts.
func (st *TxStats) Add(o TxStats) {
	st.Packets += o.Packets
	st.Bytes += o.Bytes
	st.Elapsed += o.Elapsed
	st.NotHeld += o.NotHeld
}

// stopEvery is how many busy bursts a TX loop moves between two looks at
// its stop channel (64 packets a burst: a look every 1024 packets, a few
// hundred µs at full speed). Idle polls look every time.
const stopEvery = 16

// stopped reports whether done is closed, without blocking: a channel
// receive with a default case, cheaper than ctx.Err() (a mutex).
func stopped(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// sendAll sends pkts through sink, waiting (and flushing) while its ring
// is full, until all are taken or ctx ends.
func sendAll(ctx context.Context, sink Sink, pkts []zc.Packet) (int, error) {
	done := ctx.Done()
	sent, idle := 0, 0
	for sent < len(pkts) {
		n, err := sink.Send(pkts[sent:])
		sent += n
		if err != nil {
			return sent, err
		}
		if n > 0 {
			idle = 0
			continue
		}
		if stopped(done) {
			return sent, nil
		}
		if err := sink.Flush(); err != nil {
			return sent, fmt.Errorf("%s: flush: %w", sink.Name(), err)
		}
		if idle++; idle > 16 {
			time.Sleep(10 * time.Microsecond)
		}
	}
	return sent, nil
}

// TransmitQueue sends the packets of q (a consumer end, e.g. zc.Open of
// "zc:99@0") out of sink, releasing each packet once the sink has copied
// it, until ctx ends, q fails, the sink fails, or, if max > 0, max packets
// were sent. A full sink is waited for (back-pressure to the queue's
// producer). Under full load it looks at ctx every few busy bursts, so it
// stops within a fraction of a millisecond of ctx ending.
//
// What the producer writes cannot end the loop early: bad entries are
// counted and skipped by RecvBurst, and a Release that refuses packets
// (zc.ErrNotHeld) is counted in TxStats.NotHeld. When q itself fails
// (q.Err() is then set: a corrupt ring, a region gone), TransmitQueue
// returns that error with the counts so far; re-attaching is the caller's
// choice (zchost tx does).
func TransmitQueue(ctx context.Context, q *zc.Queue, sink Sink, max uint64) (TxStats, error) {
	var st TxStats
	start := time.Now()
	pkts := make([]zc.Packet, 64)
	var pace idle.Pacer
	done := ctx.Done()
	busy := 0
	for max == 0 || st.Packets < max {
		want := len(pkts)
		if max > 0 {
			want = int(min(uint64(want), max-st.Packets))
		}
		n, err := q.RecvBurst(pkts[:want])
		if err != nil {
			st.Elapsed = time.Since(start)
			return st, fmt.Errorf("tx: %s: %w", q.Name(), err)
		}
		if n == 0 {
			if !idleFlush(done, sink, &pace) {
				break
			}
			continue
		}
		pace.Work(n)
		err = st.send(ctx, sink, pkts[:n])
		if rerr := q.Release(pkts[:n]...); rerr != nil {
			if !errors.Is(rerr, zc.ErrNotHeld) || q.Err() != nil {
				err = errors.Join(err, fmt.Errorf("tx: release to %s: %w", q.Name(), rerr))
			} else {
				st.NotHeld++
			}
		}
		if err != nil {
			st.Elapsed = time.Since(start)
			return st, err
		}
		if !goOn(n, &busy, done, sink, &pace) {
			break
		}
	}
	st.Elapsed = time.Since(start)
	return st, sink.Flush()
}

// Bounce receives from src into buffers of pool and sends every packet
// out of sink (RX and TX together, like PF_RING ZC's zbounce), until ctx
// ends or src is exhausted. Under full load it looks at ctx every few
// busy bursts, so it stops within a fraction of a millisecond of ctx
// ending.
func Bounce(ctx context.Context, src Source, pool *zc.Pool, sink Sink) (TxStats, error) {
	var st TxStats
	start := time.Now()
	pkts := make([]zc.Packet, 64)
	var pace idle.Pacer
	done := ctx.Done()
	busy := 0
	for {
		n, rerr := src.Recv(pool, pkts)
		pace.Work(n)
		if n > 0 {
			err := st.send(ctx, sink, pkts[:n])
			pool.Free(pkts[:n])
			if err != nil {
				st.Elapsed = time.Since(start)
				return st, err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			st.Elapsed = time.Since(start)
			return st, fmt.Errorf("bounce: %s: %w", src.Name(), rerr)
		}
		if !goOn(n, &busy, done, sink, &pace) {
			break
		}
	}
	st.Elapsed = time.Since(start)
	return st, sink.Flush()
}

// send sends pkts through sink (waiting while it is full, until ctx
// ends) and counts what went.
func (st *TxStats) send(ctx context.Context, sink Sink, pkts []zc.Packet) error {
	sent, err := sendAll(ctx, sink, pkts)
	for i := range pkts[:sent] {
		st.Bytes += uint64(len(pkts[i].Data))
	}
	st.Packets += uint64(sent)
	return err
}

// goOn ends a TX loop's round that moved n packets, and reports whether
// the loop goes on: an idle round flushes sink once and naps (idleFlush);
// a busy one looks at done every stopEvery rounds (busy counts them).
func goOn(n int, busy *int, done <-chan struct{}, sink Sink, pace *idle.Pacer) bool {
	if !idle.Busy(n) {
		*busy = 0
		return idleFlush(done, sink, pace)
	}
	*busy++
	return *busy%stopEvery != 0 || !stopped(done)
}

// idleFlush is a TX loop's step after a poll that was not busy: it reports
// false once done is closed; otherwise it flushes what the sink batched
// (if packets went since the last such step) and paces the loop.
func idleFlush(done <-chan struct{}, sink Sink, pace *idle.Pacer) bool {
	if stopped(done) {
		return false
	}
	if pace.First() {
		sink.Flush()
	}
	pace.Wait()
	return true
}
