package host

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
)

// PcapConfig configures pcap replay.
type PcapConfig struct {
	// Timing replays with the capture's original gaps (default: as fast
	// as possible).
	Timing bool
	// Loops replays the file this many times (default 1; 0 means 1).
	Loops int
}

// Pcap is a Source replaying a pcap or pcapng file. Each frame is copied
// once into a cluster buffer; frames longer than a buffer are truncated
// and counted in Truncated.
type Pcap struct {
	path    string
	cfg     PcapConfig
	f       *os.File
	next    func() ([]byte, time.Time, error)
	st      SourceStats
	loop    int
	first   time.Time // first frame's capture time
	start   time.Time // replay start
	held    []byte    // a frame read but not yet sent (aliases heldBuf)
	heldBuf []byte
	heldTS  time.Time
	filter  *Filter
	pos     uint64 // records read and done with (sent, filtered or skipped)
	skip    uint64 // records still to skip (Resume)
	// Truncated counts frames cut to the buffer size.
	Truncated uint64
}

// OpenPcap opens a pcap or pcapng file for replay.
func OpenPcap(path string, cfg PcapConfig) (*Pcap, error) {
	p := &Pcap{path: path, cfg: cfg}
	if p.cfg.Loops <= 0 {
		p.cfg.Loops = 1
	}
	if err := p.open(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Pcap) open() error {
	f, err := os.Open(p.path)
	if err != nil {
		return fmt.Errorf("pcap: open %s: %w", p.path, err)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	magic, err := br.Peek(4)
	if err != nil {
		f.Close()
		return fmt.Errorf("pcap: read %s: %w", p.path, err)
	}
	if string(magic) == "\x0a\x0d\x0d\x0a" {
		r, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			f.Close()
			return fmt.Errorf("pcap: read %s as pcapng: %w", p.path, err)
		}
		p.next = func() ([]byte, time.Time, error) {
			d, ci, err := r.ZeroCopyReadPacketData()
			return d, ci.Timestamp, err
		}
	} else {
		r, err := pcapgo.NewReader(br)
		if err != nil {
			f.Close()
			return fmt.Errorf("pcap: read %s: %w", p.path, err)
		}
		p.next = func() ([]byte, time.Time, error) {
			d, ci, err := r.ZeroCopyReadPacketData()
			return d, ci.Timestamp, err
		}
	}
	p.f = f
	return nil
}

// Name implements Source.
func (p *Pcap) Name() string { return "pcap:" + p.path }

// Stats implements Source.
func (p *Pcap) Stats() SourceStats {
	st := p.st
	st.Truncated = p.Truncated
	st.Position = p.Position()
	return st
}

// Finite implements Finite: a replay ends after its loops.
func (p *Pcap) Finite() bool { return true }

// Resume implements Resumable: the replay skips its first position
// records, loops included.
func (p *Pcap) Resume(position uint64) { p.skip = position }

// Position implements Resumable: records read (skipped ones included).
func (p *Pcap) Position() uint64 { return p.pos }

// Close implements Source.
func (p *Pcap) Close() error {
	if p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	return err
}

// SetFilter implements Filterable, in user space (kernel is ignored): a
// rejected frame is skipped before it takes a buffer.
func (p *Pcap) SetFilter(f *Filter, kernel bool) (err error) {
	p.filter, err = userSpace(p.Name(), f)
	return err
}

// Recv implements Source.
func (p *Pcap) Recv(pool *zc.Pool, pkts []zc.Packet) (int, error) {
	if p.f == nil {
		return 0, io.EOF
	}
	n := 0
	for n < len(pkts) {
		data, ts := p.held, p.heldTS
		if data == nil {
			var err error
			data, ts, err = p.next()
			if errors.Is(err, io.EOF) {
				p.loop++
				p.f.Close()
				p.f = nil
				if p.loop >= p.cfg.Loops {
					return n, io.EOF
				}
				if err := p.open(); err != nil {
					return n, err
				}
				p.first = time.Time{}
				continue
			}
			if err != nil {
				return n, fmt.Errorf("pcap: read %s: %w", p.path, err)
			}
			if p.skip > 0 {
				p.skip--
				p.pos++
				continue
			}
		}
		if p.cfg.Timing {
			now := time.Now()
			if p.first.IsZero() {
				p.first, p.start = ts, now
			}
			if ts.Sub(p.first) > now.Sub(p.start) {
				// Not due yet: keep it (copied: the reader reuses its buffer).
				p.hold(data, ts)
				return n, nil
			}
		}
		if p.filter != nil && !p.filter.Match(data) {
			p.held = nil
			p.st.Filtered++
			p.pos++
			continue
		}
		if pool.Alloc(pkts[n:n+1]) == 0 {
			p.st.NoBuffer++
			p.hold(data, ts)
			return n, nil
		}
		p.held = nil
		pk := &pkts[n]
		c := copy(pk.Data, data)
		if c < len(data) {
			p.Truncated++
		}
		pk.Data = pk.Data[:c]
		pk.Timestamp = ts.UnixNano()
		pk.Seq = uint32(p.pos)
		p.pos++
		p.st.Packets++
		p.st.Bytes += uint64(c)
		n++
	}
	return n, nil
}

// hold keeps a frame for the next Recv, copied: the reader reuses its
// buffer.
func (p *Pcap) hold(data []byte, ts time.Time) {
	if p.held == nil {
		p.heldBuf = append(p.heldBuf[:0], data...)
		p.held, p.heldTS = p.heldBuf, ts
	}
}
