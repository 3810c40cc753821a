package vmtest

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/zcfabric/zc/host/qmp"
)

const (
	hotplugCluster = 99
	hotplugSize    = 1 << 20
	hotplugRounds  = 4
)

// writeRegion fills the region file with a zcfabric header for cluster and
// a pattern that differs per round, and returns the CRC-32 of its bytes.
func writeRegion(t *testing.T, path string, cluster uint32, round int) uint32 {
	t.Helper()
	b := make([]byte, hotplugSize)
	rnd := rand.New(rand.NewPCG(uint64(round), 0x7a63))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rnd.Uint64())
	}
	copy(b, "ZCFABRIC")
	binary.LittleEndian.PutUint32(b[24:], cluster)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return crc32.ChecksumIEEE(b)
}

// TestHotplug hot-plugs a 1 MiB region file from /dev/shm into a running
// guest through host/qmp, has the guest find it by cluster id and checksum
// it, unplugs it (waiting for DEVICE_DELETED), and does it again with new
// contents and fresh QEMU ids (4 rounds in one guest), on pc and on q35. It
// logs the plug to guest-visible latency: from AttachRegion's start to the
// host reading the guest's "cluster 99 at" line on the serial console.
func TestHotplug(t *testing.T) {
	for _, machine := range []string{"pc", "q35"} {
		t.Run(machine, func(t *testing.T) { testHotplug(t, machine) })
	}
}

func testHotplug(t *testing.T, machine string) {
	script := fmt.Sprintf(`for r in $(seq %d); do
	echo "ZCWAITING $r"
	zcguest wait -c %d --timeout 60s --poll 5ms || exit 1
	echo "ZCRESULT $(zcguest sum -c %d --len %d --json)"
	zcguest wait -c %d --gone --timeout 60s --poll 5ms || exit 1
done`, hotplugRounds, hotplugCluster, hotplugCluster, hotplugSize, hotplugCluster)
	vm := Start(t, Machine(machine), GoBinary("zcguest", zcguestPkg), Script(script))
	ctx := testCtx(t, 100*time.Second)

	shm := "/dev/shm"
	if fi, err := os.Stat(shm); err != nil || !fi.IsDir() {
		shm = t.TempDir()
	}
	path := filepath.Join(shm, fmt.Sprintf("zc-vmtest-%d-%s", os.Getpid(), machine))
	t.Cleanup(func() { os.Remove(path) })

	c, err := qmp.Dial(ctx, vm.QMPPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	found := regexp.MustCompile(fmt.Sprintf(`^cluster %d at (\S+) \((\d+) bytes\)`, hotplugCluster))
	var ids []string
	var plugLatency []time.Duration
	for round := 1; round <= hotplugRounds; round++ {
		want := writeRegion(t, path, hotplugCluster, round)
		if _, err := vm.Expect(ctx, fmt.Sprintf("ZCWAITING %d", round)); err != nil {
			t.Fatal(err)
		}
		// Give zcguest wait time to start polling, so the latency below
		// measures the plug and not the guest's process start.
		time.Sleep(300 * time.Millisecond)

		start := time.Now()
		a, err := c.AttachRegion(ctx, qmp.AttachSpec{Path: path, Size: hotplugSize, Name: "c99"})
		if err != nil {
			t.Fatal(err)
		}
		attached := time.Since(start)
		line, m, err := vm.ExpectRegexp(ctx, found)
		if err != nil {
			t.Fatal(err)
		}
		visible := line.Time.Sub(start)
		plugLatency = append(plugLatency, visible)
		if m[2] != fmt.Sprint(hotplugSize) {
			t.Errorf("guest sees a %s-byte BAR, want %d", m[2], hotplugSize)
		}

		var sum struct {
			Cluster uint32 `json:"cluster"`
			Len     int    `json:"len"`
			CRC32   uint32 `json:"crc32"`
		}
		if _, err := vm.Result(ctx, &sum); err != nil {
			t.Fatal(err)
		}
		if sum.Cluster != hotplugCluster || sum.Len != hotplugSize || sum.CRC32 != want {
			t.Errorf("round %d: guest checksum %+v, want cluster %d, %d bytes, crc32 %08x", round, sum, hotplugCluster, hotplugSize, want)
		}

		start = time.Now()
		if err := c.Detach(ctx, a); err != nil {
			t.Fatal(err)
		}
		detached := time.Since(start)
		if _, err := vm.Expect(ctx, fmt.Sprintf("cluster %d gone", hotplugCluster)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s (%s) round %d: bus %q, ids %s %s; attach QMP %v, plug to guest-visible %v (guest PCI address %s), detach to DEVICE_DELETED %v",
			machine, vm.AccelName(), round, a.Bus, a.MemID, a.DevID, attached.Round(time.Millisecond), visible.Round(time.Millisecond), m[1], detached.Round(time.Millisecond))
		if machine == "q35" && a.Bus == "" {
			t.Errorf("q35 attachment used the default bus, want a pcie-root-port")
		}
		if slices.Contains(ids, a.MemID) || slices.Contains(ids, a.DevID) {
			t.Errorf("round %d reused an id: %s %s (earlier: %v)", round, a.MemID, a.DevID, ids)
		}
		ids = append(ids, a.MemID, a.DevID)
	}
	slices.Sort(plugLatency)
	t.Logf("%s (%s): plug to guest-visible over %d rounds: min %v, median %v, max %v", machine, vm.AccelName(), len(plugLatency),
		plugLatency[0].Round(time.Millisecond), plugLatency[len(plugLatency)/2].Round(time.Millisecond), plugLatency[len(plugLatency)-1].Round(time.Millisecond))
	if err := vm.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}
