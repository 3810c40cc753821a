package doorbell

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// TestRecover plays an agent restart: server A serves a client, its State
// is saved (as JSON), A goes away (the client sees the hang-up), and B
// recovers from the saved state. B takes the client's eventfds and the
// host peer's out of the client's process (here the test process itself)
// by eventfd-id: B's Notify reaches the client and the client's ring
// reaches B's WaitHost, with no new handshake; a new client gets the next
// id; Forget drops the recovered one.
func TestRecover(t *testing.T) {
	mem := memfd(t, testSize)
	a, _ := start(t, Config{Memory: mem, Vectors: 2})
	c := dial(t, a)
	st, err := a.State()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Host) != 2 || len(st.Clients) != 1 || st.Clients[0].PID != os.Getpid() || len(st.Clients[0].Eventfds) != 2 || st.NextID != 2 {
		t.Fatalf("State() = %+v, want 2 host eventfds and client 1 of this process with 2", st)
	}
	saved, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := recv(c.conn, 5*time.Second); err == nil {
		t.Fatal("client still connected after the server closed")
	}

	var st2 State
	if err := json.Unmarshal(saved, &st2); err != nil {
		t.Fatal(err)
	}
	log := newPeerLog()
	b, lost, err := Recover(Config{Path: a.Path(), Memory: mem, OnPeer: log.on, Logf: t.Logf}, st2)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if len(lost) != 0 {
		t.Errorf("lost clients: %v", lost)
	}
	if got := b.Peers(); !slices.Equal(got, []uint16{1}) {
		t.Errorf("recovered peers %v, want [1]", got)
	}
	if err := b.Notify(1, 1); err != nil {
		t.Fatal(err)
	}
	if n, err := c.waitInterrupt(1, 5*time.Second); err != nil || n != 1 {
		t.Errorf("recovered Notify: %d interrupts, %v", n, err)
	}
	if err := c.ring(HostID, 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n, err := b.WaitHost(ctx, 0); err != nil || n != 1 {
		t.Errorf("ring to the recovered host peer: %d, %v", n, err)
	}
	d := dial(t, b)
	if d.id != 2 {
		t.Errorf("new client after recovery got id %d, want 2 (ids are never reused)", d.id)
	}
	st3, err := b.State()
	if err != nil || len(st3.Clients) != 2 || st3.NextID != 3 {
		t.Errorf("State() after recovery = %+v, %v; want clients 1 and 2, next id 3", st3, err)
	}
	b.Forget(1)
	log.expect(t, "2 up")
	log.expect(t, "1 down")
	if err := b.Notify(1, 0); !errors.Is(err, ErrNoPeer) {
		t.Errorf("Notify after Forget = %v, want ErrNoPeer", err)
	}
}

// TestRecoverLost checks that clients whose process is gone, or is another
// process now, are reported lost and the server starts anyway.
func TestRecoverLost(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("requires a process to outlive: %v", err)
	}
	self, err := startTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	st := State{Vectors: 1, NextID: 9, Host: []uint64{1 << 40}, Clients: []ClientState{
		{ID: 3, PID: cmd.Process.Pid, Start: 1, Eventfds: []uint64{1 << 40}},
		{ID: 4, PID: os.Getpid(), Start: self + 1, Eventfds: []uint64{1 << 40}},
		{ID: 5, PID: os.Getpid(), Start: self, Eventfds: []uint64{1 << 40}},
	}}
	s, lost, err := Recover(Config{Path: t.TempDir() + "/db.sock", Memory: memfd(t, testSize)}, st)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(lost) != 3 {
		t.Fatalf("lost %v, want all 3 clients", lost)
	}
	for _, e := range lost {
		if !errors.Is(e, ErrNotRecovered) {
			t.Errorf("lost client error %v does not wrap ErrNotRecovered", e)
		}
	}
	if len(s.Peers()) != 0 {
		t.Errorf("peers %v, want none", s.Peers())
	}
	c := dial(t, s)
	if c.id != 9 {
		t.Errorf("first client after recovery got id %d, want 9", c.id)
	}
}
