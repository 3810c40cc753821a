package virtio

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzDecode: no input makes Decode panic; what it accepts encodes and
// decodes back to the same message; and a lineReader over the input never
// returns a line longer than its bound.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"type":"hello","id":1,"version":1,"side":"guest","session":"x"}`,
		`{"v":1,"type":"list","id":2}`,
		`{"v":1,"type":"plug","id":3,"cluster":99,"queues":[0,1]}`,
		`{"v":1,"type":"offers","id":2,"clusters":[{"id":99,"queues":[0],"size":4096,"shared":false}]}`,
		`{"v":1,"type":"unplug-notice","cluster":99,"deadline_ms":2000,"session":"x"}`,
		`{"v":1,"type":"ready","cluster":99}`,
		`{"v":2,"type":"list"}`, `{"v":1,"type":"plug","cluster":-1}`, `{"v":1}`, `[]`, `null`, "\x00\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err == nil {
			enc, err := Encode(m)
			if err != nil {
				t.Fatalf("Encode(%+v) = %v", m, err)
			}
			again, err := Decode(enc)
			if err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("round trip of %q: %+v, %v; want %+v", b, again, err, m)
			}
		}
		lr := newLineReader(bytes.NewReader(b), 64, 0)
		for {
			line, err := lr.next()
			if err != nil {
				break
			}
			if len(line) >= 64 {
				t.Fatalf("line of %d bytes from a 64-byte reader", len(line))
			}
		}
	})
}
