// Command zsend produces packets into a zcfabric queue: synthetic,
// sequence-numbered frames (checkable with zcount --verify) or the frames
// of a pcap file. It attaches the producer end with the queue's own
// buffers (zchost run --queue-buffers N), on the host or in a VM:
//
//	zsend -o zc:99@0 [-l 64] [-n 1000000] [-r PPS] [-f file.pcap] [--lossless=false]
//
// It waits for room when the queue is full; --lossless=false drops and
// counts instead. A pcap frame longer than the queue's buffers is cut to
// their size and sent, and counted: the summary and standard error say
// how many were cut. Exit status: 0 when every frame was made (sent or,
// with --lossless=false, dropped); 1 when the queue failed, could not be
// opened, or the pcap file could not be read to its end (cut short,
// corrupt), after the summary of what was sent; 2 for a usage error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/examples/internal/cli"
	"github.com/zcfabric/zc/internal/idle"
	"github.com/zcfabric/zc/ivshmem"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// napMax is the longest a paced zsend sleeps between looks at its queue:
// a third of zc.HandshakeWait, so that a reader replacing a dead one gets
// the dead one's buffers back before it stops waiting for them.
const napMax = zc.HandshakeWait / 3

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zsend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		name     string
		length   int
		count    uint64
		rate     float64
		file     string
		lossless bool
		asJSON   bool
		stamp    bool
		wait     time.Duration
	)
	fs.StringVar(&name, "o", "", "queue to produce into, zc:CLUSTER@QUEUE (required)")
	fs.IntVar(&length, "l", 64, fmt.Sprintf("frame `length` in bytes (synthetic frames), %d to the queue's buffer size (2048 unless\nzchost run --buffer-size says otherwise; %d at most)", zc.MinSynthLen, ivshmem.MaxBufSize))
	fs.Uint64Var(&count, "n", 1000000, "number of frames (0: until interrupted, or the end of the -f file)")
	fs.Float64Var(&rate, "r", 0, "frames per second (0: as fast as possible)")
	fs.StringVar(&file, "f", "", "send the frames of this pcap `file` instead of synthetic ones (a frame longer than\nthe queue's buffers is cut to their size, and counted)")
	fs.BoolVar(&lossless, "lossless", true, "wait for room when the queue is full (false: drop and count)")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	fs.DurationVar(&wait, "wait", 0, "wait up to this long for the cluster to appear (0: fail at once)")
	fs.BoolVar(&stamp, "timestamp", true, "give each burst's packets the time it was made (zcount --latency, zdump);\nfalse: no metadata record at all, only the 16-byte descriptor")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: zsend -o zc:CLUSTER@QUEUE [-l LEN] [-n COUNT] [-r PPS] [-f FILE.pcap] [--lossless=false]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := cli.Parse(fs, args, func() string {
		if name == "" {
			return "zsend: -o zc:CLUSTER@QUEUE is required"
		}
		if length < zc.MinSynthLen || length > ivshmem.MaxBufSize {
			return fmt.Sprintf("zsend: -l %d: want %d to %d bytes (and at most the queue's buffer size)", length, zc.MinSynthLen, ivshmem.MaxBufSize)
		}
		return cli.NotNegative(fs, "r", "wait")
	}); !ok {
		return code
	}
	ctx, stop, q, err := cli.Open(name, wait, false, zc.AsProducer())
	if err != nil {
		fmt.Fprintf(stderr, "zsend: %v\n", err)
		return 1
	}
	defer stop()
	defer q.Close()
	bufSize := q.BufferSize()

	var next func(b []byte, seq uint64) (int, error)
	var read, cut uint64 // -f: frames read, and of them, cut to the buffer size
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(stderr, "zsend: %v\n", err)
			return 1
		}
		defer f.Close()
		r, err := pcapgo.NewReader(f)
		if err != nil {
			fmt.Fprintf(stderr, "zsend: read %s: %v\n", file, err)
			return 1
		}
		next = func(b []byte, _ uint64) (int, error) {
			d, _, err := r.ZeroCopyReadPacketData()
			if errors.Is(err, io.EOF) {
				return 0, err
			}
			if err != nil {
				return 0, fmt.Errorf("read %s: frame %d: %w", file, read+1, err)
			}
			read++
			if len(d) > len(b) {
				cut++
			}
			return copy(b, d), nil
		}
	} else {
		if length > bufSize {
			return cli.Usage(fs, fmt.Sprintf("zsend: -l %d: %s has %d-byte buffers: want %d to %d bytes", length, name, bufSize, zc.MinSynthLen, bufSize))
		}
		synth := zc.NewSynth(length, 64)
		next = func(b []byte, seq uint64) (int, error) { return synth.Frame(b, seq), nil }
	}

	pkts := make([]zc.Packet, 32)    // --lossless=false
	var burst zc.Burst               // --lossless: frames made in place
	lens := make([]int, zc.MaxBurst) // and their lengths
	var sent, bytes, drops uint64
	var failed error
	start := time.Now()
	last := start
	for failed == nil && (count == 0 || sent+drops < count) && ctx.Err() == nil {
		want := uint64(len(pkts))
		if count > 0 {
			want = min(want, count-sent-drops)
		}
		if rate > 0 {
			due := uint64(time.Since(start).Seconds()*rate) + 1
			if due <= sent+drops {
				// Sleep on this thread until the next frame is due: one
				// wake-up a frame (time.Sleep of less than a millisecond
				// wakes the runtime's scheduler threads around it), and
				// at least one every napMax, to answer a reader that
				// replaced a dead one before it gives up (a slow rate).
				idle.Nap(min(time.Until(start.Add(time.Duration(float64(sent+drops)/rate*1e9))), napMax))
				if p := q.Pool(); p != nil && q.RecoveryAsked() {
					p.Reclaim()
				}
				continue
			}
			want = min(want, due-sent-drops)
		}
		var r result
		if lossless {
			r = sendBurst(ctx, q, &burst, lens, int(want), stamp, next, sent+drops)
		} else {
			r = sendPackets(ctx, q, pkts[:want], stamp, next, sent+drops)
			drops += uint64(r.made - r.sent)
		}
		sent += uint64(r.sent)
		bytes += r.bytes
		if r.qerr != nil {
			if ctx.Err() != nil {
				break
			}
			failed = r.qerr
		} else if r.srcErr != nil {
			if errors.Is(r.srcErr, io.EOF) {
				break // the end of the -f file
			}
			failed = r.srcErr
		}
		if failed != nil {
			fmt.Fprintf(stderr, "zsend: %v\n", failed)
		}
		if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintf(stderr, "%s  sent %d pkts, %d drops, %.0f pps\n", name, sent, drops, float64(sent)/time.Since(start).Seconds())
		}
	}
	secs := time.Since(start).Seconds()
	if cut > 0 {
		fmt.Fprintf(stderr, "zsend: %s: frames longer than the %d-byte buffers, cut to %d bytes: %d of %d read\n", file, bufSize, bufSize, cut, read)
	}
	if asJSON {
		s := map[string]any{"queue": name, "packets": sent, "bytes": bytes, "drops": drops, "seconds": secs}
		if file != "" {
			s["truncated"] = cut
		}
		if failed != nil {
			s["error"] = failed.Error()
		}
		json.NewEncoder(stdout).Encode(s)
	} else {
		fmt.Fprintf(stdout, "%s: sent %d packets, %d bytes, %d drops in %.3f s (%.0f pps)", name, sent, bytes, drops, secs, float64(sent)/secs)
		if cut > 0 {
			fmt.Fprintf(stdout, "; frames cut to %d bytes: %d", bufSize, cut)
		}
		fmt.Fprintln(stdout)
	}
	if failed != nil {
		return 1
	}
	return 0
}

// result is what one burst did: frames sent, frames the source made
// (fewer than asked: it ran out, srcErr says why), bytes sent, and the
// queue's error.
type result struct {
	sent, made int
	bytes      uint64
	srcErr     error
	qerr       error
}

// sendBurst makes up to want frames in place (ReserveWait: asleep while
// every buffer is out or the queue is full) and commits them: lossless.
// lens (MaxBurst long, reused) holds the frames' lengths until Commit says
// how many went in.
func sendBurst(ctx context.Context, q *zc.Queue, b *zc.Burst, lens []int, want int, stamp bool, next func([]byte, uint64) (int, error), seq uint64) (r result) {
	n, err := q.ReserveWait(ctx, b, want)
	if err != nil {
		r.qerr = err
		return r
	}
	ts := now(stamp)
	for i := range n {
		l, err := next(b.Buf(i), seq+uint64(i))
		if err != nil {
			r.srcErr = err
			break
		}
		b.SetLen(i, l) // the synthetic frame carries its sequence number
		if ts != 0 {
			b.SetMeta(i, zc.Meta{Timestamp: ts})
		}
		lens[i] = l
		r.made++
	}
	r.sent, r.qerr = q.Commit(b, r.made)
	for _, l := range lens[:r.sent] {
		r.bytes += uint64(l)
	}
	return r
}

// sendPackets allocates up to len(pkts) buffers (AllocWait), makes the
// frames and sends what the queue takes, dropping (and counting) the rest.
func sendPackets(ctx context.Context, q *zc.Queue, pkts []zc.Packet, stamp bool, next func([]byte, uint64) (int, error), seq uint64) (r result) {
	n, err := q.AllocWait(ctx, pkts)
	if err != nil {
		r.qerr = err
		return r
	}
	ts := now(stamp)
	for i := range pkts[:n] {
		l, err := next(pkts[i].Data, seq+uint64(i))
		if err != nil {
			r.srcErr = err
			break
		}
		pkts[i].Data = pkts[i].Data[:l]
		pkts[i].Timestamp = ts
		r.made++
	}
	q.Free(pkts[r.made:n])
	r.sent, r.qerr = q.SendBurst(pkts[:r.made])
	q.Drop(pkts[r.sent:r.made])
	for i := range pkts[:r.sent] {
		r.bytes += uint64(len(pkts[i].Data))
	}
	return r
}

// now is the time for the burst's frames with stamp (one clock read a
// burst: it costs more than making a frame), else 0 (no metadata record).
func now(stamp bool) int64 {
	if !stamp {
		return 0
	}
	return time.Now().UnixNano()
}
