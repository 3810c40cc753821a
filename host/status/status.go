// Package status is what a running zchost publishes about its cluster
// for `zchost stats`: a small JSON file next to the region, written only
// by the agent (mode 0600), holding the agent's own record of each region
// it made (generation, header checksum, state) and the counters it keeps
// in process memory. The region's bytes are writable by every consumer
// and, for a VM's region, by the guest: stats read from them are what the
// peer reported. The status file is the host's side of the story.
//
// The file is replaced atomically (write to a temporary name, rename), so
// a reader sees one whole snapshot or the previous one.
package status

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/zcfabric/zc"
)

// Suffix is appended to a cluster's region path to name its status file.
const Suffix = ".agent"

// Path returns the status file of cluster id ($ZC_DIR/zc-ID.agent).
func Path(id uint32) string { return zc.RegionPath(id) + Suffix }

// File is one snapshot of an agent's view of a cluster.
type File struct {
	Cluster uint32 `json:"cluster"`
	PID     int    `json:"pid"`
	// Updated is when the agent last wrote the file: its content changed
	// then (or the agent started).
	Updated time.Time `json:"updated"`
	Regions []Region  `json:"regions"`
	// Sources are the agent's finite sources (a generator with a count,
	// a pcap replay) and how far each got, for a successor to resume.
	Sources []Source `json:"sources,omitempty"`
	// Checked is when the agent last found the content current (Touch:
	// the file's modification time), at or after Updated: the agent's
	// last sign of life. Set by Read, not stored in the JSON.
	Checked time.Time `json:"-"`
}

// Source is how far one of the agent's finite sources got.
type Source struct {
	// Name is the source's name (host.Source.Name: its spec).
	Name string `json:"name"`
	// Position is host.SourceStats.Position: frames generated, records
	// read.
	Position uint64 `json:"position"`
}

// Region is the agent's record of one region it made: the cluster's own
// ("vm" empty) or a VM's.
type Region struct {
	Path       string `json:"path"`
	VM         string `json:"vm,omitempty"`
	Generation uint64 `json:"generation"`
	// Checksum is the header checksum the agent wrote; a region holding
	// another one had its header rewritten.
	Checksum uint32 `json:"checksum"`
	// State is "ok", "failed" (a queue or the region broke: Failure says
	// which and why) or "recovering" (a fresh region is being plugged).
	State   string `json:"state"`
	Failure string `json:"failure,omitempty"`
	// Recoveries counts the fresh regions made for this VM after failures.
	Recoveries int `json:"recoveries,omitempty"`
	// Queues are the agent's producer ends in this region, as
	// zc.Queue.Stats gives them (View "producer").
	Queues []zc.QueueStats `json:"queues"`
}

// Write replaces the status file at path with f (mode 0600).
func Write(path string, f File) error {
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("status %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("status %s: %w", path, err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("status %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("status %s: %w", path, err)
	}
	return nil
}

// Touch says that the status file at path is still current at now (its
// agent looked and nothing changed) without writing it again: one
// utimensat(2), where Write creates, writes and renames a file. Read
// returns it as Checked.
func Touch(path string, now time.Time) error {
	if err := os.Chtimes(path, now, now); err != nil {
		return fmt.Errorf("status %s: %w", path, err)
	}
	return nil
}

// Read reads the status file at path. A file whose agent is gone (its
// PID no longer runs) is still returned; callers say how old it is.
func Read(path string) (File, error) {
	var f File
	fd, err := os.Open(path)
	if err != nil {
		return f, fmt.Errorf("status %s: %w", path, err)
	}
	defer fd.Close()
	fi, err := fd.Stat()
	if err != nil {
		return f, fmt.Errorf("status %s: %w", path, err)
	}
	b, err := io.ReadAll(fd)
	if err != nil {
		return f, fmt.Errorf("status %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("status %s: %w", path, err)
	}
	f.Checked = f.Updated
	if m := fi.ModTime(); m.After(f.Checked) {
		f.Checked = m
	}
	return f, nil
}

// Find returns the record of the region at path, if f has one.
func (f *File) Find(path string) (Region, bool) {
	for _, r := range f.Regions {
		if r.Path == path {
			return r, true
		}
	}
	return Region{}, false
}
