package virtio

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent is a Handler offering cluster 99 (queues 0, 1) and refusing
// everything else.
type fakeAgent struct {
	mu      sync.Mutex
	plugged []uint32
}

func (a *fakeAgent) Offers(context.Context) ([]Offer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return []Offer{{ID: 99, Queues: []int{0, 1}, Size: 1 << 20, Plugged: len(a.plugged) > 0}}, nil
}

func (a *fakeAgent) Plug(_ context.Context, cluster uint32, queues []int) error {
	if cluster != 99 {
		return fmt.Errorf("plug cluster %d: %w", cluster, ErrNotOffered)
	}
	for _, q := range queues {
		if q > 1 {
			return fmt.Errorf("plug cluster %d queue %d: %w", cluster, q, ErrNotOffered)
		}
	}
	a.mu.Lock()
	a.plugged = append(a.plugged, cluster)
	a.mu.Unlock()
	return nil
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serve starts a Server on one end of a pipe and returns the other end and
// the Serve result.
func serve(t *testing.T, h Handler, setup func(*Server)) (net.Conn, *Server, <-chan error) {
	t.Helper()
	host, guest := net.Pipe()
	s := NewServer(host, h)
	if setup != nil {
		setup(s)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() { s.Close(); guest.Close() })
	return guest, s, done
}

func TestClientServer(t *testing.T) {
	ctx := testCtx(t)
	agent := &fakeAgent{}
	conn, srv, served := serve(t, agent, nil)

	if err := srv.Notify(ctx, 99, time.Second); !errors.Is(err, ErrNoListener) {
		t.Errorf("Notify before any hello = %v, want ErrNoListener", err)
	}
	c := NewClient(conn)
	v, err := c.Hello(ctx)
	if err != nil || v != Version {
		t.Fatalf("Hello = %d, %v; want version %d", v, err, Version)
	}
	if !srv.Listening() {
		t.Error("server does not see the client after hello")
	}
	offers, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []Offer{{ID: 99, Queues: []int{0, 1}, Size: 1 << 20}}
	if !reflect.DeepEqual(offers, want) {
		t.Errorf("List = %+v, want %+v", offers, want)
	}
	if err := c.Plug(ctx, 99, []int{1}); err != nil {
		t.Errorf("Plug(99) = %v", err)
	}
	if err := c.Plug(ctx, 7, nil); !errors.Is(err, ErrRemote) || !errors.Is(err, ErrNotOffered) ||
		!strings.Contains(err.Error(), "not-offered: not offered to this vm") {
		t.Errorf("Plug(7) = %v, want ErrRemote and ErrNotOffered saying \"not-offered: not offered to this vm\"", err)
	}
	if offers, err := c.List(ctx); err != nil || len(offers) != 1 || !offers[0].Plugged {
		t.Errorf("List after plug = %+v, %v; want cluster 99 plugged", offers, err)
	}

	// The guest answers the notice: Notify returns nil.
	answered := make(chan Notice, 1)
	go func() {
		n := <-c.Notices()
		answered <- n
		c.Ready(n.Cluster)
	}()
	if err := srv.Notify(ctx, 99, 10*time.Second); err != nil {
		t.Errorf("Notify with a ready guest = %v", err)
	}
	if n := <-answered; n.Cluster != 99 || n.Deadline != 10*time.Second {
		t.Errorf("notice = %+v, want cluster 99, deadline 10s", n)
	}
	// Nobody answers: Notify gives up at its deadline.
	if err := srv.Notify(ctx, 99, 20*time.Millisecond); !errors.Is(err, ErrNotReady) {
		t.Errorf("Notify with a silent guest = %v, want ErrNotReady", err)
	}
	<-c.Notices()

	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve after the guest closed = %v, want nil", err)
	}
	if srv.Listening() {
		t.Error("server still sees a listener after bye")
	}
	if err := srv.Notify(ctx, 99, time.Second); !errors.Is(err, ErrNoListener) {
		t.Errorf("Notify after bye = %v, want ErrNoListener", err)
	}
	if _, err := c.List(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
}

// TestHelloRetry: the first hellos go nowhere (no host yet, as when the
// guest opens the port before the agent connects); the client repeats its
// hello until one is answered, and ignores stale replies and notices meant
// for another session.
func TestHelloRetry(t *testing.T) {
	ctx := testCtx(t)
	host, guest := net.Pipe()
	c := NewClient(guest)
	defer c.Close()
	defer host.Close() // first: nobody reads the bye
	hello := make(chan error, 1)
	go func() { _, err := c.Hello(ctx); hello <- err }()
	r := bufio.NewReader(host)
	for range 2 { // drop two hellos
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		if m, err := Decode(line); err != nil || m.Type != TypeHello || m.Session != c.Session() {
			t.Fatalf("guest sent %q (%v), want its hello", line, err)
		}
	}
	line, _ := r.ReadBytes('\n')
	m, _ := Decode(line)
	// Stale traffic first: a reply to an id the client never used, a
	// notice for another session, garbage.
	host.Write([]byte(`{"v":1,"type":"offers","id":1,"clusters":[]}` + "\n"))
	host.Write([]byte(`{"v":1,"type":"unplug-notice","cluster":5,"deadline_ms":10,"session":"old"}` + "\n"))
	host.Write([]byte("}{ not json\n"))
	b, _ := Encode(Message{Type: TypeHello, ID: m.ID, Version: Version, Side: SideHost})
	host.Write(b)
	if err := <-hello; err != nil {
		t.Fatalf("Hello after two lost hellos = %v", err)
	}
	select {
	case n := <-c.Notices():
		t.Errorf("client passed on a notice for another session: %+v", n)
	default:
	}
}

// readLines collects what the server writes to the guest end.
func readLines(conn net.Conn) <-chan Message {
	ch := make(chan Message, 64)
	go func() {
		defer close(ch)
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			m, err := Decode(line)
			if err != nil {
				m = Message{Type: "undecodable", Msg: string(line)}
			}
			ch <- m
		}
	}()
	return ch
}

func TestServerHostileInput(t *testing.T) {
	const bad, unsup = ClassBadRequest, ClassUnsupported
	for _, tc := range []struct{ name, in, wantMsg, wantClass string }{
		{"bad json", "{\"v\":1,\"type\":\n", "bad control message", bad},
		{"not an object", "[1,2,3]\n", "bad control message", bad},
		{"trailing", `{"v":1,"type":"list"} {"v":1}` + "\n", "trailing data", bad},
		{"future version", `{"v":2,"type":"list","id":5}` + "\n", "unsupported control protocol version", unsup},
		{"no version", `{"type":"list","id":5}` + "\n", "unsupported control protocol version", unsup},
		{"unknown type", `{"v":1,"type":"format-disk","id":5}` + "\n", "unknown type", bad},
		{"plug without cluster", `{"v":1,"type":"plug","id":5}` + "\n", "no cluster", bad},
		{"negative queue", `{"v":1,"type":"plug","id":5,"cluster":99,"queues":[-1]}` + "\n", "queue -1", bad},
		{"cluster out of range", `{"v":1,"type":"plug","id":5,"cluster":4294967296}` + "\n", "bad control message", bad},
		{"host-only message", `{"v":1,"type":"offers","id":5}` + "\n", "unexpected offers", bad},
		{"bad side", `{"v":1,"type":"hello","id":5,"side":"root"}` + "\n", "side", bad},
		{"control bytes in type", `{"v":1,"type":"\u001b[2J` + strings.Repeat("x", 500) + `","id":5}` + "\n", "unknown type", bad},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent := &fakeAgent{}
			conn, _, _ := serve(t, agent, nil)
			replies := readLines(conn)
			if _, err := conn.Write([]byte(tc.in)); err != nil {
				t.Fatal(err)
			}
			m := <-replies
			if m.Type != TypeError || !strings.Contains(m.Msg, tc.wantMsg) {
				t.Errorf("reply to %q = %+v, want an error containing %q", tc.in, m, tc.wantMsg)
			}
			if m.Class != tc.wantClass {
				t.Errorf("reply to %q has class %q, want %q", tc.in, m.Class, tc.wantClass)
			}
			if len(m.Msg) > MaxReason || strings.ContainsFunc(m.Msg, func(r rune) bool { return r < ' ' || r > '~' }) {
				t.Errorf("reply to %q: reason %q is longer than %d bytes or not printable ASCII", tc.in, m.Msg, MaxReason)
			}
			// The connection still works.
			conn.Write([]byte(`{"v":1,"type":"list","id":6}` + "\n"))
			if m := <-replies; m.Type != TypeOffers || m.ID != 6 {
				t.Errorf("list after a bad message = %+v, want offers", m)
			}
			if len(agent.plugged) != 0 {
				t.Errorf("a bad message plugged %v", agent.plugged)
			}
		})
	}
}

func TestServerClosesOnAbuse(t *testing.T) {
	t.Run("line too long", func(t *testing.T) {
		conn, _, served := serve(t, &fakeAgent{}, nil)
		replies := readLines(conn)
		go func() {
			chunk := []byte(strings.Repeat("x", 4096))
			for range MaxLine/len(chunk) + 2 {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
		}()
		m := <-replies
		if m.Type != TypeError || m.Class != ClassBadRequest || !strings.Contains(m.Msg, "too long") {
			t.Errorf("reply = %+v, want a bad-request error saying too long", m)
		}
		if err := <-served; !errors.Is(err, ErrTooLong) {
			t.Errorf("Serve = %v, want ErrTooLong", err)
		}
	})
	t.Run("unfinished line", func(t *testing.T) {
		conn, _, served := serve(t, &fakeAgent{}, func(s *Server) { s.SetReadTimeout(20 * time.Millisecond) })
		conn.Write([]byte(`{"v":1,"type":"li`))
		err := <-served
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("Serve = %v, want a read timeout", err)
		}
	})
	t.Run("many bad messages", func(t *testing.T) {
		conn, _, served := serve(t, &fakeAgent{}, nil)
		replies := readLines(conn)
		go func() {
			for range MaxBadMessages {
				if _, err := conn.Write([]byte("nonsense\n")); err != nil {
					return
				}
			}
		}()
		n := 0
		for m := range replies {
			if m.Type == TypeError {
				n++
			}
		}
		if err := <-served; !errors.Is(err, ErrBadMessage) {
			t.Errorf("Serve = %v, want ErrBadMessage", err)
		}
		if n != MaxBadMessages {
			t.Errorf("%d error replies, want %d", n, MaxBadMessages)
		}
	})
	t.Run("idle guest is fine", func(t *testing.T) {
		conn, srv, served := serve(t, &fakeAgent{}, func(s *Server) { s.SetReadTimeout(time.Millisecond) })
		time.Sleep(20 * time.Millisecond)
		conn.Write([]byte(`{"v":1,"type":"list","id":3}` + "\n"))
		if m := <-readLines(conn); m.Type != TypeOffers {
			t.Errorf("reply after idling = %+v, want offers", m)
		}
		srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve after Close = %v, want nil", err)
		}
	})
}

func TestEncodeDecode(t *testing.T) {
	c := uint32(7)
	for _, m := range []Message{
		{Type: TypeHello, ID: 1, Version: 1, Side: SideGuest, Session: "ab"},
		{Type: TypeOffers, ID: 2, Clusters: []Offer{{ID: 99, Queues: []int{0}, Size: 4096, Shared: true}}},
		{Type: TypePlug, ID: 3, Cluster: &c, Queues: []int{1, 2}},
		{Type: TypeUnplugNotice, Cluster: &c, DeadlineMS: 500, Session: "ab"},
		{Type: TypeError, ID: 4, Msg: "no"},
		{Type: TypeError, ID: 5, Class: ClassGone, Msg: "gone"},
	} {
		b, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		m.V = Version
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Errorf("Decode(Encode(%+v)) = %+v, %v", m, got, err)
		}
	}
	if _, err := Encode(Message{Type: TypeError, Msg: strings.Repeat("x", MaxLine)}); !errors.Is(err, ErrTooLong) {
		t.Errorf("Encode of a huge message = %v, want ErrTooLong", err)
	}
}

func TestPorts(t *testing.T) {
	ctx := testCtx(t)
	sys, dev := t.TempDir(), t.TempDir()
	addPort := func(kname, name string) {
		d := filepath.Join(sys, "class", "virtio-ports", kname)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dev, kname), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if ports, err := Ports(sys); err != nil || len(ports) != 0 {
		t.Errorf("Ports without virtio_console = %v, %v; want none", ports, err)
	}
	if _, err := PortPath(sys, dev, PortName); !errors.Is(err, ErrNoPort) {
		t.Errorf("PortPath with no ports = %v, want ErrNoPort", err)
	}
	addPort("vport0p1", "org.qemu.guest_agent.0")
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	_, err := OpenPort(short, sys, dev, PortName, time.Millisecond)
	cancel()
	if !errors.Is(err, ErrNoPort) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("OpenPort of a missing port = %v, want ErrNoPort and a deadline", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		addPort("vport1p1", PortName)
	}()
	f, err := OpenPort(ctx, sys, dev, PortName, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if f.Name() != filepath.Join(dev, "vport1p1") {
		t.Errorf("OpenPort opened %s, want %s", f.Name(), filepath.Join(dev, "vport1p1"))
	}
	ports, _ := Ports(sys)
	if len(ports) != 2 || ports[1] != (Port{Name: PortName, Dev: "vport1p1"}) {
		t.Errorf("Ports = %+v", ports)
	}
}
