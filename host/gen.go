package host

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/zcfabric/zc"
)

// GenConfig configures the synthetic generator (zc.SynthFrame frames).
type GenConfig struct {
	// Len is the frame length in bytes (default 64, at least 60).
	Len int
	// Count is the number of frames; 0 means until stopped.
	Count uint64
	// Rate is frames per second; 0 means as fast as possible.
	Rate float64
	// Flows is the number of distinct IP flows (default 64).
	Flows int
	// After delays the first frame (a queue idle at first, then a burst).
	After time.Duration
}

// ParseGen parses the option list of "gen:len=64,count=1000000,rate=1e6,flows=64".
func ParseGen(opts string) (GenConfig, error) {
	c := GenConfig{Len: 64, Flows: 64}
	if opts == "" {
		return c, nil
	}
	for _, kv := range strings.Split(opts, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return c, fmt.Errorf("gen: option %q: want key=value (len, count, rate, flows, after)", kv)
		}
		var err error
		switch k {
		case "len":
			c.Len, err = strconv.Atoi(v)
			if err == nil && (c.Len < zc.MinSynthLen || c.Len > 65535) {
				err = fmt.Errorf("out of range %d..65535", zc.MinSynthLen)
			}
		case "count":
			var f float64
			f, err = strconv.ParseFloat(v, 64) // accepts 1e6
			c.Count = uint64(f)
		case "rate":
			c.Rate, err = strconv.ParseFloat(v, 64)
		case "flows":
			c.Flows, err = strconv.Atoi(v)
		case "after":
			c.After, err = time.ParseDuration(v)
		default:
			err = fmt.Errorf("unknown option (want len, count, rate, flows, after)")
		}
		if err != nil {
			return c, fmt.Errorf("gen: option %s=%s: %w", k, v, err)
		}
	}
	return c, nil
}

// Gen is a Source of synthetic, sequence-numbered frames.
type Gen struct {
	cfg    GenConfig
	name   string
	synth  *zc.Synth
	seq    uint64
	base   uint64 // seq at start: pacing counts from it (Resume)
	start  time.Time
	st     SourceStats
	filter *Filter
}

// NewGen returns a generator.
func NewGen(name string, cfg GenConfig) *Gen {
	if cfg.Len == 0 {
		cfg.Len = 64
	}
	return &Gen{cfg: cfg, name: name, synth: zc.NewSynth(cfg.Len, cfg.Flows)}
}

// Name implements Source.
func (g *Gen) Name() string { return g.name }

// Stats implements Source.
func (g *Gen) Stats() SourceStats {
	st := g.st
	st.Position = g.Position()
	return st
}

// Finite implements Finite: a generator with a count ends.
func (g *Gen) Finite() bool { return g.cfg.Count > 0 }

// Resume implements Resumable: the next frame is number position, and a
// count counts the frames skipped.
func (g *Gen) Resume(position uint64) { g.seq, g.base = position, position }

// Position implements Resumable: frames generated.
func (g *Gen) Position() uint64 { return g.seq }

// Close implements Source.
func (g *Gen) Close() error { return nil }

// ReadyAt implements Waiter: a paced generator's next frame is due at a
// known time (zero when unpaced, or before the first frame).
func (g *Gen) ReadyAt() time.Time {
	if g.start.IsZero() {
		return time.Time{}
	}
	if g.seq == g.base && g.cfg.After > 0 {
		return g.start // still waiting out After
	}
	if g.cfg.Rate <= 0 {
		return time.Time{}
	}
	return g.start.Add(time.Duration(float64(g.seq-g.base) / g.cfg.Rate * float64(time.Second)))
}

var _ Waiter = (*Gen)(nil)

// SetFilter implements Filterable, in user space (kernel is ignored): a
// rejected frame still counts in the generator's sequence (a gap that
// zcount --verify reports), its buffer goes back to the pool.
func (g *Gen) SetFilter(f *Filter, kernel bool) (err error) {
	g.filter, err = userSpace(g.name, f)
	return err
}

// Recv implements Source: it writes the next frames, paced to the rate.
func (g *Gen) Recv(pool *zc.Pool, pkts []zc.Packet) (int, error) {
	want := uint64(len(pkts))
	if g.cfg.Count > 0 {
		if g.seq >= g.cfg.Count {
			return 0, io.EOF
		}
		want = min(want, g.cfg.Count-g.seq)
	}
	now := time.Now()
	if g.start.IsZero() {
		g.start = now.Add(g.cfg.After)
	}
	if now.Before(g.start) {
		return 0, nil
	}
	if g.cfg.Rate > 0 {
		due := g.base + uint64(now.Sub(g.start).Seconds()*g.cfg.Rate) + 1
		if due <= g.seq {
			return 0, nil
		}
		want = min(want, due-g.seq)
	}
	n := pool.Alloc(pkts[:want])
	if n == 0 {
		g.st.NoBuffer++
		return 0, nil
	}
	ts := now.UnixNano()
	k := 0
	for i := range pkts[:n] {
		p := &pkts[i]
		p.Data = p.Data[:g.synth.Frame(p.Data, g.seq)]
		p.Seq = uint32(g.seq)
		p.Timestamp = ts
		g.seq++
		if g.filter != nil && !g.filter.Match(p.Data) {
			g.st.Filtered++
			pool.Free(pkts[i : i+1])
			continue
		}
		g.st.Bytes += uint64(len(p.Data))
		if k != i { // only after a filtered frame: no copy onto itself per packet
			pkts[k] = *p
		}
		k++
	}
	n = k
	g.st.Packets += uint64(n)
	if g.cfg.Count > 0 && g.seq >= g.cfg.Count {
		return n, io.EOF
	}
	return n, nil
}
