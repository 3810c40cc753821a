package guest

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newShare returns a fake doorbell device and an owner end sharing its
// interrupts (closed at the end of the test).
func newShare(t *testing.T) (Device, *bellShare) {
	t.Helper()
	d := fakeDoorbell(t, t.TempDir())
	s, err := listenShare(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.close(false) })
	return d, s
}

// openShared opens n doorbells on d, each of which must get its interrupts
// from the owner s (a share with n subscribers).
func openShared(t *testing.T, d Device, s *bellShare, n int) []*Doorbell {
	t.Helper()
	var bs []*Doorbell
	for range n {
		b, err := OpenDoorbell(d, DoorbellOptions{NoBind: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		if err := b.Interrupts(); err != nil {
			t.Fatalf("a doorbell whose device another process shares: Interrupts() = %v", err)
		}
		bs = append(bs, b)
	}
	awaitSubscribers(t, s, n)
	return bs
}

// awaitSubscribers waits until s passes interrupts on to n processes.
func awaitSubscribers(t *testing.T, s *bellShare, n int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); s.subscribers() != n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the owner has %d subscribers, want %d", s.subscribers(), n)
		}
	}
}

// expectWake fails unless b's Wait returns vector 0 within a second.
func expectWake(t *testing.T, b *Doorbell, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if v, err := b.Wait(ctx); err != nil || v != 1 {
		t.Fatalf("%s: Wait = %#x, %v; want vector 0", what, v, err)
	}
}

// expectNoWake fails if b's Wait returns within 100 ms.
func expectNoWake(t *testing.T, b *Doorbell, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if v, err := b.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: Wait = %#x, %v; want it to wait", what, v, err)
	}
}

// TestShareWakesEveryProcess: a device's interrupts held by one process
// (here the test's owner end, over a real abstract unix socket, with real
// eventfds passed by SCM_RIGHTS) wake every other doorbell opened on the
// device, each once per interrupt; a doorbell that closes stops getting
// them and the owner drops it.
func TestShareWakesEveryProcess(t *testing.T) {
	d, s := newShare(t)
	bs := openShared(t, d, s, 2)
	for _, b := range bs {
		expectNoWake(t, b, "before any interrupt")
	}
	s.notify()
	for i, b := range bs {
		expectWake(t, b, "doorbell "+string(rune('0'+i)))
		expectNoWake(t, b, "after the one interrupt was taken")
	}
	bs[0].Close()
	awaitSubscribers(t, s, 1)
	s.notify()
	expectWake(t, bs[1], "the doorbell still open")
}

// TestShareGone: the owner tells its subscribers of an unplug; their Wait
// ends with ErrDoorbellGone.
func TestShareGone(t *testing.T) {
	d, s := newShare(t)
	b := openShared(t, d, s, 1)[0]
	s.close(true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := b.Wait(ctx); !errors.Is(err, ErrDoorbellGone) {
		t.Fatalf("Wait after the owner saw an unplug = %v, want ErrDoorbellGone", err)
	}
}

// TestShareTakeover: when the owner stops, its subscribers are woken once
// (an interrupt may have been missed) and get the interrupts from whoever
// took them over: here a second owner listening as the first lets its
// subscribers go. (Taking the device itself over needs VFIO: the vmtest
// TestGuestProcessesShareDoorbell does it in a real guest.)
func TestShareTakeover(t *testing.T) {
	d, s1 := newShare(t)
	b := openShared(t, d, s1, 1)[0]
	s1.ln.Close() // the socket's name is free again
	s2, err := listenShare(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.close(false)
	s1.close(false)
	expectWake(t, b, "the owner stopped")
	awaitSubscribers(t, s2, 1)
	if err := b.Interrupts(); err != nil {
		t.Fatalf("after the takeover: Interrupts() = %v", err)
	}
	s2.notify()
	expectWake(t, b, "an interrupt of the new owner")
}

// TestShareLost: an owner stops and nobody can take its interrupts over
// (here a device vfio-pci does not hold): the doorbell says so, through
// Interrupts and Wait, and its caller polls.
func TestShareLost(t *testing.T) {
	defer func(w time.Duration) { takeOverWait = w }(takeOverWait)
	takeOverWait = 200 * time.Millisecond
	d, s := newShare(t)
	b := openShared(t, d, s, 1)[0]
	s.close(false)
	expectWake(t, b, "the owner stopped")
	deadline := time.Now().Add(2 * time.Second)
	for b.Interrupts() == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ierr := b.Interrupts()
	if !errors.Is(ierr, ErrNoInterrupts) || !strings.Contains(ierr.Error(), "stopped") {
		t.Fatalf("Interrupts() after a lost owner = %v, want ErrNoInterrupts saying the owner stopped", ierr)
	}
	// The loss itself wakes Wait once more (so that a sleeping caller
	// learns of it); then Wait says why.
	var werr error
	for range 2 {
		if _, werr = b.Wait(context.Background()); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrNoInterrupts) {
		t.Fatalf("Wait after a lost owner = %v, want ErrNoInterrupts", werr)
	}
}

// TestSharePassesDescriptors: the owner passes its VFIO descriptors with
// each subscription, and a subscriber keeps them until it closes its
// doorbell or the device goes away: the same open files (here eventfds
// standing in for the device, group and container), so that the device
// stays open when the owner's process ends.
func TestSharePassesDescriptors(t *testing.T) {
	d := fakeDoorbell(t, t.TempDir())
	var own vfio
	for _, fd := range []*int{&own.dev, &own.group, &own.container} {
		var err error
		if *fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			t.Fatal(err)
		}
	}
	s, err := listenShare(d, &own)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close(false)
	b, err := OpenDoorbell(d, DoorbellOptions{NoBind: true})
	if err != nil {
		t.Fatal(err)
	}
	awaitSubscribers(t, s, 1)
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	if held == nil {
		t.Fatal("the subscriber kept no descriptors")
	}
	for i, pair := range [][2]int{{own.dev, held.dev}, {own.group, held.group}, {own.container, held.container}} {
		var a, c unix.Stat_t
		if unix.Fstat(pair[0], &a) != nil || unix.Fstat(pair[1], &c) != nil || a.Ino != c.Ino || pair[0] == pair[1] {
			t.Errorf("descriptor %d: the subscriber's %d is not a copy of the owner's %d", i, pair[1], pair[0])
		}
	}
	// The owner's process ends (its descriptors close): the subscriber's
	// copies keep the files open.
	own.close()
	var st unix.Stat_t
	if err := unix.Fstat(held.dev, &st); err != nil {
		t.Errorf("the kept device descriptor after the owner closed its own: %v", err)
	}
	b.Close()
	b.mu.Lock()
	kept := b.held
	b.mu.Unlock()
	if kept != nil {
		t.Error("the subscriber still keeps the descriptors after Close")
	}
}

// TestShareHandedOver: a reader that kept a device's VFIO descriptors
// without its interrupts (the libpcap shim, once the owner stopped)
// listens in the owner's place and hands them over: one byte, shareTake,
// and the 3 descriptors, no eventfd. The process that connects keeps them
// to take the interrupts over (adopt), and subscribes to nobody.
func TestShareHandedOver(t *testing.T) {
	d := fakeDoorbell(t, t.TempDir())
	var lent [3]int
	for i := range lent {
		var err error
		if lent[i], err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(lent[i])
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: shareName(d), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		c, err := ln.AcceptUnix()
		ln.Close() // the lender stops listening first: the taker listens next
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, _, err = c.WriteMsgUnix([]byte{shareTake}, unix.UnixRights(lent[:]...), nil)
		done <- err
	}()
	b := &Doorbell{dev: d}
	if b.subscribe() {
		t.Fatal("subscribed to a lender, which has no interrupts to pass on")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	if held == nil {
		t.Fatal("the descriptors handed over were not kept")
	}
	defer held.close()
	for i, pair := range [][2]int{{lent[0], held.dev}, {lent[1], held.group}, {lent[2], held.container}} {
		var a, c unix.Stat_t
		if unix.Fstat(pair[0], &a) != nil || unix.Fstat(pair[1], &c) != nil || a.Ino != c.Ino || pair[0] == pair[1] {
			t.Errorf("descriptor %d: the taker's %d is not a copy of the lender's %d", i, pair[1], pair[0])
		}
	}
	// The name is free: the taker can listen there, as adopt does.
	s, err := listenShare(d, held)
	if err != nil {
		t.Fatalf("the taker cannot listen after the handover: %v", err)
	}
	s.close(false)
}
