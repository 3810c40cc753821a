package agent

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
)

// TestIdleAgentAnswersNewReader: a reader dies holding 10 packets with 11
// more waiting behind it, and the agent is idle: its engine asleep (the
// generator's next frame 100 s away), or gone (its sources done, the
// agent serving the queues). A new reader takes the queue over: it waits,
// up to zc.HandshakeWait, for the agent to take the dead reader's buffers
// back before it reads. The agent's guard sees the request and wakes the
// engine, or what stands in for it, which answers. (The engine used to
// answer only with its next burst: the new reader gave up and read, and
// the 10 buffers stayed lent for good.)
func TestIdleAgentAnswersNewReader(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sources []string
		keep    bool
	}{
		{"engine asleep", []string{"gen:len=64,count=20", "gen:len=64,rate=0.01"}, false},
		{"sources done", []string{"gen:len=64,count=21"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testAnswersNewReader(t, tc.sources, tc.keep)
		})
	}
}

func testAnswersNewReader(t *testing.T, sources []string, keep bool) {
	fakeVMs(t)
	const id = 75
	a := mustNew(t, Config{ID: id, Queues: 1, QueueLen: 64, Backing: zc.BackingShm,
		Sources: sources, Keep: keep, Log: hclog.NewNullLogger()})
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	dead, err := zc.Open(zc.Name{Cluster: id}.String())
	if err != nil {
		t.Fatal(err)
	}
	got := make([]zc.Packet, 64)
	held := 0
	for deadline := time.Now().Add(20 * time.Second); held < 10; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("first reader got %d packets in 20 s", held)
		}
		n, err := dead.RecvBurst(got[held:10])
		if err != nil {
			t.Fatal(err)
		}
		held += n
	}
	for deadline := time.Now().Add(20 * time.Second); a.Stats()[0].Sent < 21; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent sent %d packets in 20 s, want 21", a.Stats()[0].Sent)
		}
	}
	time.Sleep(300 * time.Millisecond) // the engine asleep (its next frame 100 s away)
	// dead is never closed: it went away holding its 10 packets.

	next, err := zc.Open(zc.Name{Cluster: id}.String(), zc.Force())
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	read := 0
	for deadline := time.Now().Add(20 * time.Second); read < 11; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("new reader got %d of the 11 waiting packets in 20 s", read)
		}
		n, err := next.RecvBurst(got)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 && read == 0 {
			if st := a.Stats()[0]; st.Recovered != 10 {
				t.Fatalf("the new reader read before the agent took back the dead reader's buffers: recovered %d, want 10", st.Recovered)
			}
		}
		next.Release(got[:n]...)
		read += n
	}
	if st := a.Stats()[0]; st.Recovered != 10 || st.Sent != 21 {
		t.Fatalf("agent: sent %d, recovered %d; want 21 and 10", st.Sent, st.Recovered)
	}
}
