package zcgopacket

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

// mappings are address ranges of this process, [lo, hi) pairs.
type mappings [][2]uintptr

// regionMaps returns where this process maps file (from
// /proc/self/maps): the cluster's own mapping and the consumer's.
func regionMaps(t testing.TB, file string) mappings {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m mappings
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != file {
			continue
		}
		var lo, hi uintptr
		if _, err := fmt.Sscanf(fields[0], "%x-%x", &lo, &hi); err != nil {
			t.Fatalf("/proc/self/maps: %q: %v", sc.Text(), err)
		}
		m = append(m, [2]uintptr{lo, hi})
	}
	if len(m) == 0 {
		t.Fatalf("%s is not mapped in this process", file)
	}
	return m
}

// holds reports whether b's bytes lie in one of the mappings: by
// address, the one thing a zero-copy test must compare.
func (m mappings) holds(b []byte) bool {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	for _, r := range m {
		if p >= r[0] && p+uintptr(len(b)) <= r[1] {
			return true
		}
	}
	return false
}
