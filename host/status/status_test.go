package status

import (
	"path/filepath"
	"testing"
	"time"
)

// TestTouchIsChecked: Read gives the later of the written time and the
// last Touch as Checked, and Touch leaves the record itself alone.
func TestTouchIsChecked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "zc-1"+Suffix)
	written := time.Now().Add(-10 * time.Second).Round(time.Millisecond)
	if err := Write(path, File{Cluster: 1, PID: 7, Updated: written}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		touch, want time.Time
	}{
		{written.Add(4 * time.Second), written.Add(4 * time.Second)},
		{written.Add(-time.Second), written}, // a clock set back: not before the write
	} {
		if err := Touch(path, tc.touch); err != nil {
			t.Fatal(err)
		}
		f, err := Read(path)
		if err != nil {
			t.Fatal(err)
		}
		if !f.Updated.Equal(written) || f.PID != 7 || !f.Checked.Equal(tc.want) {
			t.Errorf("after Touch(%v): updated %v pid %d checked %v, want updated %v pid 7 checked %v",
				tc.touch, f.Updated, f.PID, f.Checked, written, tc.want)
		}
	}
	if err := Touch(filepath.Join(t.TempDir(), "gone"), time.Now()); err == nil {
		t.Error("Touch of a missing file: no error (the agent then writes it again)")
	}
}
