package virtio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Protocol constants.
const (
	// Version is the protocol version this package speaks.
	Version = 1
	// PortName is the name of the virtio-serial port carrying the channel.
	PortName = "zc.ctl"
	// MaxLine bounds one message on the wire, newline included.
	MaxLine = 64 << 10
)

// Message types.
const (
	TypeHello        = "hello"
	TypeList         = "list"
	TypeOffers       = "offers"
	TypePlug         = "plug"
	TypeAck          = "ack"
	TypeError        = "error"
	TypeUnplugNotice = "unplug-notice"
	TypeReady        = "ready"
	TypeBye          = "bye"
)

// Sides a hello names.
const (
	SideHost  = "host"
	SideGuest = "guest"
)

// Sentinel errors.
var (
	// ErrTooLong means a line exceeded MaxLine bytes.
	ErrTooLong = errors.New("control message too long")
	// ErrBadMessage means a line is not a valid message: bad JSON, missing
	// or unknown type, or fields out of range.
	ErrBadMessage = errors.New("bad control message")
	// ErrVersion means a message carries a protocol version this side
	// does not speak.
	ErrVersion = errors.New("unsupported control protocol version")
	// ErrClosed means the channel is closed.
	ErrClosed = errors.New("control channel closed")
	// ErrNoListener means no guest process listens on the channel (none
	// said hello, or it said bye), so a notice cannot be delivered.
	ErrNoListener = errors.New("no guest listens on the control channel")
	// ErrNotReady means the guest did not answer an unplug-notice with
	// ready before its deadline.
	ErrNotReady = errors.New("guest did not answer ready in time")
	// ErrRemote is a request the other side refused with an error reply;
	// a [*RemoteError] carries the reply's class and reason.
	ErrRemote = errors.New("refused by the other side")
	// ErrNoPort means no virtio-serial port with the wanted name exists.
	ErrNoPort = errors.New("no virtio-serial port")
)

// Offer is a cluster the host offers to a VM.
type Offer struct {
	// ID is the cluster id (zc:ID@Q).
	ID uint32 `json:"id"`
	// Queues are the queue numbers the VM may open.
	Queues []int `json:"queues"`
	// Size is the region size in bytes.
	Size uint64 `json:"size"`
	// Shared is true when the region is the cluster's own (shared with
	// the host and other trusted VMs), false for a region of this VM's own.
	Shared bool `json:"shared"`
	// Plugged is true while the region is plugged into this VM.
	Plugged bool `json:"plugged"`
}

// Message is one control message. Which fields matter depends on Type.
type Message struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	// ID matches a reply to its request; 0 in unsolicited messages.
	ID uint64 `json:"id,omitempty"`
	// hello
	Version int    `json:"version,omitempty"`
	Side    string `json:"side,omitempty"`
	// Session identifies the guest client (hello, ready, unplug-notice).
	Session string `json:"session,omitempty"`
	// offers
	Clusters []Offer `json:"clusters,omitempty"`
	// plug, unplug-notice, ready
	Cluster *uint32 `json:"cluster,omitempty"`
	Queues  []int   `json:"queues,omitempty"`
	// unplug-notice
	DeadlineMS int64 `json:"deadline_ms,omitempty"`
	// error: Class is one of the Class* words (added within version 1:
	// a client that predates it reads Msg alone), Msg a short reason.
	Class string `json:"class,omitempty"`
	Msg   string `json:"msg,omitempty"`
}

// maxList bounds list fields (queues, clusters) of a decoded message.
const maxList = 4096

// Decode parses one line (without or with its newline) into a Message and
// checks it: size, JSON, version, type and the fields that type needs.
func Decode(line []byte) (Message, error) {
	if len(line) > MaxLine {
		return Message{}, fmt.Errorf("decode: %d bytes: %w", len(line), ErrTooLong)
	}
	line = bytes.TrimSpace(line)
	var m Message
	d := json.NewDecoder(bytes.NewReader(line))
	if err := d.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("decode: %w: %v", ErrBadMessage, err)
	}
	if d.More() {
		return Message{}, fmt.Errorf("decode: %w: trailing data", ErrBadMessage)
	}
	// Empty lists and absent ones mean the same.
	if len(m.Queues) == 0 {
		m.Queues = nil
	}
	if len(m.Clusters) == 0 {
		m.Clusters = nil
	}
	if m.V != Version {
		return m, fmt.Errorf("decode: %w: v=%d (want %d)", ErrVersion, m.V, Version)
	}
	if err := m.check(); err != nil {
		return m, fmt.Errorf("decode %.32q: %w: %s", m.Type, ErrBadMessage, err)
	}
	return m, nil
}

func (m *Message) check() error {
	if len(m.Queues) > maxList || len(m.Clusters) > maxList {
		return errors.New("list too long")
	}
	for _, q := range m.Queues {
		if q < 0 {
			return fmt.Errorf("queue %d", q)
		}
	}
	switch m.Type {
	case TypeHello:
		if m.Side != SideHost && m.Side != SideGuest {
			return fmt.Errorf("side %.32q", m.Side)
		}
	case TypeList, TypeOffers, TypeAck, TypeError, TypeBye:
	case TypePlug, TypeReady:
		if m.Cluster == nil {
			return errors.New("no cluster")
		}
	case TypeUnplugNotice:
		if m.Cluster == nil {
			return errors.New("no cluster")
		}
		if m.DeadlineMS < 0 {
			return fmt.Errorf("deadline_ms %d", m.DeadlineMS)
		}
	default:
		return fmt.Errorf("unknown type %.32q", m.Type)
	}
	return nil
}

// Encode returns m as one line, newline included, with V set to Version.
func Encode(m Message) ([]byte, error) {
	m.V = Version
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.Type, err)
	}
	if len(b)+1 > MaxLine {
		return nil, fmt.Errorf("encode %s: %d bytes: %w", m.Type, len(b)+1, ErrTooLong)
	}
	return append(b, '\n'), nil
}

// deadliner is what net.Conn and pollable *os.File offer.
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// lineReader reads newline-terminated lines of at most max bytes. While a
// line has started but not ended, reads time out after timeout (when the
// reader supports deadlines); between lines reads wait forever.
type lineReader struct {
	r       io.Reader
	dl      deadliner
	timeout time.Duration
	buf     []byte
	start   int
	end     int
}

func newLineReader(r io.Reader, max int, timeout time.Duration) *lineReader {
	lr := &lineReader{r: r, buf: make([]byte, max), timeout: timeout}
	lr.dl, _ = r.(deadliner)
	return lr
}

// next returns the next line without its newline. The slice is valid until
// the following call. A line longer than max fails with ErrTooLong.
func (lr *lineReader) next() ([]byte, error) {
	for {
		if i := bytes.IndexByte(lr.buf[lr.start:lr.end], '\n'); i >= 0 {
			line := lr.buf[lr.start : lr.start+i]
			lr.start += i + 1
			return line, nil
		}
		if lr.start > 0 {
			lr.end = copy(lr.buf, lr.buf[lr.start:lr.end])
			lr.start = 0
		}
		if lr.end == len(lr.buf) {
			return nil, fmt.Errorf("read line: more than %d bytes: %w", len(lr.buf), ErrTooLong)
		}
		if lr.dl != nil && lr.timeout > 0 {
			var t time.Time
			if lr.end > 0 {
				t = time.Now().Add(lr.timeout)
			}
			_ = lr.dl.SetReadDeadline(t)
		}
		n, err := lr.r.Read(lr.buf[lr.end:])
		lr.end += n
		if err != nil && n == 0 {
			if err == io.EOF && lr.end > 0 {
				return nil, fmt.Errorf("read line: %w", io.ErrUnexpectedEOF)
			}
			return nil, err
		}
	}
}
