package agentconf

import (
	"errors"
	"os"
	"testing"
)

// FuzzParseConfig: Parse never panics, every error is an *Error with a
// line inside the file, and what parses formats to a file that parses
// again to the same thing.
func FuzzParseConfig(f *testing.F) {
	if data, err := os.ReadFile(distFile); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		diffBase,
		"cluster = [{id = 1, export = [{vm = \"/a\", queues = [0]}]}]\n",
		"[cluster]\nid = 1\n[cluster.export]\nvm = 3\n",
		"[[cluster]]\nid = 1\nmode = [1]\nsources = [[\"a\"]]\n",
		"a.b.c = 1\n[x.y]\n[[x.y.z]]\n",
		"state_dir = '''\n/x'''\n",
		"[[cluster]]\n[[cluster.export]]\n[[cluster.export.queues]]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := 1
		for _, c := range data {
			if c == '\n' {
				lines++
			}
		}
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if e.Line < 1 || e.Line > lines {
				t.Fatalf("error %v: line %d outside the file's 1..%d", err, e.Line, lines)
			}
			return
		}
		out, err := cfg.Format()
		if err != nil {
			t.Fatalf("format: %v", err)
		}
		again, err := Parse("formatted.toml", out)
		if err != nil {
			t.Fatalf("formatted file does not parse: %v\n%s", err, out)
		}
		if ch, err := Diff(cfg, again); err != nil || !ch.Empty() {
			t.Fatalf("formatted file differs: %+v, %v\n%s", ch, err, out)
		}
	})
}
