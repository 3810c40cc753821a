package status

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
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

// TestMarks: the marks file reads back what was set, also after the
// writer unmapped it (a killed agent's marks are the file's), and a file
// that is not one is refused with ErrMarks.
func TestMarks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "zc-1.marks")
	m, err := CreateMarks(path, 4242, []uint64{7, 0, 9})
	if err != nil {
		t.Fatal(err)
	}
	m.Set(1, 1<<40+5)
	m.Set(2, 10)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	pid, pos, err := ReadMarks(path)
	if err != nil || pid != 4242 || !slices.Equal(pos, []uint64{7, 1<<40 + 5, 10}) {
		t.Fatalf("ReadMarks: pid %d, %v, %v", pid, pos, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]byte{
		"short":     b[:12],
		"cut":       b[:len(b)-1],
		"longer":    append(slices.Clone(b), 0),
		"magic":     append([]byte("zcmarks9"), b[8:]...),
		"huge":      append(slices.Clone(b[:12]), 0xff, 0xff, 0xff, 0xff),
		"empty":     nil,
		"not marks": []byte(`{"cluster":1}`),
	} {
		p := filepath.Join(t.TempDir(), "bad")
		if err := os.WriteFile(p, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ReadMarks(p); !errors.Is(err, ErrMarks) {
			t.Errorf("%s: ReadMarks = %v, want ErrMarks", name, err)
		}
	}
	if _, _, err := ReadMarks(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
