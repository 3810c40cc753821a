// Command scribble is a hostile party for the fault-isolation tests: it
// does to a region what a malicious guest, host process or QEMU could.
//
//	scribble --bar -c ID [--wait D] [--for D] [--handshake D] [--ring D] [--gone D]
//	scribble --region PATH [--queue Q] [--for D] [--handshake D]
//	scribble --truncate PATH --size N
//
// --bar (in a guest) finds the ivshmem device carrying cluster ID the way
// package guest does, then writes random 32- and 64-bit words over the
// whole BAR (header, queue table, rings, metadata and, less often, the
// buffers) for --for, then hammers the handshake word of every queue for
// --handshake: it keeps writing (epoch+1)<<2|HSWait, the request a newly
// attached consumer makes, so the producer is asked to recover the queue
// over and over. With --ring it then rings the device's doorbell (an
// ivshmem-doorbell device: peer 0, vector 0, the host agent) as fast as
// it can for that long. With --gone it then waits for the device to be unplugged
// (its sysfs directory to vanish): the header is garbage by then, so the
// cluster can no longer be found by its id.
//
// --region (on the host) does the same to a region file; with --queue only
// that queue's data and return rings and its handshake word are written,
// so a test can be hostile on one queue and honest on the others.
//
// --truncate shrinks (or grows) a region file to --size bytes, as anything
// holding it open read-write (QEMU's memory backend, a consumer) can.
//
// Progress goes to stderr, one line each, prefixed "scribble: ". At the
// end one JSON line on stdout sums up what was done; the exit status is 1
// when something could not be done (the JSON then carries "error").
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/zcfabric/zc/guest"
	"github.com/zcfabric/zc/ivshmem"
)

// Summary is the JSON line printed at the end.
type Summary struct {
	Mode string `json:"mode"`
	// Target is the PCI address (--bar) or the file (--region, --truncate).
	Target string `json:"target"`
	// Words counts the random words written, HandshakeWrites the handshake
	// requests written; the seconds are how long each phase ran.
	Words            uint64  `json:"words"`
	HandshakeWrites  uint64  `json:"handshake_writes"`
	ScribbleSeconds  float64 `json:"scribble_seconds"`
	HandshakeSeconds float64 `json:"handshake_seconds"`
	// Rings counts the doorbell rings (--ring).
	Rings uint64 `json:"rings,omitempty"`
	// Queues are the queues whose handshake word was hammered.
	Queues []uint32 `json:"queues,omitempty"`
	// Gone: with --gone, the device was unplugged before the wait ended.
	Gone bool `json:"gone,omitempty"`
	// Size is the new file size (--truncate).
	Size int64 `json:"size,omitempty"`
	// Seed is the random seed used: pass it as --seed to repeat a run.
	Seed  uint64 `json:"seed,omitempty"`
	Error string `json:"error,omitempty"`
}

type opts struct {
	bar       bool
	cluster   uint
	sysfs     string
	wait      time.Duration
	gone      time.Duration
	region    string
	queue     int
	truncate  string
	size      int64
	scribble  time.Duration
	handshake time.Duration
	ring      time.Duration
	seed      uint64
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	var o opts
	fs := flag.NewFlagSet("scribble", flag.ContinueOnError)
	fs.BoolVar(&o.bar, "bar", false, "scribble over the BAR of the ivshmem device carrying cluster -c (in a guest)")
	fs.UintVar(&o.cluster, "c", 99, "cluster `id` (--bar)")
	fs.StringVar(&o.sysfs, "sysfs", "", "sysfs `root` (--bar; default $ZC_SYSFS or /sys)")
	fs.DurationVar(&o.wait, "wait", 0, "--bar: wait up to this `long` for the device to appear")
	fs.DurationVar(&o.gone, "gone", 0, "--bar: at the end, wait up to this `long` for the device to be unplugged")
	fs.StringVar(&o.region, "region", "", "scribble over the region `file` (on the host)")
	fs.IntVar(&o.queue, "queue", -1, "--region: only this `queue`'s rings and handshake word")
	fs.StringVar(&o.truncate, "truncate", "", "truncate the region `file` to --size")
	fs.Int64Var(&o.size, "size", 4096, "--truncate: new size in `bytes`")
	fs.DurationVar(&o.scribble, "for", 3*time.Second, "write random words for this `long`")
	fs.DurationVar(&o.handshake, "handshake", 0, "then hammer the handshake word(s) for this `long`")
	fs.DurationVar(&o.ring, "ring", 0, "--bar: then ring the device's doorbell as fast as possible for this `long`")
	fs.Uint64Var(&o.seed, "seed", 0, "random `seed` (0: from the clock)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	modes := 0
	for _, on := range []bool{o.bar, o.region != "", o.truncate != ""} {
		if on {
			modes++
		}
	}
	if modes != 1 || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "scribble: want exactly one of --bar, --region PATH, --truncate PATH")
		return 2
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	var s Summary
	var err error
	switch {
	case o.bar:
		s, err = runBAR(o)
	case o.region != "":
		s, err = runRegion(o)
	default:
		s, err = runTruncate(o)
	}
	if o.truncate == "" {
		s.Seed = o.seed
	}
	if err != nil {
		s.Error = err.Error()
		fmt.Fprintf(os.Stderr, "scribble: %v\n", err)
	}
	if jerr := json.NewEncoder(os.Stdout).Encode(s); jerr != nil {
		fmt.Fprintf(os.Stderr, "scribble: %v\n", jerr)
		return 1
	}
	if err != nil {
		return 1
	}
	return 0
}

// runBAR finds the device carrying the cluster, scribbles over its BAR,
// hammers every queue's handshake word and optionally waits for the
// device to go.
func runBAR(o opts) (Summary, error) {
	s := Summary{Mode: "bar"}
	sysfs := o.sysfs
	if sysfs == "" {
		sysfs = guest.SysfsRoot()
	}
	dev, m, l, err := findBAR(sysfs, uint32(o.cluster), o.wait)
	if err != nil {
		return s, err
	}
	defer m.Close()
	s.Target = dev.Addr
	fmt.Fprintf(os.Stderr, "scribble: cluster %d at %s, %d bytes, %d queues\n", o.cluster, dev.Addr, len(m.Bytes()), len(l.Queues))
	qs := make([]uint32, len(l.Queues))
	for i := range qs {
		qs[i] = uint32(i)
	}
	hostile(&s, o, m.Bytes(), &l, wholeRegion(m.Bytes(), &l), qs)
	if o.ring > 0 {
		if err := ring(&s, dev, o.ring); err != nil {
			return s, err
		}
	}
	if o.gone > 0 {
		fmt.Fprintf(os.Stderr, "scribble: waiting up to %v for device %s to go\n", o.gone, dev.Addr)
		deadline := time.Now().Add(o.gone)
		for !guest.Gone(dev) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		s.Gone = guest.Gone(dev)
		fmt.Fprintf(os.Stderr, "scribble: device %s gone: %v\n", dev.Addr, s.Gone)
	}
	return s, nil
}

// findBAR maps the BAR of the device whose header carries cluster and
// validates it, polling for up to wait.
func findBAR(sysfs string, cluster uint32, wait time.Duration) (guest.Device, *guest.Mapping, ivshmem.Layout, error) {
	deadline := time.Now().Add(wait)
	for {
		devs, err := guest.Find(sysfs)
		if err != nil {
			return guest.Device{}, nil, ivshmem.Layout{}, err
		}
		for _, d := range devs {
			if d.Size == 0 {
				continue
			}
			m, err := d.Map()
			if err != nil {
				continue
			}
			if id, ok := guest.ClusterID(m.Bytes()); !ok || id != cluster {
				m.Close()
				continue
			}
			l, err := ivshmem.Parse(m.Bytes())
			if err != nil {
				m.Close()
				return guest.Device{}, nil, ivshmem.Layout{}, fmt.Errorf("device %s: %w", d.Addr, err)
			}
			return d, m, l, nil
		}
		if !time.Now().Before(deadline) {
			return guest.Device{}, nil, ivshmem.Layout{}, fmt.Errorf("cluster %d: %w under %s", cluster, guest.ErrNotFound, sysfs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runRegion scribbles over a region file on the host.
func runRegion(o opts) (Summary, error) {
	s := Summary{Mode: "region", Target: o.region}
	m, err := ivshmem.Map(o.region)
	if err != nil {
		return s, err
	}
	defer m.Close()
	l, err := ivshmem.Parse(m.Bytes)
	if err != nil {
		return s, fmt.Errorf("parse region %s: %w", o.region, err)
	}
	spans := wholeRegion(m.Bytes, &l)
	qs := make([]uint32, len(l.Queues))
	for i := range qs {
		qs[i] = uint32(i)
	}
	if o.queue >= 0 {
		if o.queue >= len(l.Queues) {
			return s, fmt.Errorf("region %s: queue %d of %d", o.region, o.queue, len(l.Queues))
		}
		q := l.Queues[o.queue]
		spans = []span{{q.DataRing, q.DataRing + ivshmem.DescRingBytes(q.Slots)}, {q.RetRing, q.RetRing + ivshmem.RingBytes(q.Slots)}}
		qs = []uint32{uint32(o.queue)}
	}
	fmt.Fprintf(os.Stderr, "scribble: region %s, %d bytes, queues %v\n", o.region, len(m.Bytes), qs)
	hostile(&s, o, m.Bytes, &l, spans, qs)
	return s, nil
}

// runTruncate changes the size of a region file under everyone mapping it.
func runTruncate(o opts) (Summary, error) {
	s := Summary{Mode: "truncate", Target: o.truncate, Size: o.size}
	f, err := os.OpenFile(o.truncate, os.O_RDWR, 0)
	if err != nil {
		return s, fmt.Errorf("truncate %s: %w", o.truncate, err)
	}
	defer f.Close()
	if err := f.Truncate(o.size); err != nil {
		return s, fmt.Errorf("truncate %s to %d bytes: %w", o.truncate, o.size, err)
	}
	fmt.Fprintf(os.Stderr, "scribble: truncated %s to %d bytes\n", o.truncate, o.size)
	return s, nil
}

// span is a byte range [lo, hi) of the region.
type span struct{ lo, hi uint64 }

// wholeRegion returns the spans a whole-region scribble writes: the
// control part (header, queue table, rings, metadata) weighted seven to
// one against the whole mapping, buffers included, so that the words the
// host reads are hit often.
func wholeRegion(b []byte, l *ivshmem.Layout) []span {
	ctl := span{0, min(l.BufOff, uint64(len(b)))}
	all := span{0, uint64(len(b))}
	return []span{ctl, ctl, ctl, ctl, ctl, ctl, ctl, all}
}

// hostile runs the two phases: random words over spans for o.scribble,
// with one write in 64 going to a handshake word of qs, then the
// handshake hammer on qs for o.handshake.
func hostile(s *Summary, o opts, b []byte, l *ivshmem.Layout, spans []span, qs []uint32) {
	r := rand.New(rand.NewPCG(o.seed, o.seed^0x9e3779b97f4a7c15))
	le := binary.LittleEndian
	start := time.Now()
	end := start.Add(o.scribble)
	for n := uint64(0); o.scribble > 0; n++ {
		if n%4096 == 0 && !time.Now().Before(end) {
			break
		}
		x := r.Uint64()
		if x%64 == 0 {
			l.SetHandshake(b, qs[r.IntN(len(qs))], uint32(x>>32))
			s.Words++
			continue
		}
		sp := spans[r.IntN(len(spans))]
		if sp.hi-sp.lo < 8 {
			continue
		}
		off := sp.lo + r.Uint64N(sp.hi-sp.lo-7)
		if x&1 == 0 {
			le.PutUint64(b[off&^7:], r.Uint64())
		} else {
			le.PutUint32(b[off&^3:], r.Uint32())
		}
		s.Words++
	}
	s.ScribbleSeconds = time.Since(start).Seconds()
	fmt.Fprintf(os.Stderr, "scribble: wrote %d random words in %.2fs\n", s.Words, s.ScribbleSeconds)

	s.Queues = qs
	start = time.Now()
	end = start.Add(o.handshake)
	for n := uint64(0); o.handshake > 0; n++ {
		if n%1024 == 0 && !time.Now().Before(end) {
			break
		}
		q := qs[n%uint64(len(qs))]
		v := l.Handshake(b, q)
		l.SetHandshake(b, q, (v>>2+1)<<2|ivshmem.HSWait)
		s.HandshakeWrites++
	}
	s.HandshakeSeconds = time.Since(start).Seconds()
	fmt.Fprintf(os.Stderr, "scribble: wrote %d handshake requests in %.2fs\n", s.HandshakeWrites, s.HandshakeSeconds)
}

// ring rings dev's doorbell (peer 0, vector 0: the host) without pause for
// d, through its BAR0 register (no interrupts needed, no driver bound).
func ring(s *Summary, dev guest.Device, d time.Duration) error {
	db, err := guest.OpenDoorbell(dev, guest.DoorbellOptions{NoBind: true})
	if err != nil {
		return err
	}
	defer db.Close()
	fmt.Fprintf(os.Stderr, "scribble: ringing the doorbell of %s for %v\n", dev.Addr, d)
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for range 1024 {
			db.Ring(0, 0)
		}
		s.Rings += 1024
	}
	fmt.Fprintf(os.Stderr, "scribble: rang %d times\n", s.Rings)
	return nil
}
