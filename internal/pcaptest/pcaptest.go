// Package pcaptest writes the pcap files tests replay (zsend -f,
// zchost run -i pcap:FILE).
package pcaptest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/zcfabric/zc"
)

// Synth returns n synthetic frames of size bytes over flows flows, frame
// i carrying sequence number i (zc.SynthFrame), for File.
func Synth(n, size, flows int) [][]byte {
	frames := make([][]byte, n)
	for i := range frames {
		b := make([]byte, size)
		frames[i] = b[:zc.SynthFrame(b, uint64(i), size, flows)]
	}
	return frames
}

// File writes frames, whole, to a new Ethernet pcap file (snaplen 65535,
// every frame stamped 1 s after the epoch) in t's temporary directory and
// returns its path.
func File(t testing.TB, frames ...[]byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "frames.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, b := range frames {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: len(b), Length: len(b)}
		if err := w.WritePacket(ci, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
