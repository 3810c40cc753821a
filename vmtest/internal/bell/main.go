// Command bell drives the guest side of the doorbell vmtest
// (vmtest/doorbell_test.go): it finds the ivshmem-doorbell device, opens
// it with package guest and maps its BAR2, then follows a fixed plan the host
// paces through words of the shared memory:
//
//  1. idle: block in Wait until the host's first notification (the host
//     measures QEMU's CPU time meanwhile), and report the vectors that
//     fired;
//  2. host to guest, --rounds times: Wait, then store the round number in
//     the ack word (the host timed its Notify and polls that word);
//  3. guest to host, --rounds times: spin until the go word holds the round
//     number, then ring the host peer (the host timed its store and waits
//     for the ring);
//  4. with --restart, after the host's agent restarted (a new server
//     recovered the old one's eventfds): Wait once, store rounds+1 in the
//     ack word, spin until the go word holds rounds+1, ring the host;
//  5. unplug: Wait until the device goes away, and report how Wait ended.
//
// Without interrupts (no IOMMU) it says so once, skips 1, 2 and 4, and
// still rings the host in 3.
//
// Lines on stdout: "bell: ..." progress, and "ZCRESULT {json}" results.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/zcfabric/zc/guest"
)

// Offsets of the plan's words in the shared memory (8-byte aligned, each
// on its own cache line); the host side uses the same numbers.
const (
	offAck = 64  // guest stores the round it woke for (host to guest)
	offGo  = 128 // host stores the round to ring for (guest to host)
)

// Result is printed as "ZCRESULT " + JSON after each phase.
type Result struct {
	Phase      string `json:"phase"`
	Addr       string `json:"addr,omitempty"`
	Peer       uint16 `json:"peer"`
	Interrupts string `json:"interrupts,omitempty"` // "" when Wait works, else why not
	Driver     string `json:"driver,omitempty"`
	Mask       uint64 `json:"mask,omitempty"`
	Rounds     int    `json:"rounds,omitempty"`
	Gone       bool   `json:"gone,omitempty"`
	Error      string `json:"error,omitempty"`
}

func report(r Result) {
	b, _ := json.Marshal(r)
	fmt.Printf("ZCRESULT %s\n", b)
}

func main() {
	rounds := flag.Int("rounds", 10, "rounds per direction")
	restart := flag.Bool("restart", false, "expect an agent restart after the rounds")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *rounds, *restart); err != nil {
		fmt.Printf("bell: %v\n", err)
		report(Result{Phase: "error", Error: err.Error()})
		os.Exit(1)
	}
}

func run(ctx context.Context, rounds int, restart bool) error {
	d, err := guest.Wait(ctx, "", func(guest.Device) bool { return true }, 0)
	if err != nil {
		return err
	}
	// Open (bind vfio-pci) first, then map BAR2 through sysfs: the
	// mapping must work with vfio-pci bound.
	b, err := guest.OpenDoorbell(d, guest.DoorbellOptions{})
	if err != nil {
		return err
	}
	defer b.Close()
	m, err := d.Map()
	if err != nil {
		return err
	}
	defer m.Close()
	mem := m.Bytes()
	drv, _ := os.Readlink(d.Dir + "/driver")
	r := Result{Phase: "open", Addr: d.Addr, Peer: b.IVPosition(), Driver: drv}
	intr := b.Interrupts()
	if intr != nil {
		r.Interrupts = intr.Error()
		fmt.Printf("bell: no interrupts, polling instead: %v\n", intr)
	}
	report(r)

	if intr == nil {
		mask, err := b.Wait(ctx)
		if err != nil {
			return fmt.Errorf("idle wait: %w", err)
		}
		fmt.Printf("bell: woke from idle, vectors %#x\n", mask)
		report(Result{Phase: "idle", Mask: mask})
		for i := 1; i <= rounds; i++ {
			if _, err := b.Wait(ctx); err != nil {
				return fmt.Errorf("host to guest round %d: %w", i, err)
			}
			word(mem, offAck).Store(uint64(i))
		}
		report(Result{Phase: "h2g", Rounds: rounds})
	}

	for i := 1; i <= rounds; i++ {
		for word(mem, offGo).Load() != uint64(i) {
			if ctx.Err() != nil {
				return fmt.Errorf("guest to host round %d: %w", i, ctx.Err())
			}
		}
		b.Ring(0, 0)
	}
	report(Result{Phase: "g2h", Rounds: rounds})

	if restart && intr == nil {
		mask, err := b.Wait(ctx)
		if err != nil {
			return fmt.Errorf("wait across the agent restart: %w", err)
		}
		word(mem, offAck).Store(uint64(rounds + 1))
		for word(mem, offGo).Load() != uint64(rounds+1) {
			if ctx.Err() != nil {
				return fmt.Errorf("ring after the agent restart: %w", ctx.Err())
			}
		}
		b.Ring(0, 0)
		report(Result{Phase: "restart", Mask: mask})
	}

	if intr == nil {
		var err error
		for err == nil {
			_, err = b.Wait(ctx)
		}
		r := Result{Phase: "unplug", Gone: errors.Is(err, guest.ErrDoorbellGone)}
		if err != nil {
			r.Error = err.Error()
		}
		fmt.Printf("bell: wait during unplug returned: %v\n", err)
		report(r)
	}
	return nil
}
