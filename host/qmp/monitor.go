package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"
)

// SocketMonitor is a QMP connection over a stream socket that implements
// go-qemu's [goqmp.Monitor]. Unlike go-qemu's own SocketMonitor it returns
// failed commands as [*Error] with QEMU's error class, reads replies of any
// length, and never blocks its reader on a slow event listener: each Events
// subscriber gets a buffered channel, and events that do not fit are dropped
// and counted (see [SocketMonitor.DroppedEvents]).
//
// Run is safe for concurrent use; commands are serialised.
type SocketMonitor struct {
	conn net.Conn

	// Version is the QEMU version from the greeting, set by Connect.
	Version goqmp.Version

	runMu   sync.Mutex
	replies chan []byte
	done    chan struct{} // closed when the reader stops
	readErr error         // why the reader stopped; valid after done

	subMu   sync.Mutex
	subs    map[chan goqmp.Event]struct{}
	dropped atomic.Uint64
}

var _ goqmp.Monitor = (*SocketMonitor)(nil)

// eventBuffer is how many events a subscriber may lag behind before events
// are dropped for it. Hot-plug produces a handful per operation.
const eventBuffer = 256

// NewSocketMonitor wraps a connected QMP socket. Call Connect before Run.
func NewSocketMonitor(conn net.Conn) *SocketMonitor {
	return &SocketMonitor{
		conn:    conn,
		replies: make(chan []byte, 1),
		done:    make(chan struct{}),
		subs:    make(map[chan goqmp.Event]struct{}),
	}
}

// message is any line QEMU sends: greeting, reply or event.
type message struct {
	QMP *struct {
		Version goqmp.Version `json:"version"`
	} `json:"QMP"`
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Connect reads QEMU's greeting, negotiates capabilities and starts reading
// replies and events.
func (m *SocketMonitor) Connect() error {
	r := bufio.NewReader(m.conn)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read QMP greeting: %w", err)
	}
	var greet message
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return fmt.Errorf("read QMP greeting: not a QMP greeting: %q", line)
	}
	m.Version = greet.QMP.Version
	if _, err := m.conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		return fmt.Errorf("qmp_capabilities: %w", err)
	}
	line, err = r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("qmp_capabilities: %w", err)
	}
	if err := replyError("qmp_capabilities", line); err != nil {
		return err
	}
	go m.read(r)
	return nil
}

// replyError returns the [*Error] a reply line carries, if any.
func replyError(cmd string, line []byte) error {
	var msg message
	if err := json.Unmarshal(line, &msg); err != nil {
		return fmt.Errorf("qmp %s: bad reply %q: %w", cmd, line, err)
	}
	if msg.Error != nil {
		return &Error{Command: cmd, Class: msg.Error.Class, Desc: msg.Error.Desc}
	}
	return nil
}

func (m *SocketMonitor) read(r *bufio.Reader) {
	defer func() {
		m.subMu.Lock()
		for ch := range m.subs {
			close(ch)
			delete(m.subs, ch)
		}
		m.subMu.Unlock()
		close(m.done)
	}()
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			m.readErr = err
			return
		}
		var msg message
		if json.Unmarshal(line, &msg) != nil {
			continue
		}
		if msg.Event == "" {
			m.replies <- line
			continue
		}
		var ev goqmp.Event
		if json.Unmarshal(line, &ev) != nil {
			continue
		}
		m.subMu.Lock()
		for ch := range m.subs {
			select {
			case ch <- ev:
			default:
				m.dropped.Add(1)
			}
		}
		m.subMu.Unlock()
	}
}

// Disconnect closes the socket. Event channels are closed once the reader
// has stopped.
func (m *SocketMonitor) Disconnect() error {
	err := m.conn.Close()
	<-m.done
	return err
}

// Run sends one command (a JSON object) and returns QEMU's reply. A reply
// carrying an error is returned as [*Error] along with the raw reply.
func (m *SocketMonitor) Run(command []byte) ([]byte, error) {
	return m.RunWithFiles(command)
}

// RunWithFiles is Run with open files passed to QEMU along with the
// command (SCM_RIGHTS on the same write), as QMP's add-fd and getfd want
// them. QEMU gets its own descriptors; the files stay open here. Passing
// files needs a unix socket: on any other connection RunWithFiles fails
// with [ErrNotUnixSocket] without sending anything.
func (m *SocketMonitor) RunWithFiles(command []byte, files ...*os.File) ([]byte, error) {
	var head struct {
		Execute string `json:"execute"`
	}
	_ = json.Unmarshal(command, &head)
	var oob []byte
	uc, isUnix := m.conn.(*net.UnixConn)
	if len(files) > 0 {
		if !isUnix {
			return nil, fmt.Errorf("qmp %s: pass %d files: %w", head.Execute, len(files), ErrNotUnixSocket)
		}
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	m.runMu.Lock()
	defer m.runMu.Unlock()
	select {
	case <-m.done:
		return nil, fmt.Errorf("qmp %s: %w", head.Execute, ErrClosed)
	default:
	}
	line := append(command, '\n')
	var err error
	if oob == nil {
		_, err = m.conn.Write(line)
	} else {
		var n int
		n, _, err = uc.WriteMsgUnix(line, oob, nil)
		if err == nil && n < len(line) {
			_, err = m.conn.Write(line[n:])
		}
		runtime.KeepAlive(files)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", head.Execute, err)
	}
	select {
	case line := <-m.replies:
		return line, replyError(head.Execute, line)
	case <-m.done:
		return nil, fmt.Errorf("qmp %s: %w (%w)", head.Execute, ErrClosed, m.readErr)
	}
}

// Events returns a channel of QMP events that stays open until ctx is done
// or the connection closes. Each call gets its own channel.
func (m *SocketMonitor) Events(ctx context.Context) (<-chan goqmp.Event, error) {
	ch := make(chan goqmp.Event, eventBuffer)
	m.subMu.Lock()
	select {
	case <-m.done:
		m.subMu.Unlock()
		return nil, ErrClosed
	default:
	}
	m.subs[ch] = struct{}{}
	m.subMu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
		case <-m.done:
			return
		}
		m.subMu.Lock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
		m.subMu.Unlock()
	}()
	return ch, nil
}

// DroppedEvents counts events dropped because a subscriber's buffer was
// full.
func (m *SocketMonitor) DroppedEvents() uint64 { return m.dropped.Load() }
