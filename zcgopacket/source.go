package zcgopacket

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/zcfabric/zc"
)

// ErrClosed is what reads return (wrapped, with io.EOF) after Close.
var ErrClosed = errors.New("source closed")

// DefaultBurst is how many packets a Source moves per receive unless
// WithBurst says otherwise.
const DefaultBurst = 64

// The interfaces a Source satisfies.
var (
	_ gopacket.PacketDataSource         = (*Source)(nil)
	_ gopacket.ZeroCopyPacketDataSource = (*Source)(nil)
)

// Option configures a Source (Open, New).
type Option func(*config)

type config struct {
	ctx     context.Context
	burst   int
	ifindex int
	fixedIf bool
	wait    time.Duration
	open    []zc.OpenOption
}

// WithContext ties the Source to ctx: when ctx ends, a blocked read
// returns at once and every later read fails with ctx's error (and
// io.EOF). Open also waits for the cluster under ctx (WithWait).
func WithContext(ctx context.Context) Option { return func(c *config) { c.ctx = ctx } }

// WithBurst sets how many packets one receive moves, 1 to zc.MaxBurst
// (default DefaultBurst). It is also the most buffers the Source holds at
// once.
func WithBurst(n int) Option { return func(c *config) { c.burst = n } }

// WithInterfaceIndex makes every packet's CaptureInfo.InterfaceIndex i,
// instead of the port its producer set.
func WithInterfaceIndex(i int) Option {
	return func(c *config) { c.ifindex, c.fixedIf = i, true }
}

// WithWait makes Open wait up to d for the cluster to appear (a guest
// whose device is not plugged yet, an agent still starting), as
// zc.OpenWait does. Default 0: fail at once.
func WithWait(d time.Duration) Option { return func(c *config) { c.wait = d } }

// WithOpenOptions passes options to zc.Open (zc.Force to take over a
// consumer end another party holds).
func WithOpenOptions(opts ...zc.OpenOption) Option {
	return func(c *config) { c.open = append(c.open, opts...) }
}

// Source reads one queue as a gopacket packet source. Its methods are for
// one reading goroutine, but for Close, which any goroutine may call.
type Source struct {
	q      *zc.Queue
	name   string
	ctx    context.Context
	cancel context.CancelFunc
	cfg    config

	closing atomic.Bool // Close was called: a read that ends now says ErrClosed
	mu      sync.Mutex  // held by a read; Close takes it after cancelling ctx

	// Under mu.
	pkts   []zc.Packet // the current burst: pkts[next:n] not handed out yet
	next   int
	n      int
	recvAt time.Time // when the current burst was received
	err    error     // final: every later read returns it
	closed bool
}

// Open opens the consumer end of queue name (zc:CLUSTER@QUEUE, on the host
// or in a guest, as zc.Open resolves it) as a Source. Close detaches it.
func Open(name string, opts ...Option) (*Source, error) {
	cfg := configure(opts)
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("zcgopacket: open %s: %w", name, err)
	}
	q, err := zc.OpenWait(cfg.ctx, name, cfg.wait, cfg.open...)
	if err != nil {
		return nil, fmt.Errorf("zcgopacket: open %s: %w", name, err)
	}
	return newSource(q, cfg), nil
}

// New makes a Source of q, the consumer end of a queue its caller opened
// (zc.Open, Cluster.Consumer). From then on q belongs to the Source: do
// not use it directly, and Close the Source (which closes q) instead of
// q. WithWait and WithOpenOptions do not apply.
func New(q *zc.Queue, opts ...Option) (*Source, error) {
	cfg := configure(opts)
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("zcgopacket: new source on %s: %w", q.Name(), err)
	}
	if q.IsProducer() {
		return nil, fmt.Errorf("zcgopacket: new source on %s: %w (a producer end)", q.Name(), zc.ErrWrongEnd)
	}
	return newSource(q, cfg), nil
}

func configure(opts []Option) config {
	cfg := config{ctx: context.Background(), burst: DefaultBurst}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

func (c *config) check() error {
	if c.burst < 1 || c.burst > zc.MaxBurst {
		return fmt.Errorf("burst %d out of range 1..%d", c.burst, zc.MaxBurst)
	}
	if c.ctx == nil {
		return errors.New("nil context")
	}
	return nil
}

func newSource(q *zc.Queue, cfg config) *Source {
	ctx, cancel := context.WithCancel(cfg.ctx)
	return &Source{q: q, name: q.Name(), ctx: ctx, cancel: cancel, cfg: cfg, pkts: make([]zc.Packet, cfg.burst)}
}

// Name returns the queue's name, zc:CLUSTER@QUEUE.
func (s *Source) Name() string { return s.name }

// LinkType returns the link type of the queue's packets: Ethernet, as
// every zcfabric source writes. It is also the decoder to give
// gopacket.NewPacketSource.
func (s *Source) LinkType() layers.LinkType { return layers.LinkTypeEthernet }

// Stats returns the queue's counters (zc.Queue.Stats). Call it from the
// reading goroutine.
func (s *Source) Stats() zc.QueueStats { return s.q.Stats() }

// ReadPacketData returns the next packet, waiting for one: a copy the
// caller keeps. See the package doc for the capture info and how reads end.
func (s *Source) ReadPacketData() (data []byte, ci gopacket.CaptureInfo, err error) {
	s.mu.Lock()
	p, err := s.nextPacket()
	if err != nil {
		s.mu.Unlock()
		return nil, ci, err
	}
	data, ci = append([]byte(nil), p.Data...), s.info(p)
	s.mu.Unlock()
	return data, ci, nil
}

// ZeroCopyReadPacketData returns the next packet, waiting for one, without
// copying: data points into the packet's buffer in shared memory. It is
// valid until the next read or Close (its buffer may then go back to the
// producer, who reuses it), and must not be written. It allocates nothing.
func (s *Source) ZeroCopyReadPacketData() (data []byte, ci gopacket.CaptureInfo, err error) {
	s.mu.Lock()
	p, err := s.nextPacket()
	if err != nil {
		s.mu.Unlock()
		return nil, ci, err
	}
	data, ci = p.Data, s.info(p)
	s.mu.Unlock()
	return data, ci, nil
}

// info is p's capture info.
func (s *Source) info(p *zc.Packet) gopacket.CaptureInfo {
	ci := gopacket.CaptureInfo{Timestamp: s.recvAt, CaptureLength: len(p.Data), Length: len(p.Data), InterfaceIndex: int(p.Port)}
	if p.Timestamp != 0 {
		ci.Timestamp = time.Unix(0, p.Timestamp)
	}
	if s.cfg.fixedIf {
		ci.InterfaceIndex = s.cfg.ifindex
	}
	return ci
}

// nextPacket hands out the next packet of the current burst; when the
// burst is used up it gives its buffers back and receives the next one,
// waiting under s.ctx. Called with mu held.
func (s *Source) nextPacket() (*zc.Packet, error) {
	if s.next < s.n {
		s.next++
		return &s.pkts[s.next-1], nil
	}
	if s.err != nil {
		return nil, s.err
	}
	if s.n > 0 {
		err := s.q.Release(s.pkts[:s.n]...)
		s.next, s.n = 0, 0
		if err != nil {
			s.err = s.end(err)
			return nil, s.err
		}
	}
	n, err := s.q.RecvBurstWait(s.ctx, s.pkts)
	if n == 0 {
		if err == nil { // not expected from RecvBurstWait; do not spin on it
			err = errors.New("received nothing")
		}
		s.err = s.end(err)
		return nil, s.err
	}
	s.recvAt = time.Now()
	s.next, s.n = 1, n
	return &s.pkts[0], nil
}

// end turns the error that ended reading into the one reads return.
func (s *Source) end(err error) error {
	switch {
	case s.closing.Load():
		return fmt.Errorf("zcgopacket: read %s: %w (%w)", s.name, ErrClosed, io.EOF)
	case s.ctx.Err() != nil && errors.Is(err, s.ctx.Err()):
		return fmt.Errorf("zcgopacket: read %s: %w (%w)", s.name, s.ctx.Err(), io.EOF)
	case errors.Is(err, zc.ErrClosed) && !errors.Is(err, zc.ErrGone):
		return fmt.Errorf("zcgopacket: %w (%w)", err, io.EOF)
	}
	return fmt.Errorf("zcgopacket: %w (%w)", err, io.ErrUnexpectedEOF)
}

// Close ends the Source: a read blocked in another goroutine returns
// ErrClosed, the buffers still held go back to the producer, and the
// queue is detached. Data from earlier zero-copy reads must not be used
// after it. Closing twice is harmless.
//
// Packets of the current burst not read yet go back too, unread: a next
// consumer of the queue does not see them (at most a burst, WithBurst).
func (s *Source) Close() error {
	s.closing.Store(true)
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.next, s.n = 0, 0 // q.Close gives back what is still held
	s.err = fmt.Errorf("zcgopacket: read %s: %w (%w)", s.name, ErrClosed, io.EOF)
	if err := s.q.Close(); err != nil {
		return fmt.Errorf("zcgopacket: close %s: %w", s.name, err)
	}
	return nil
}
