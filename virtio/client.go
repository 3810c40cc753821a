package virtio

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Notice is an unplug-notice the host sent: cluster's region goes away in
// Deadline. Answer it with [Client.Ready] once the cluster's readers have
// stopped.
type Notice struct {
	Cluster  uint32
	Deadline time.Duration
}

// HelloRetry is how often a client repeats its hello until the host
// answers (the host may not be connected yet, and the guest kernel drops
// what arrives while no process holds the port open).
const HelloRetry = 200 * time.Millisecond

// Client is the guest end of the control channel. Its methods are safe for
// concurrent use.
type Client struct {
	rw      io.ReadWriteCloser
	lr      *lineReader
	dl      deadliner
	session string

	wmu    sync.Mutex
	mu     sync.Mutex
	nextID uint64
	wait   map[uint64]chan Message
	closed bool
	err    error // why the reader stopped

	notices chan Notice
	done    chan struct{}
}

// NewClient starts a client over rw, the opened port (see [OpenPort]).
// Call [Client.Hello] before other requests.
func NewClient(rw io.ReadWriteCloser) *Client {
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	c := &Client{
		rw: rw, lr: newLineReader(rw, MaxLine, DefaultReadTimeout),
		session: hex.EncodeToString(rnd[:8]),
		// Random first id: replies meant for an earlier process are
		// ignored.
		nextID:  binary.LittleEndian.Uint64(rnd[8:]) >> 12,
		wait:    map[uint64]chan Message{},
		notices: make(chan Notice, 16),
		done:    make(chan struct{}),
	}
	c.dl, _ = rw.(deadliner)
	go c.read()
	return c
}

// Session returns the random session id this client says hello with.
func (c *Client) Session() string { return c.session }

// Notices returns the unplug-notices the host sends to this client. The
// channel closes when the client does. Notices that do not fit its buffer
// are dropped (the host then unplugs at the deadline).
func (c *Client) Notices() <-chan Notice { return c.notices }

func (c *Client) read() {
	defer close(c.notices)
	defer close(c.done)
	for {
		line, err := c.lr.next()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if len(line) == 0 {
			continue
		}
		m, err := Decode(line)
		if err != nil {
			continue // the host's mistakes are not the guest's problem
		}
		if m.Type == TypeUnplugNotice {
			if m.Session != c.session {
				continue // for an earlier client
			}
			select {
			case c.notices <- Notice{Cluster: *m.Cluster, Deadline: time.Duration(m.DeadlineMS) * time.Millisecond}:
			default:
			}
			continue
		}
		if m.ID == 0 {
			continue
		}
		c.mu.Lock()
		ch := c.wait[m.ID]
		delete(c.wait, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

func (c *Client) send(m Message) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.dl != nil {
		_ = c.dl.SetWriteDeadline(time.Now().Add(DefaultWriteTimeout))
	}
	if _, err := c.rw.Write(b); err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	return nil
}

// request sends m (repeating it every retry when retry > 0) and waits for
// the reply with its id. An error reply becomes a [*RemoteError].
func (c *Client) request(ctx context.Context, m Message, retry time.Duration) (Message, error) {
	ch := make(chan Message, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Message{}, ErrClosed
	}
	c.nextID++
	m.ID = c.nextID
	c.wait[m.ID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.wait, m.ID)
		c.mu.Unlock()
	}()
	var tick <-chan time.Time
	if retry > 0 {
		t := time.NewTicker(retry)
		defer t.Stop()
		tick = t.C
	}
	if err := c.send(m); err != nil {
		return Message{}, err
	}
	for {
		select {
		case r := <-ch:
			if r.Type == TypeError {
				return r, &RemoteError{Class: r.Class, Reason: r.Msg}
			}
			return r, nil
		case <-tick:
			if err := c.send(m); err != nil {
				return Message{}, err
			}
		case <-c.done:
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			if err == nil || errors.Is(err, io.EOF) {
				err = ErrClosed
			}
			return Message{}, err
		case <-ctx.Done():
			return Message{}, ctx.Err()
		}
	}
}

// Hello greets the host, repeating the hello every [HelloRetry] until the
// host answers or ctx ends, and returns the host's protocol version.
func (c *Client) Hello(ctx context.Context) (int, error) {
	r, err := c.request(ctx, Message{Type: TypeHello, Version: Version, Side: SideGuest, Session: c.session}, HelloRetry)
	if err != nil {
		return 0, fmt.Errorf("zc: control channel hello: %w", err)
	}
	if r.Type != TypeHello {
		return 0, fmt.Errorf("zc: control channel hello: %w: got %s", ErrBadMessage, r.Type)
	}
	return r.Version, nil
}

// List asks the host which clusters it offers to this VM.
func (c *Client) List(ctx context.Context) ([]Offer, error) {
	r, err := c.request(ctx, Message{Type: TypeList}, 0)
	if err != nil {
		return nil, fmt.Errorf("zc: control channel list: %w", err)
	}
	if r.Type != TypeOffers {
		return nil, fmt.Errorf("zc: control channel list: %w: got %s", ErrBadMessage, r.Type)
	}
	return r.Clusters, nil
}

// Plug asks the host to plug cluster's region (queues: the ones wanted,
// none for all) into this VM. It returns once the host added the device;
// the guest sees it shortly after (see guest.Wait).
func (c *Client) Plug(ctx context.Context, cluster uint32, queues []int) error {
	r, err := c.request(ctx, Message{Type: TypePlug, Cluster: &cluster, Queues: queues}, 0)
	if err != nil {
		return fmt.Errorf("zc: control channel plug cluster %d: %w", cluster, err)
	}
	if r.Type != TypeAck {
		return fmt.Errorf("zc: control channel plug cluster %d: %w: got %s", cluster, ErrBadMessage, r.Type)
	}
	return nil
}

// Ready tells the host that this guest stopped reading cluster, answering
// an unplug-notice.
func (c *Client) Ready(cluster uint32) error {
	if err := c.send(Message{Type: TypeReady, Cluster: &cluster, Session: c.session}); err != nil {
		return fmt.Errorf("zc: control channel ready for cluster %d: %w", cluster, err)
	}
	return nil
}

// Close says bye (so the host stops sending notices to this client) and
// closes the port.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	_ = c.send(Message{Type: TypeBye, Session: c.session})
	err := c.rw.Close()
	<-c.done
	return err
}
