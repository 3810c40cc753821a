package virtio

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// failingAgent is a Handler whose requests fail with err (after blocking
// until the request's deadline when block is set).
type failingAgent struct {
	err   error
	block bool
}

func (a *failingAgent) Offers(ctx context.Context) ([]Offer, error) {
	if a.block {
		<-ctx.Done()
		return nil, fmt.Errorf("list offers of vm /run/zc/vm1.qmp: %w", ctx.Err())
	}
	return nil, a.err
}

func (a *failingAgent) Plug(ctx context.Context, cluster uint32, _ []int) error {
	if a.block {
		<-ctx.Done()
		return fmt.Errorf("plug cluster %d into /run/zc/vm1.qmp: %w", cluster, ctx.Err())
	}
	return a.err
}

// errForeignGone stands for a sentinel of another package (zc.ErrGone),
// which virtio cannot import; Server.Classify maps it.
var errForeignGone = errors.New("region closed: the queue went away")

// TestErrorReplies: whatever a handler's error says (host paths, control
// bytes, pages of text), the guest gets a class and a short reason that
// holds none of it, while the server's log gets the whole error; an old
// client that reads only msg still gets a sentence.
func TestErrorReplies(t *testing.T) {
	const secret = "/dev/shm/zc-99-vm-ae41.region"
	pathErr := &fs.PathError{Op: "open", Path: secret, Err: syscall.EACCES}
	for _, tc := range []struct {
		name      string
		agent     *failingAgent
		classify  func(error) error
		wantClass string
		wantMsg   string
		sentinel  error
	}{
		{"unclassified", &failingAgent{err: fmt.Errorf("attach via /run/libvirt/qemu/vm1.monitor: %w", pathErr)},
			nil, ClassInternal, internalReason, nil},
		{"not offered", &failingAgent{err: fmt.Errorf("plug cluster 7 (%s): %w", secret, ErrNotOffered)},
			nil, ClassNotOffered, ErrNotOffered.Error(), ErrNotOffered},
		{"gone", &failingAgent{err: fmt.Errorf("reclaim %s: %w: %w", secret, ErrGone, pathErr)},
			nil, ClassGone, ErrGone.Error(), ErrGone},
		{"busy", &failingAgent{err: fmt.Errorf("re-plug of %s: %w", secret, ErrBusy)},
			nil, ClassBusy, ErrBusy.Error(), ErrBusy},
		{"unsupported", &failingAgent{err: fmt.Errorf("queues on libvirt domain %s: %w", secret, ErrUnsupported)},
			nil, ClassUnsupported, ErrUnsupported.Error(), ErrUnsupported},
		{"hostile text", &failingAgent{err: errors.New(secret + "\n\x1b[2J" + strings.Repeat("/etc/passwd ", 10000))},
			nil, ClassInternal, internalReason, nil},
		{"classified by the server", &failingAgent{err: fmt.Errorf("plug %s: %w", secret, errForeignGone)},
			func(err error) error {
				if errors.Is(err, errForeignGone) {
					return ErrGone
				}
				return nil
			}, ClassGone, ErrGone.Error(), ErrGone},
		{"classifier declines", &failingAgent{err: fmt.Errorf("plug %s: %w", secret, pathErr)},
			func(error) error { return nil }, ClassInternal, internalReason, nil},
		{"timeout", &failingAgent{block: true}, nil, ClassTimeout, context.DeadlineExceeded.Error(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var logged strings.Builder
			host, guest := net.Pipe()
			s := NewServer(host, tc.agent)
			s.Classify = tc.classify
			s.RequestTimeout = 20 * time.Millisecond
			s.Logf = func(f string, a ...any) {
				mu.Lock()
				fmt.Fprintf(&logged, f+"\n", a...)
				mu.Unlock()
			}
			go s.Serve(context.Background())
			t.Cleanup(func() { s.Close(); guest.Close() })
			r := bufio.NewReader(guest)
			for _, req := range []string{`{"v":1,"type":"list","id":5}`, `{"v":1,"type":"plug","id":6,"cluster":7}`} {
				if _, err := guest.Write([]byte(req + "\n")); err != nil {
					t.Fatal(err)
				}
				line, err := r.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				if strings.ContainsAny(line, "/\\\x1b") || strings.Contains(line, "zc-99") || strings.Contains(line, "passwd") {
					t.Errorf("reply to %s leaks the host's error: %q", req, line)
				}
				m, err := Decode([]byte(line))
				if err != nil {
					t.Fatalf("reply %q: %v", line, err)
				}
				if m.Type != TypeError || m.Class != tc.wantClass || m.Msg != tc.wantMsg {
					t.Errorf("reply to %s = %+v, want class %q, msg %q", req, m, tc.wantClass, tc.wantMsg)
				}
				// A client from before error classes reads msg alone.
				var old struct {
					V    int    `json:"v"`
					Type string `json:"type"`
					ID   uint64 `json:"id"`
					Msg  string `json:"msg"`
				}
				if err := json.Unmarshal([]byte(line), &old); err != nil || old.Type != TypeError || old.Msg == "" {
					t.Errorf("an old client reads %+v, %v from %q; want an error with a reason", old, err, line)
				}
			}
			mu.Lock()
			log := logged.String()
			mu.Unlock()
			if !strings.Contains(log, "refused ("+tc.wantClass+")") || !strings.Contains(log, "/") {
				t.Errorf("the host's log lacks the class or the full error:\n%s", log)
			}

			// The client returns the reply as "class: reason", matching
			// ErrRemote and the class's sentinel.
			c := NewClient(guest)
			defer c.Close()
			err := c.Plug(testCtx(t), 7, nil)
			var re *RemoteError
			if !errors.As(err, &re) || re.Class != tc.wantClass || !errors.Is(err, ErrRemote) ||
				!strings.Contains(err.Error(), tc.wantClass+": "+tc.wantMsg) {
				t.Errorf("client Plug = %v, want a RemoteError reading %q", err, tc.wantClass+": "+tc.wantMsg)
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("client Plug = %v, want it to match %v", err, tc.sentinel)
			}
		})
	}
}

// TestClientOldHost: a reply from a host that predates error classes (msg
// only) reads as "refused by the other side: REASON".
func TestClientOldHost(t *testing.T) {
	host, guest := net.Pipe()
	c := NewClient(guest)
	defer c.Close()
	defer host.Close()
	go func() {
		r := bufio.NewReader(host)
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		m, _ := Decode(line)
		fmt.Fprintf(host, `{"v":1,"type":"error","id":%d,"msg":"cluster 7 is not offered to this vm"}`+"\n", m.ID)
		r.ReadBytes('\n') // the bye
	}()
	err := c.Plug(testCtx(t), 7, nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Class != "" || !errors.Is(err, ErrRemote) || errors.Is(err, ErrNotOffered) ||
		!strings.HasSuffix(err.Error(), "refused by the other side: cluster 7 is not offered to this vm") {
		t.Errorf("Plug = %v, want a class-less RemoteError with the host's text", err)
	}
}

// TestClassOf pins the sentinel → class table.
func TestClassOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("x: %w", ErrNotOffered), ClassNotOffered},
		{fmt.Errorf("x: %w", ErrGone), ClassGone},
		{fmt.Errorf("x: %w", ErrBusy), ClassBusy},
		{fmt.Errorf("x: %w", ErrUnsupported), ClassUnsupported},
		{fmt.Errorf("x: %w", ErrVersion), ClassUnsupported},
		{fmt.Errorf("x: %w", ErrBadMessage), ClassBadRequest},
		{fmt.Errorf("x: %w", ErrTooLong), ClassBadRequest},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), ClassTimeout},
		{errors.New("anything"), ClassInternal},
		{fmt.Errorf("x: %w", context.Canceled), ClassInternal},
	} {
		if got, _ := ClassOf(tc.err); got != tc.want {
			t.Errorf("ClassOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
