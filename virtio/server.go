package virtio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Handler is what the host agent implements for one VM's channel.
type Handler interface {
	// Offers lists the clusters offered to the VM.
	Offers(ctx context.Context) ([]Offer, error)
	// Plug plugs cluster's region into the VM (queues: those the guest
	// asks for, empty for all). It returns once the device is added.
	Plug(ctx context.Context, cluster uint32, queues []int) error
}

// Server defaults.
const (
	// DefaultReadTimeout bounds the arrival of the rest of a line once
	// its first byte came.
	DefaultReadTimeout = 5 * time.Second
	// DefaultWriteTimeout bounds one write to the channel.
	DefaultWriteTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds one Handler call.
	DefaultRequestTimeout = 30 * time.Second
	// MaxBadMessages is how many bad messages in a row close the
	// connection.
	MaxBadMessages = 16
)

// Server serves the control channel of one VM: the host end of its zc.ctl
// port. Create it with [NewServer], run [Server.Serve], and call
// [Server.Notify] before unplugging a region. Requests are handled one at a
// time, in order.
type Server struct {
	rw io.ReadWriteCloser
	h  Handler
	lr *lineReader
	dl deadliner

	// WriteTimeout bounds a write (default DefaultWriteTimeout).
	WriteTimeout time.Duration
	// RequestTimeout bounds a Handler call (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// Logf, when set, logs protocol errors, refused requests (with the
	// full error, which the guest never sees) and sessions.
	Logf func(format string, args ...any)
	// Classify, when set, maps a Handler error that wraps none of this
	// package's sentinels to one of them (say, the agent's own "region
	// gone" to [ErrGone]), or returns nil; the reply then has class
	// "internal". See [ClassOf].
	Classify func(error) error

	wmu sync.Mutex

	mu      sync.Mutex
	session string                 // the listening guest client's session, "" if none
	readies map[uint32]chan string // cluster → session of a ready
	closed  bool
	done    chan struct{}
}

// NewServer returns a server over rw (the connected chardev socket), with
// the default read timeout and [MaxLine].
func NewServer(rw io.ReadWriteCloser, h Handler) *Server {
	s := &Server{
		rw: rw, h: h,
		lr:             newLineReader(rw, MaxLine, DefaultReadTimeout),
		WriteTimeout:   DefaultWriteTimeout,
		RequestTimeout: DefaultRequestTimeout,
		readies:        map[uint32]chan string{},
		done:           make(chan struct{}),
	}
	s.dl, _ = rw.(deadliner)
	return s
}

// SetReadTimeout changes how long the rest of a started line may take.
// Call it before Serve.
func (s *Server) SetReadTimeout(d time.Duration) { s.lr.timeout = d }

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Serve reads and answers the guest's messages until the connection ends
// (nil for a clean EOF), ctx ends, or the guest breaks the protocol beyond
// repair ([ErrTooLong], too many bad messages, a read timeout). It closes
// the connection on return.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.Close()
	bad := 0
	for {
		line, err := s.lr.next()
		if err != nil {
			if errors.Is(err, ErrTooLong) {
				_ = s.refuse(0, "read", err, true)
			}
			if ctx.Err() != nil || s.isClosed() || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("zc: serve control channel: %w", err)
		}
		if len(line) == 0 {
			continue
		}
		m, err := Decode(line)
		if err != nil {
			bad++
			_ = s.refuse(m.ID, "decode", err, true)
			if bad >= MaxBadMessages {
				return fmt.Errorf("zc: serve control channel: %d bad messages in a row: %w", bad, err)
			}
			continue
		}
		bad = 0
		if err := s.handle(ctx, m); err != nil {
			return fmt.Errorf("zc: serve control channel: %w", err)
		}
	}
}

func (s *Server) handle(ctx context.Context, m Message) error {
	switch m.Type {
	case TypeHello:
		s.mu.Lock()
		s.session = m.Session
		s.mu.Unlock()
		s.logf("control channel: guest hello, session %q", m.Session)
		return s.send(Message{Type: TypeHello, ID: m.ID, Version: Version, Side: SideHost})
	case TypeBye:
		s.mu.Lock()
		if m.Session == "" || m.Session == s.session {
			s.session = ""
		}
		s.mu.Unlock()
		return nil
	case TypeList:
		rctx, cancel := context.WithTimeout(ctx, s.RequestTimeout)
		offers, err := s.h.Offers(rctx)
		cancel()
		if err != nil {
			return s.refuse(m.ID, "list", err, false)
		}
		if offers == nil {
			offers = []Offer{}
		}
		return s.send(Message{Type: TypeOffers, ID: m.ID, Clusters: offers})
	case TypePlug:
		rctx, cancel := context.WithTimeout(ctx, s.RequestTimeout)
		err := s.h.Plug(rctx, *m.Cluster, m.Queues)
		cancel()
		if err != nil {
			return s.refuse(m.ID, fmt.Sprintf("plug cluster %d", *m.Cluster), err, false)
		}
		return s.send(Message{Type: TypeAck, ID: m.ID})
	case TypeReady:
		s.mu.Lock()
		ch := s.readies[*m.Cluster]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m.Session:
			default:
			}
		}
		return nil
	default:
		// Replies the host does not expect (offers, ack, an error reply,
		// a notice echoed back) are answered, never acted on.
		return s.refuse(m.ID, m.Type, fmt.Errorf("%w: unexpected %s from the guest", ErrBadMessage, m.Type), true)
	}
}

// refuse answers request id with an error reply for err: its class (see
// [ClassOf] and Server.Classify) and a short reason, and logs err in full.
// A protocol error (inGuest: found in the guest's own message by this
// package) keeps its text as the reason; for a Handler's error the reason
// is its sentinel's fixed text, and for an unclassified one a generic
// sentence, so host paths and other details never reach the guest.
func (s *Server) refuse(id uint64, op string, err error, inGuest bool) error {
	class, sentinel := ClassOf(err)
	if sentinel == nil && s.Classify != nil {
		if mapped := s.Classify(err); mapped != nil {
			class, sentinel = ClassOf(mapped)
		}
	}
	reason := internalReason
	switch {
	case sentinel == nil:
	case inGuest:
		reason = cleanReason(err.Error())
	default:
		reason = sentinel.Error()
	}
	s.logf("control channel: %s refused (%s): %v", op, class, err)
	return s.send(Message{Type: TypeError, ID: id, Class: class, Msg: reason})
}

// send writes one message, bounded by WriteTimeout.
func (s *Server) send(m Message) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.dl != nil && s.WriteTimeout > 0 {
		_ = s.dl.SetWriteDeadline(time.Now().Add(s.WriteTimeout))
	}
	if _, err := s.rw.Write(b); err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	return nil
}

// Listening reports whether a guest client said hello and not bye.
func (s *Server) Listening() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session != "" && !s.closed
}

// Notify tells the guest that cluster's region will be unplugged in
// deadline and waits, at most that long (and not past ctx), for the
// guest's ready. It returns [ErrNoListener] at once when no guest client
// is listening, and [ErrNotReady] when the deadline passes; the caller
// unplugs in every case.
func (s *Server) Notify(ctx context.Context, cluster uint32, deadline time.Duration) error {
	s.mu.Lock()
	session := s.session
	if s.closed || session == "" {
		s.mu.Unlock()
		return fmt.Errorf("zc: notify unplug of cluster %d: %w", cluster, ErrNoListener)
	}
	ch := make(chan string, 1)
	s.readies[cluster] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.readies[cluster] == ch {
			delete(s.readies, cluster)
		}
		s.mu.Unlock()
	}()
	c := cluster
	if err := s.send(Message{Type: TypeUnplugNotice, Cluster: &c, DeadlineMS: deadline.Milliseconds(), Session: session}); err != nil {
		return fmt.Errorf("zc: notify unplug of cluster %d: %w", cluster, err)
	}
	t := time.NewTimer(deadline)
	defer t.Stop()
	for {
		select {
		case got := <-ch:
			if got == session || got == "" {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("zc: notify unplug of cluster %d: %w", cluster, ErrNotReady)
		case <-s.done:
			return fmt.Errorf("zc: notify unplug of cluster %d: %w", cluster, ErrClosed)
		case <-ctx.Done():
			return fmt.Errorf("zc: notify unplug of cluster %d: %w", cluster, ctx.Err())
		}
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close closes the connection; Serve returns.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	return s.rw.Close()
}
