package cli

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
)

// flags is a flag set like the tools': a string, a count, a bool, a
// duration and a rate.
func flags(out *bytes.Buffer) (*flag.FlagSet, *string, *uint64) {
	fs := flag.NewFlagSet("ztool", flag.ContinueOnError)
	fs.SetOutput(out)
	name := fs.String("i", "", "queue")
	n := fs.Uint64("n", 0, "count")
	fs.Bool("json", false, "json")
	fs.Duration("interval", time.Second, "interval")
	fs.Float64("r", 0, "rate")
	fs.Usage = func() { fs.Output().Write([]byte("Usage: ztool\n")) }
	return fs, name, n
}

// TestParseLeftover: an argument that is not a flag is a usage error
// naming it (the flag package would stop there and ignore the flags after
// it), with a hint when it follows a boolean flag.
func TestParseLeftover(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"-i", "zc:99@0", "foo", "-n", "bad"}, []string{`ztool: unexpected argument "foo"`, "Usage: ztool"}},
		{[]string{"-i", "zc:99@0", "--json", "false", "-n", "5"}, []string{`unexpected argument "false"`, "--json=false"}},
		{[]string{"-i", "zc:99@0", "--", "-n", "5"}, []string{`unexpected argument "-n"`}},
	} {
		var out bytes.Buffer
		fs, _, n := flags(&out)
		called := false
		code, ok := Parse(fs, tc.args, func() string { called = true; return "" })
		if ok || code != 2 {
			t.Errorf("%q: Parse = %d, %v; want 2, false", tc.args, code, ok)
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%q: output does not say %q:\n%s", tc.args, w, &out)
			}
		}
		if called || *n != 0 {
			t.Errorf("%q: need called %v, -n %d: want neither", tc.args, called, *n)
		}
	}
	var out bytes.Buffer
	fs, name, n := flags(&out)
	if code, ok := Parse(fs, []string{"-i", "zc:99@0", "--json", "-n", "5"}, nil); !ok || code != 0 || *name != "zc:99@0" || *n != 5 {
		t.Errorf("flags only: Parse = %d, %v, -i %q, -n %d\n%s", code, ok, *name, *n, &out)
	}
}

// TestNotNegative: a negative duration or rate, or a rate that is not a
// finite number, is a usage error naming the flag; 0 is not.
func TestNotNegative(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"--interval", "0", "-r", "0"}, ""},
		{[]string{"--interval", "-1s"}, "ztool: --interval -1s: want 0 or more"},
		{[]string{"-r", "-5"}, "ztool: -r -5: want a finite number, 0 or more"},
		{[]string{"-r", "NaN"}, "ztool: -r NaN: want a finite number"},
		{[]string{"-r", "+Inf"}, "ztool: -r +Inf: want a finite number"},
	} {
		var out bytes.Buffer
		fs, _, _ := flags(&out)
		code, ok := Parse(fs, tc.args, func() string { return NotNegative(fs, "interval", "r") })
		if tc.want == "" {
			if !ok || code != 0 {
				t.Errorf("%q: Parse = %d, %v; want 0, true\n%s", tc.args, code, ok, &out)
			}
			continue
		}
		if ok || code != 2 || !strings.HasPrefix(out.String(), tc.want) || !strings.Contains(out.String(), "Usage: ztool") {
			t.Errorf("%q: Parse = %d, %v; want 2 and %q then the usage:\n%s", tc.args, code, ok, tc.want, &out)
		}
	}
}

// TestParseQueue: a tool that reads one queue takes its name from -i or
// as the one argument, before or after the flags; a second name, or -i
// and a name, or an argument that is no queue name, is a usage error.
func TestParseQueue(t *testing.T) {
	for _, args := range [][]string{
		{"zc:99@0", "-n", "5"},
		{"-n", "5", "zc:99@0"},
		{"-i", "zc:99@0", "-n", "5"},
	} {
		var out bytes.Buffer
		fs, name, n := flags(&out)
		if code, ok := ParseQueue(fs, args, name, nil); !ok || code != 0 || *name != "zc:99@0" || *n != 5 {
			t.Errorf("%q: ParseQueue = %d, %v, queue %q, -n %d\n%s", args, code, ok, *name, *n, &out)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"zc:99@0", "zc:98@0"}, `unexpected argument "zc:98@0"`},
		{[]string{"-i", "zc:1@0", "zc:99@0"}, `unexpected argument "zc:99@0"`},
		{[]string{"eth0", "-n", "5"}, `unexpected argument "eth0"`},
		{[]string{"zc:99@0", "foo", "-n", "5"}, `unexpected argument "foo"`},
	} {
		var out bytes.Buffer
		fs, name, _ := flags(&out)
		if code, ok := ParseQueue(fs, tc.args, name, nil); ok || code != 2 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%q: ParseQueue = %d, %v; want 2 and %q in:\n%s", tc.args, code, ok, tc.want, &out)
		}
	}
}
