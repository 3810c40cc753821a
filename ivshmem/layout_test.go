package ivshmem

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func testConfig() Config {
	return Config{ClusterID: 99, Queues: 2, Slots: 8, BufSize: 256, Buffers: 16, QueueBuffers: 4,
		Generation: 7, Created: 0x1122334455667788, CreatorPID: 4242}
}

func writeRegion(t testing.TB, cfg Config) (Layout, []byte) {
	t.Helper()
	l, err := Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, l.RegionSize)
	if err := l.Write(b); err != nil {
		t.Fatal(err)
	}
	Publish(b)
	return l, b
}

// TestGoldenHeader pins the header bytes field by field.
func TestGoldenHeader(t *testing.T) {
	l, b := writeRegion(t, testConfig())
	want := []byte{
		'Z', 'C', 'F', 'A', 'B', 'R', 'I', 'C', // magic
		2, 0, 0, 0, // version
		0, 16, 0, 0, // header size 4096
		0, 0x40, 0, 0, 0, 0, 0, 0, // region size 16384
		99, 0, 0, 0, // cluster id
		0, 0, 0, 0, // flags
		7, 0, 0, 0, 0, 0, 0, 0, // generation
		2, 0, 0, 0, // queues
		64, 0, 0, 0, // descriptor size
		0, 16, 0, 0, 0, 0, 0, 0, // queue table at 4096
		0, 1, 0, 0, // buffer size 256
		24, 0, 0, 0, // buffers: 16 + 2*4
		32, 0, 0, 0, // metadata record size
		0, 0, 0, 0, // engine pool first
		16, 0, 0, 0, // engine pool count
		0, 0, 0, 0, // reserved
		0x80, 0x18, 0, 0, 0, 0, 0, 0, // metadata at 6272
		0, 0x20, 0, 0, 0, 0, 0, 0, // buffers at 8192
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // created
		0x92, 0x10, 0, 0, // creator pid 4242
	}
	// 4096 header + 2*64 table = 4224, then per queue a data ring of
	// 384+16*8 = 512 and a return ring of 384+4*8 rounded up to 512:
	// metadata at 6272, 24*32 bytes of it, buffers at the next page
	// (8192), 24*256 bytes of them: 14336, rounded to 16384.
	if l.MetaOff != 6272 || l.BufOff != 8192 || l.RegionSize != 16384 {
		t.Fatalf("layout moved: meta %d bufs %d size %d", l.MetaOff, l.BufOff, l.RegionSize)
	}
	if got := b[:len(want)]; !bytes.Equal(got, want) {
		t.Fatalf("header\n got %v\nwant %v", got, want)
	}
	if b[offState] != StateReady {
		t.Fatalf("state %d", b[offState])
	}
	desc := []byte{
		1, 0, 0, 0, // id
		8, 0, 0, 0, // slots
		0x80, 0x14, 0, 0, 0, 0, 0, 0, // data ring at 4224+512+512 = 5248
		0x80, 0x16, 0, 0, 0, 0, 0, 0, // return ring at 5760
		20, 0, 0, 0, // pool first: 16 + 1*4
		4, 0, 0, 0, // pool count
	}
	if got := b[4096+64 : 4096+64+len(desc)]; !bytes.Equal(got, desc) {
		t.Fatalf("descriptor 1\n got %v\nwant %v", got, desc)
	}
	if RingBytes(8) != 512 || RingBytes(32) != 512 || RingBytes(33) != 640 {
		t.Fatalf("return ring sizes %d %d %d", RingBytes(8), RingBytes(32), RingBytes(33))
	}
	if DescRingBytes(8) != 512 || DescRingBytes(16) != 640 {
		t.Fatalf("data ring sizes %d %d", DescRingBytes(8), DescRingBytes(16))
	}
}

func TestParseRoundTrip(t *testing.T) {
	l, b := writeRegion(t, testConfig())
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.RegionSize != l.RegionSize || got.MetaOff != l.MetaOff || got.BufOff != l.BufOff || len(got.Queues) != 2 || got.Queues[1] != l.Queues[1] || got.Generation != 7 {
		t.Fatalf("parsed %+v\nwant %+v", got, l)
	}
	if err := got.Check(b); err != nil {
		t.Fatal(err)
	}
	MarkClosed(b)
	if err := got.Check(b); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed region: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	_, good := writeRegion(t, testConfig())
	le := binary.LittleEndian
	fix := func(b []byte) { le.PutUint32(b[offChecksum:], crcOf(b)) }
	cases := []struct {
		name string
		mod  func(b []byte) []byte
		want error
	}{
		{"short", func(b []byte) []byte { return b[:100] }, ErrBadRegion},
		{"zeros", func(b []byte) []byte { return make([]byte, len(b)) }, ErrClosed},
		{"magic", func(b []byte) []byte { b[0] = 'X'; return b }, ErrBadRegion},
		{"version", func(b []byte) []byte { b[8] = 1; fix(b); return b }, ErrVersion},
		{"future", func(b []byte) []byte { b[8] = 3; fix(b); return b }, ErrVersion},
		{"checksum", func(b []byte) []byte { b[24] = 98; return b }, ErrBadRegion},
		{"size", func(b []byte) []byte { return b[:len(b)/2] }, ErrBadRegion},
		{"queues", func(b []byte) []byte { le.PutUint32(b[offNumQueues:], 5000); fix(b); return b }, ErrBadRegion},
		{"bufsize", func(b []byte) []byte { le.PutUint32(b[offBufSize:], 300); fix(b); return b }, ErrBadRegion},
		{"numbufs", func(b []byte) []byte { le.PutUint32(b[offNumBufs:], 1<<20); fix(b); return b }, ErrBadRegion},
		{"bufoff", func(b []byte) []byte { le.PutUint64(b[offBufOff:], 1<<62); fix(b); return b }, ErrBadRegion},
		{"metaoff", func(b []byte) []byte { le.PutUint64(b[offMetaOff:], 8); fix(b); return b }, ErrBadRegion},
		{"engine", func(b []byte) []byte { le.PutUint32(b[offEngCount:], 1000); fix(b); return b }, ErrBadRegion},
		{"slots", func(b []byte) []byte { le.PutUint32(b[HeaderSize+qOffSlots:], 6); return b }, ErrBadRegion},
		{"bigslots", func(b []byte) []byte { le.PutUint32(b[HeaderSize+qOffSlots:], 1<<20); return b }, ErrBadRegion},
		{"ring", func(b []byte) []byte { le.PutUint64(b[HeaderSize+qOffDataRing:], 1<<40); return b }, ErrBadRegion},
		{"ringoverlap", func(b []byte) []byte {
			le.PutUint64(b[HeaderSize+qOffRetRing:], le.Uint64(b[HeaderSize+qOffDataRing:]))
			return b
		}, ErrBadRegion},
		{"pool", func(b []byte) []byte { le.PutUint32(b[HeaderSize+qOffPoolCount:], 1<<30); return b }, ErrBadRegion},
		{"id", func(b []byte) []byte { le.PutUint32(b[HeaderSize+qOffID:], 3); return b }, ErrBadRegion},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mod(bytes.Clone(good))
			if _, err := Parse(b); !errors.Is(err, c.want) {
				t.Fatalf("Parse = %v, want %v", err, c.want)
			}
		})
	}
}

// FuzzParse feeds Parse regions a guest could have written. The input
// holds only the bytes Parse reads: its first 256 bytes are the header,
// the rest goes from offset HeaderSize on (the queue table and the
// rings); everything else is zero, up to the size the header claims when
// that is at most fuzzRegionMax, else exactly what the input fills. So a
// seed is 2 KiB rather than a whole region, every execution costs
// microseconds, and the minimiser (which the fuzzer runs on every new
// interesting input) finishes quickly. Half the time, by a bit of the
// stored checksum, the checksum is recomputed so that mutations reach the
// fields behind it. The input is never modified (the fuzzer owns it).
//
// A region that parses must be safe to use everywhere Parse promised:
// every buffer and metadata record inside the region, every ring
// attachable and usable, Check callable.
func FuzzParse(f *testing.F) {
	l, good := writeRegion(f, testConfig())
	f.Add(append(bytes.Clone(good[:256]), good[HeaderSize:l.MetaOff]...))
	f.Add(bytes.Clone(good[:256]))
	f.Add([]byte("ZCFABRIC"))
	f.Fuzz(func(t *testing.T, in []byte) {
		b := fuzzRegion(in)
		if b == nil {
			return
		}
		l, err := Parse(b)
		if err != nil {
			return
		}
		for h := range l.NumBufs {
			buf, m := l.Buffer(b, h), l.Meta(b, h)
			if len(buf) != int(l.BufSize) || len(m) != MetaSize {
				t.Fatalf("buffer %d: %d bytes, record %d bytes", h, len(buf), len(m))
			}
			buf[0], buf[len(buf)-1], m[0], m[MetaSize-1] = 1, 1, 1, 1
		}
		if area := l.BufferArea(b); uint64(len(area)) != uint64(l.NumBufs)*uint64(l.BufSize) {
			t.Fatalf("buffer area of %d bytes", len(area))
		}
		for _, q := range l.Queues {
			if p, err := NewRingProducer(b, q.DataRing, q.Slots); err == nil {
				p.Enqueue([]uint32{1, 2, 3})
				p.Add(CountPackets, 3)
			}
			if c, err := NewRingConsumer(b, q.RetRing, q.Slots); err == nil {
				c.Dequeue(make([]uint32, 4))
				c.Add(CountDrops, 1)
			}
		}
		l.Check(b)
	})
}

// fuzzRegionMax bounds the region FuzzParse builds (see there).
const fuzzRegionMax = 1 << 17

// fuzzRegion builds FuzzParse's region from its input, in fresh aligned
// memory; nil when the input is too long.
func fuzzRegion(in []byte) []byte {
	head, rest := in, []byte(nil)
	if len(in) > 256 {
		head, rest = in[:256], in[256:]
	}
	if HeaderSize+len(rest) > fuzzRegionMax {
		return nil
	}
	size := uint64(len(head))
	if rest != nil {
		size = HeaderSize + uint64(len(rest))
	}
	if len(head) >= offRegionSize+8 {
		if claim := binary.LittleEndian.Uint64(head[offRegionSize:]); claim >= size && claim <= fuzzRegionMax {
			size = claim
		}
	}
	b := alignedCopy(make([]byte, size))
	copy(b, head)
	copy(b[min(uint64(HeaderSize), size):], rest)
	if len(b) >= HeaderSize && b[offChecksum+3]&1 == 0 {
		binary.LittleEndian.PutUint32(b[offChecksum:], crcOf(b))
	}
	return b
}

func crcOf(b []byte) uint32 {
	return crc32Checksum(b[:checksummed])
}

// alignedCopy returns b in 8-byte aligned memory.
func alignedCopy(b []byte) []byte {
	w := make([]uint64, (len(b)+7)/8)
	out := u64bytes(w)[:len(b)]
	copy(out, b)
	return out
}

// TestVersionMismatchNamesBoth: a region of another format version is
// refused with one error that names both versions.
func TestVersionMismatchNamesBoth(t *testing.T) {
	_, b := writeRegion(t, testConfig())
	b[offVersion] = 1
	binary.LittleEndian.PutUint32(b[offChecksum:], crcOf(b))
	_, err := Parse(b)
	if !errors.Is(err, ErrVersion) || !errors.Is(err, ErrBadRegion) {
		t.Fatalf("Parse = %v, want ErrVersion", err)
	}
	for _, want := range []string{"version 1", "reads version 2"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
