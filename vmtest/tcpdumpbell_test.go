package vmtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/qmp"
)

// TestTcpdumpSharesDoorbell: Debian's tcpdump with the libpcap shim in a
// guest, reading one queue of an ivshmem-doorbell device while zcount
// reads another. VFIO lets one process hold the device; when the last one
// closes it, vfio-pci resets it (memory decoding off, a secondary bus
// reset), and BAR2 read zeros under the shim, which polled: tcpdump
// stopped with "cluster gone" the moment zcount exited (seen with the
// earlier shim in this test, every run). Now the shim subscribes to the
// holder of the interrupts as Go readers do (guest/share.go), sleeps on
// them, keeps the VFIO descriptors, and lends them on when the holder
// stops.
//
//   - tcpdump starts first and polls (nobody holds the interrupts yet);
//     zcount then binds the device to vfio-pci under it and holds the
//     interrupts, and tcpdump subscribes: QEMU stays nearly idle while
//     both wait.
//   - zcount exits after its share of a first burst; tcpdump reads on
//     across the release (the device stays open: its runtime PM status
//     stays active), and zcguest list still reads the region. tcpdump
//     polls while nobody holds the interrupts (QEMU's CPU is logged).
//   - A second zcount gets the interrupts from the shim (it was lending
//     the device) and sleeps on the doorbell; tcpdump subscribes to it:
//     both wait idle again, then each counts its share of a second burst.
//   - The second zcount exits; the agent stops and unplugs the region
//     while tcpdump alone holds the device: the shim gives it up on the
//     kernel's request, the unplug completes, tcpdump stops with the
//     shim's "gone" error, and its file holds both bursts' frames, whole.
func TestTcpdumpSharesDoorbell(t *testing.T) {
	const (
		id     = 88
		queues = 2
		first  = 400 // packets split evenly (round-robin)
		second = 200
		// Both readers asleep add little to QEMU's CPU under TCG; one
		// that polls adds about 25% (TestGuestSleepsOnDoorbell): the bound
		// sits far from both.
		idleBound = 450 * time.Millisecond // of QEMU's CPU in 3 s
	)
	g := newTcpdumpGuest(t)
	h := newHostTools(t)
	ctx := testCtx(t, 240*time.Second)
	want := first/queues + second/queues
	vm := bellVM(t, append(g.opts, Name("tcpdump-bell"), Timeout(4*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
at=$(zcguest wait -c %[1]d --timeout 60s --poll 5ms) || exit 1
echo "$at"
dev=/sys/bus/pci/devices/$(echo "$at" | sed -n 's/^cluster [0-9]* at \([^ ]*\) .*/\1/p')
st() { echo "ZCSTATUS $1 $(cat $dev/power/runtime_status)"; }
st unbound
LD_PRELOAD=/libzcpcap.so ZCPCAP_VERBOSE=1 /usr/bin/tcpdump -i zc:%[1]d@1 -w /tmp/x.pcap 2>&1 &
tp=$!
sleep 1
( echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)"; st released ) &
first=$!
sleep 1
st held
wait $first
sleep 6
st later
zcguest list 2>&1 | sed 's/^/ZCLIST /'
echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[3]d --verify --json --interval 0)"
echo "ZCSECOND exited"
wait $tp
echo "ZCTCPDUMP $?"
echo "ZCPCAP $(base64 -w 0 /tmp/x.pcap)"`, id, first/queues, second/queues)))...)
	agent := h.startAgent(t, true, "run", "-c", fmt.Sprint(id), "-n", fmt.Sprint(queues), "-m", "0",
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=16s", frameLen, first),
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=40s", frameLen, second),
		"--keep", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "6s", "--vm", vm.QMPPath())

	expectIdle := func(who string) { t.Helper(); expectQEMUIdle(t, vm, who, idleBound) }
	zcountWaits := regexp.MustCompile(fmt.Sprintf(`zc:%d@0: idle waits: (.*)`, id))
	expectBell := func(who string) {
		t.Helper()
		_, m, err := vm.ExpectRegexp(ctx, zcountWaits)
		if err != nil {
			t.Fatalf("%s never said how it waits: %v\nagent:\n%s", who, err, agent.stderrText())
		}
		if m[1] != "doorbell" {
			t.Fatalf("%s waits by %q, want the doorbell", who, m[1])
		}
	}

	if _, err := vm.Expect(ctx, fmt.Sprintf("listening on zc:%d@1", id)); err != nil {
		t.Fatal(err)
	}
	expectBell("the first zcount")
	expectIdle("zcount and tcpdump (subscribed to zcount)")
	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	s.check(t, "the first zcount (it held the interrupts)", first/queues)
	// tcpdump holds the device alone and lends it: it polls meanwhile.
	time.Sleep(1500 * time.Millisecond)
	t.Logf("QEMU CPU in 3 s while tcpdump alone waited, polling (it lends the device, nobody holds the interrupts): %v", qemuCPU(t, vm))

	// The second zcount takes the interrupts over from the shim.
	expectBell("the second zcount, after the first exited")
	expectIdle("the second zcount and tcpdump (subscribed to it)")
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	s.check(t, "the second zcount", second/queues)
	if _, err := vm.Expect(ctx, "ZCSECOND exited"); err != nil {
		t.Fatal(err)
	}

	// tcpdump alone holds the device now; the agent unplugs it.
	time.Sleep(time.Second)
	unplugUnder(t, ctx, vm, agent, "tcpdump")
	var list []string
	var sawGone bool
	bellSleeps := ""
	sleeps := regexp.MustCompile(fmt.Sprintf(`^libzcpcap: zc:%d@1: .*sleeps \d+ \(on the doorbell (\d+)\)`, id))
	statuses := map[string]string{}
	status := regexp.MustCompile(`^ZCSTATUS (\w+) (\w+)`)
	for _, l := range vm.Lines() {
		if strings.HasPrefix(l.Text, "ZCLIST ") {
			list = append(list, l.Text)
		}
		if m := status.FindStringSubmatch(l.Text); m != nil {
			statuses[m[1]] = m[2]
		}
		sawGone = sawGone || strings.Contains(l.Text, fmt.Sprintf("tcpdump: pcap_loop: zc:%d@1: cluster %d gone", id, id))
		if m := sleeps.FindStringSubmatch(l.Text); m != nil {
			bellSleeps = m[1]
		}
	}
	if bellSleeps == "" || bellSleeps == "0" {
		t.Errorf("the shim's counters at pcap_close show no sleep on the doorbell (%q)", bellSleeps)
	} else {
		t.Logf("tcpdump slept %s times on the doorbell", bellSleeps)
	}
	t.Logf("the device's runtime PM status: %v", statuses)
	for _, when := range []string{"held", "released", "later"} {
		if statuses[when] != "active" {
			t.Errorf("the device was %q %s the first zcount exited, want active: tcpdump keeps it open", statuses[when], map[string]string{"held": "before", "released": "just after", "later": "3 s after"}[when])
		}
	}
	t.Logf("zcguest list after the release:\n%s", strings.Join(list, "\n"))
	if !regexp.MustCompile(fmt.Sprintf(`(?m)^ZCLIST \S+ +\d+ +%d$`, id)).MatchString(strings.Join(list, "\n")) {
		t.Errorf("zcguest list after the release does not show cluster %d:\n%s", id, strings.Join(list, "\n"))
	}
	if !sawGone {
		t.Errorf("tcpdump did not stop with the shim's \"cluster %d gone\" error after the unplug", id)
	}
	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`^ZCPCAP (\S*)$`))
	if err != nil {
		t.Fatal(err)
	}
	if n := countSynthPcap(t, m[1]); n != want {
		t.Fatalf("tcpdump captured %d packets, want %d", n, want)
	}
	t.Logf("tcpdump read queue 1 across both zcounts: %d generator frames, all whole", want)
}

// unplugUnder stops the agent, which unplugs the region while who (a
// tcpdump of the guest) alone holds the device, and checks that the
// unplug completed (who gave the device up) and that who then exited with
// an error status (the script prints it as "ZCTCPDUMP status").
func unplugUnder(t *testing.T, ctx context.Context, vm *VM, agent *proc, who string) {
	t.Helper()
	start := time.Now()
	agent.stop(t, ctx)
	t.Logf("the agent stopped and unplugged the region in %v while %s alone held the device", time.Since(start).Round(time.Millisecond), who)
	if log := agent.stderrText(); strings.Contains(log, qmp.ErrDetachTimeout.Error()) {
		t.Errorf("the unplug did not complete: the guest kept the device (%s did not give it up)\nagent:\n%s", who, log)
	}
	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`^ZCTCPDUMP (\d+)$`))
	if err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	if m[1] == "0" {
		t.Errorf("%s exited 0 after the unplug, want its error status", who)
	}
}

// countSynthPcap decodes a pcap file sent over the console (base64) and
// returns how many frames it holds, checking each is a whole generator
// frame.
func countSynthPcap(t *testing.T, b64 string) int {
	t.Helper()
	file, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("the guest's pcap file, base64: %v", err)
	}
	r, err := pcapgo.NewReader(bytes.NewReader(file))
	if err != nil {
		t.Fatalf("the guest's pcap file (%d bytes): %v", len(file), err)
	}
	n := 0
	for ; ; n++ {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("the guest's pcap file, packet %d: %v", n, err)
		}
		if _, err := zc.CheckSynth(data); err != nil || len(data) != frameLen {
			t.Fatalf("the guest's pcap file, packet %d (%d bytes): %v", n, len(data), err)
		}
	}
}

// TestTcpdumpsLendDevice: two tcpdumps with the shim in a doorbell guest,
// after the Go reader that held the interrupts exited. The first tcpdump
// kept the device's VFIO descriptors and lends them; the second, started
// then, gets copies from it ('L'). When the first exits, the second alone
// keeps the device open (its runtime PM status stays active) and reads
// its queue on, exactly; then it lends the device itself, and gives it
// up to the agent's unplug, which completes.
func TestTcpdumpsLendDevice(t *testing.T) {
	const (
		id     = 89
		queues = 3
		first  = 300 // packets split evenly (round-robin)
		second = 150
	)
	g := newTcpdumpGuest(t)
	h := newHostTools(t)
	ctx := testCtx(t, 240*time.Second)
	vm := bellVM(t, append(g.opts, Name("tcpdumps"), Timeout(4*time.Minute), GoBinary("zcguest", zcguestPkg), GoBinary("zcount", zcountPkg), Script(fmt.Sprintf(`
at=$(zcguest wait -c %[1]d --timeout 60s --poll 5ms) || exit 1
dev=/sys/bus/pci/devices/$(echo "$at" | sed -n 's/^cluster [0-9]* at \([^ ]*\) .*/\1/p')
( echo "ZCRESULT $(zcount -i zc:%[1]d@0 -n %[2]d --verify --json --interval 0)" ) &
first=$!
sleep 1
LD_PRELOAD=/libzcpcap.so ZCPCAP_VERBOSE=1 /usr/bin/tcpdump -i zc:%[1]d@1 -w /tmp/a.pcap 2>&1 | sed 's/^/ZCA /' &
wait $first
sleep 2
LD_PRELOAD=/libzcpcap.so ZCPCAP_VERBOSE=1 /usr/bin/tcpdump -i zc:%[1]d@2 -w /tmp/b.pcap 2>&1 &
tb=$!
sleep 3
kill -INT $(pidof tcpdump | tr ' ' '\n' | grep -v "^$tb$")
echo "ZCSTOPPED the first tcpdump"
%[3]s
wait $tb
echo "ZCTCPDUMP $?"
echo "ZCPCAP $(base64 -w 0 /tmp/b.pcap)"`, id, first/queues, samplePM(2000))))...)
	agent := h.startAgent(t, true, "run", "-c", fmt.Sprint(id), "-n", fmt.Sprint(queues), "-m", "0",
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=14s", frameLen, first),
		"-i", fmt.Sprintf("gen:len=%d,count=%d,after=34s", frameLen, second),
		"--keep", "--backing", "shm", "--stats-interval", "0", "--wait-consumers", "6s", "--vm", vm.QMPPath())

	var s summary
	if _, err := vm.Result(ctx, &s); err != nil {
		t.Fatalf("%v\nagent:\n%s", err, agent.stderrText())
	}
	s.check(t, "zcount (it held the interrupts)", first/queues)
	if _, err := vm.Expect(ctx, "ZCSTOPPED"); err != nil {
		t.Fatal(err)
	}
	expectKeptOpen(t, ctx, vm, "after the first tcpdump stopped", "the second (it kept no descriptors)")
	// The second tcpdump reads its share of the second burst; then the
	// agent unplugs the region while it alone holds the device.
	want := uint64(first/queues + second/queues)
	for got := uint64(0); got != want; {
		select {
		case <-ctx.Done():
			t.Fatalf("the second tcpdump's queue: %d of %d packets received: %v", got, want, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if vms, err := inspectVMs(h, id); err == nil && len(vms) == 1 && len(vms[0].Queues) == queues {
			got = vms[0].Queues[2].Received
		}
		for _, l := range vm.Lines() {
			if strings.HasPrefix(l.Text, "ZCTCPDUMP ") {
				t.Fatalf("the second tcpdump ended after %d of %d packets, before the unplug (its error is in the console above)", got, want)
			}
		}
	}
	unplugUnder(t, ctx, vm, agent, "the second tcpdump")
	firstStopped := false
	for _, l := range vm.Lines() {
		firstStopped = firstStopped || strings.HasPrefix(l.Text, "ZCA ") && strings.Contains(l.Text, "packets captured")
	}
	if !firstStopped {
		t.Errorf("the first tcpdump did not stop on SIGINT")
	}
	_, m, err := vm.ExpectRegexp(ctx, regexp.MustCompile(`^ZCPCAP (\S*)$`))
	if err != nil {
		t.Fatal(err)
	}
	if n := countSynthPcap(t, m[1]); n != int(want) {
		t.Fatalf("the second tcpdump captured %d packets, want %d", n, want)
	}
}
