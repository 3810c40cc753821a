// Command zsend produces packets into a zcfabric queue: synthetic,
// sequence-numbered frames (checkable with zcount --verify) or the frames
// of a pcap file. It attaches the producer end with the queue's own
// buffers (zchost run --queue-buffers N), on the host or in a VM:
//
//	zsend -o zc:99@0 [-l 64] [-n 1000000] [-r PPS] [-f file.pcap] [--lossless]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/examples/internal/cli"
	"github.com/zcfabric/zc/internal/idle"
	"io"
	"os"
	"time"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("zsend", flag.ContinueOnError)
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
	fs.IntVar(&length, "l", 64, "frame `length` in bytes (synthetic frames)")
	fs.Uint64Var(&count, "n", 1000000, "number of frames (0: until interrupted)")
	fs.Float64Var(&rate, "r", 0, "frames per second (0: as fast as possible)")
	fs.StringVar(&file, "f", "", "send the frames of this pcap `file` instead of synthetic ones")
	fs.BoolVar(&lossless, "lossless", true, "wait for room when the queue is full (false: drop and count)")
	fs.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	fs.DurationVar(&wait, "wait", 0, "wait up to this long for the cluster to appear")
	fs.BoolVar(&stamp, "timestamp", true, "give each burst's packets the time it was made (zcount --latency, zdump);\nfalse: no metadata record at all, only the 16-byte descriptor")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: zsend -o zc:CLUSTER@QUEUE [-l LEN] [-n COUNT] [-r PPS] [-f FILE.pcap]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := cli.Parse(fs, os.Args[1:], func() string {
		if name == "" {
			return "zsend: -o zc:CLUSTER@QUEUE is required"
		}
		return ""
	}); !ok {
		return code
	}
	ctx, stop, q, err := cli.Open(name, wait, false, zc.AsProducer())
	if err != nil {
		fmt.Fprintf(os.Stderr, "zsend: %v\n", err)
		return 1
	}
	defer stop()
	defer q.Close()

	var next func(b []byte, seq uint64) (int, error)
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zsend: %v\n", err)
			return 1
		}
		defer f.Close()
		r, err := pcapgo.NewReader(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zsend: read %s: %v\n", file, err)
			return 1
		}
		next = func(b []byte, _ uint64) (int, error) {
			d, _, err := r.ZeroCopyReadPacketData()
			if err != nil {
				return 0, err
			}
			return copy(b, d), nil
		}
	} else {
		synth := zc.NewSynth(length, 64)
		next = func(b []byte, seq uint64) (int, error) { return synth.Frame(b, seq), nil }
	}

	pkts := make([]zc.Packet, 32)    // --lossless=false
	var burst zc.Burst               // --lossless: frames made in place
	lens := make([]int, zc.MaxBurst) // and their lengths
	var sent, bytes, drops uint64
	start := time.Now()
	last := start
	done := false
	for !done && (count == 0 || sent+drops < count) && ctx.Err() == nil {
		want := uint64(len(pkts))
		if count > 0 {
			want = min(want, count-sent-drops)
		}
		if rate > 0 {
			due := uint64(time.Since(start).Seconds()*rate) + 1
			if due <= sent+drops {
				// Sleep on this thread until the next frame is due: one
				// wake-up a frame (time.Sleep of less than a millisecond
				// wakes the runtime's scheduler threads around it).
				idle.Nap(time.Until(start.Add(time.Duration(float64(sent+drops) / rate * 1e9))))
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
			fmt.Fprintf(os.Stderr, "zsend: %v\n", r.qerr)
			return 1
		}
		if r.srcErr != nil {
			if !errors.Is(r.srcErr, io.EOF) {
				fmt.Fprintf(os.Stderr, "zsend: %v\n", r.srcErr)
			}
			done = true
		}
		if time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintf(os.Stderr, "%s  sent %d pkts, %d drops, %.0f pps\n", name, sent, drops, float64(sent)/time.Since(start).Seconds())
		}
	}
	secs := time.Since(start).Seconds()
	if asJSON {
		json.NewEncoder(os.Stdout).Encode(map[string]any{"queue": name, "packets": sent, "bytes": bytes, "drops": drops, "seconds": secs})
	} else {
		fmt.Printf("%s: sent %d packets, %d bytes, %d drops in %.3f s (%.0f pps)\n", name, sent, bytes, drops, secs, float64(sent)/secs)
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
