package qmp

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
)

// idCounter numbers the attachments this process makes.
var idCounter atomic.Uint64

// newIDs returns a fresh memory-backend id and device id. QEMU 7.2 aborts
// when an object id freed by object-del is used again, so ids are never
// reused: they combine the process id, a per-process counter and 32 random
// bits (which keeps two processes that got the same pid apart, e.g. an agent
// restarted in a new pid namespace). label, sanitised, makes them readable.
func newIDs(label string) (mem, dev string) {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	suffix := fmt.Sprintf("%d-%d-%s", os.Getpid(), idCounter.Add(1), hex.EncodeToString(rnd[:]))
	if l := sanitise(label); l != "" {
		suffix = l + "-" + suffix
	}
	return "zcmem-" + suffix, "zcdev-" + suffix
}

// sanitise keeps the characters QEMU allows in ids (letters, digits, '-',
// '.', '_') and at most 32 of them.
func sanitise(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() == 32 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			b.WriteRune(r)
		}
	}
	return b.String()
}
