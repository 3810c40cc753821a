package netns

import (
	"bytes"
	"testing"
	"time"

	"github.com/zcfabric/zc/internal/testgate"
)

func TestPairSendReceiveAndCleanup(t *testing.T) {
	testgate.NetAdmin(t)
	var names []string
	t.Run("pair", func(t *testing.T) {
		p := New(t, Config{MTU: 2000})
		names = p.Names()
		if p.A.Ifindex == 0 || p.B.Ifindex == 0 || len(p.A.MAC) != 6 {
			t.Fatalf("interface details missing: %+v", p)
		}
		left, err := Leftovers(names...)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 2 { // two namespaces; links live inside them
			t.Fatalf("Leftovers while alive = %v, want the 2 namespaces", left)
		}
		tx, err := p.B.OpenRaw(EtherType)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Close()
		rx, err := p.A.OpenRaw(EtherType)
		if err != nil {
			t.Fatal(err)
		}
		defer rx.Close()
		want := AppendFrame(nil, p.A.MAC, p.B.MAC, 42, 1900)
		if err := tx.Send(want); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, err := rx.Recv(buf, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("received %d bytes, differ from the %d sent", n, len(want))
		}
		seq, ok, err := CheckFrame(buf[:n])
		if !ok || err != nil || seq != 42 {
			t.Fatalf("CheckFrame = %d, %v, %v; want 42, true, nil", seq, ok, err)
		}
	})
	left, err := Leftovers(names...)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("left over after cleanup: %v", left)
	}
}

func TestCheckFrameRejectsCorruption(t *testing.T) {
	mac := []byte{2, 0, 0, 0, 0, 1}
	f := AppendFrame(nil, mac, mac, 7, 100)
	if _, ok, err := CheckFrame(f); !ok || err != nil {
		t.Fatalf("good frame: ok=%v err=%v", ok, err)
	}
	f[50] ^= 1
	if _, ok, err := CheckFrame(f); !ok || err == nil {
		t.Fatalf("corrupt frame: ok=%v err=%v, want ok and an error", ok, err)
	}
	f[12] = 0x08
	if _, ok, _ := CheckFrame(f); ok {
		t.Fatal("frame with another EtherType accepted as a test frame")
	}
}
