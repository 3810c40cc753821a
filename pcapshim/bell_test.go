package pcapshim

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcfabric/zc/ivshmem"
)

// TestGuestDoorbellSubscription: in a guest with an ivshmem-doorbell
// device, the shim subscribes to the process that holds the device's
// interrupts (guest/share.go), as Go readers do, here a fake holder
// listening on the device's abstract socket in a fake sysfs tree:
//
//   - tcpdump connects, says it is the shim ('S'), and on the holder's
//     hello ('H', an eventfd and 3 VFIO descriptors, here plain files)
//     keeps the 3 descriptors (the device stays open while it reads) and
//     sleeps announcing WakeDoorbell in the data ring's wake word;
//   - an unplug notice ('G') makes it close the descriptors at once;
//   - a second tcpdump, whose holder then stops (end of file), keeps the
//     descriptors and would lend them in the holder's place, but cannot
//     arm the device request on them (they are not a VFIO device), so it
//     lets them go: a reader never holds a device that an unplug cannot
//     take back.
//
// vmtest/TestTcpdumpSharesDoorbell does it all with real VFIO and QEMU.
func TestGuestDoorbellSubscription(t *testing.T) {
	e := newEnv(t)
	c := e.newRegion(73)
	s := newSysfs(t)
	dev := s.ivshmem("0000:00:07.0", c.File())
	// A doorbell device: BAR0 (registers) and BAR1 (its MSI-X table).
	if err := os.WriteFile(filepath.Join(dev, "resource0"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dev, "resource1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := ivshmem.Parse(c.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	wake := l.Queues[0].DataRing + 256 // the data ring's wake word (ivshmem/doc.go)
	// guest.shareName: FNV-1a of the device's directory as found under
	// $ZC_SYSFS/bus/pci/devices.
	h := fnv.New64a()
	h.Write([]byte(filepath.Join(s.root, "bus", "pci", "devices", "0000:00:07.0")))
	name := fmt.Sprintf("@zcfabric-doorbell-%016x", h.Sum64())
	g := e.guestEnv(s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// hello subscribes one tcpdump: it returns the tcpdump, its log, the
	// holder's end of the connection and the files passed as descriptors.
	hello := func() (td *os.Process, conn *net.UnixConn, files []string, stop func() string) {
		t.Helper()
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cmd := g.preloaded(ctx, "tcpdump", "-i", "zc:73@0", "-w", os.DevNull)
		log, done := listening(t, cmd, "zc:73@0")
		stop = func() string {
			cmd.Process.Signal(os.Interrupt)
			<-done
			cmd.Wait()
			if t.Failed() {
				t.Logf("tcpdump:\n%s", log)
			}
			return log.String()
		}
		ln.SetDeadline(time.Now().Add(10 * time.Second))
		conn, err = ln.AcceptUnix()
		if err != nil {
			stop()
			t.Fatalf("tcpdump never connected to the holder: %v", err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if n, err := conn.Read(b[:]); n != 1 || b[0] != 'S' {
			stop()
			t.Fatalf("tcpdump said %q (%v) as it connected, want 'S'", b[:n], err)
		}
		ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(ev)
		fds := []int{ev}
		for i := range 3 {
			p := filepath.Join(t.TempDir(), fmt.Sprintf("vfio-%d", i))
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			files, fds = append(files, p), append(fds, int(f.Fd()))
		}
		if _, _, err := conn.WriteMsgUnix([]byte{'H'}, unix.UnixRights(fds...), nil); err != nil {
			t.Fatal(err)
		}
		return cmd.Process, conn, files, stop
	}
	// holds reports whether process p has every file open (want) or none.
	holds := func(p *os.Process, files []string, want bool) bool {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := 0
			ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid))
			for _, en := range ents {
				target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.Pid, en.Name()))
				for _, f := range files {
					if target == f {
						n++
					}
				}
			}
			if want && n == len(files) || !want && n == 0 || time.Now().After(deadline) {
				return want && n == len(files) || !want && n == 0
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	t.Run("gone", func(t *testing.T) {
		td, conn, files, stop := hello()
		defer conn.Close()
		if !holds(td, files, true) {
			stop()
			t.Fatalf("tcpdump did not keep the holder's 3 descriptors (%s)", strings.Join(files, " "))
		}
		asleep := false
		for deadline := time.Now().Add(5 * time.Second); !asleep && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			asleep = binary.LittleEndian.Uint32(c.Bytes()[wake:])&3 == ivshmem.WakeDoorbell
		}
		if !asleep {
			t.Errorf("tcpdump never announced a sleep on the doorbell (wake word %#x)", binary.LittleEndian.Uint32(c.Bytes()[wake:]))
		}
		if _, err := conn.Write([]byte{'G'}); err != nil {
			t.Fatal(err)
		}
		if !holds(td, files, false) {
			t.Errorf("tcpdump still holds the descriptors 5 s after the unplug notice")
		}
		// ZCPCAP_VERBOSE's counters at pcap_close.
		log := stop()
		if m := regexp.MustCompile(`sleeps \d+ \(on the doorbell (\d+)\)`).FindStringSubmatch(log); m == nil || m[1] == "0" {
			t.Errorf("the shim's counters show no sleep on the doorbell:\n%s", log)
		}
	})
	t.Run("holder stops", func(t *testing.T) {
		td, conn, files, stop := hello()
		defer stop()
		if !holds(td, files, true) {
			t.Fatalf("tcpdump did not keep the holder's 3 descriptors (%s)", strings.Join(files, " "))
		}
		conn.Close()
		if !holds(td, files, false) {
			t.Errorf("tcpdump kept descriptors it could not arm the device request on, 5 s after its holder stopped")
		}
	})
}
