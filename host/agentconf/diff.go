package agentconf

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Change is what a reload has to do to go from one file to the next.
type Change struct {
	// AddedClusters and RemovedClusters are cluster ids, in file order
	// (new file for added, old file for removed).
	AddedClusters   []uint32
	RemovedClusters []uint32
	// Exports has one entry per cluster in both files, in the new file's
	// order.
	Exports []ExportChange
	// Settings names the top-level keys whose value changed and that a
	// running daemon applies in place: metrics, log_level, keep_plugged.
	Settings []string
}

// ExportChange is the difference in one cluster's exports. An export is
// identified by its cluster and its VM; one whose queues changed is in
// Removed (as it was) and in Added (as it is): it is unplugged and
// plugged again, Removed first.
type ExportChange struct {
	Cluster   uint32
	Added     []Export
	Removed   []Export
	Unchanged []Export
}

// Empty reports whether the change does nothing.
func (c *Change) Empty() bool {
	if len(c.AddedClusters) > 0 || len(c.RemovedClusters) > 0 || len(c.Settings) > 0 {
		return false
	}
	for _, e := range c.Exports {
		if len(e.Added) > 0 || len(e.Removed) > 0 {
			return false
		}
	}
	return true
}

// clusterField is one field of a cluster's definition: its key and how to
// show its value.
type clusterField struct {
	key string
	val func(*Cluster) string
}

// definition lists what a running cluster cannot change: everything but
// its exports.
var definition = []clusterField{
	{"queues", func(c *Cluster) string { return strconv.Itoa(c.Queues) }},
	{"mode", func(c *Cluster) string { return c.Mode.String() }},
	{"lossless", func(c *Cluster) string { return strconv.FormatBool(c.Lossless) }},
	{"sources", func(c *Cluster) string { return fmt.Sprintf("%q", c.Sources) }},
	{"queue_len", func(c *Cluster) string { return strconv.Itoa(c.QueueLen) }},
	{"buffers", func(c *Cluster) string { return strconv.Itoa(c.Buffers) }},
	{"buffer_size", func(c *Cluster) string { return strconv.Itoa(c.BufferSize) }},
	{"queue_buffers", func(c *Cluster) string { return strconv.Itoa(c.QueueBuffers) }},
	{"backing", func(c *Cluster) string { return c.Backing.String() }},
	{"hugetlbfs", func(c *Cluster) string { return strconv.Quote(c.Hugetlbfs) }},
	{"group", func(c *Cluster) string { return strconv.Quote(c.Group) }},
	{"shared", func(c *Cluster) string { return strconv.FormatBool(c.Shared) }},
	{"ctl", func(c *Cluster) string { return strconv.FormatBool(c.Ctl) }},
	{"doorbell", func(c *Cluster) string { return strconv.FormatBool(c.Doorbell) }},
	{"bpf", func(c *Cluster) string { return strconv.Quote(c.BPF) }},
	{"vm_recover", func(c *Cluster) string { return c.VMRecover.String() }},
}

// Diff compares the file a daemon runs with (old) to the one it is asked
// to reload (new). It fails, with an *Error located in new that matches
// ErrChanged, when a cluster in both changed anything but its exports, or
// when state_dir or control changed: those need a restart (or removing the
// cluster in one reload and adding it back in the next).
func Diff(old, new *File) (Change, error) {
	var ch Change
	for _, key := range []string{"state_dir", "control"} {
		if a, b := topValue(old, key), topValue(new, key); a != b {
			return Change{}, new.changed(key, fmt.Sprintf("changed from %q to %q: the daemon must be restarted to move it", a, b))
		}
	}
	if old.Metrics != new.Metrics {
		ch.Settings = append(ch.Settings, "metrics")
	}
	if old.LogLevel != new.LogLevel {
		ch.Settings = append(ch.Settings, "log_level")
	}
	if old.KeepPlugged != new.KeepPlugged {
		ch.Settings = append(ch.Settings, "keep_plugged")
	}
	byID := map[uint32]*Cluster{}
	for i := range old.Clusters {
		byID[old.Clusters[i].ID] = &old.Clusters[i]
	}
	inNew := map[uint32]bool{}
	for i := range new.Clusters {
		n := &new.Clusters[i]
		inNew[n.ID] = true
		o, ok := byID[n.ID]
		if !ok {
			ch.AddedClusters = append(ch.AddedClusters, n.ID)
			continue
		}
		p := "cluster[" + strconv.Itoa(i) + "]"
		for _, f := range definition {
			if a, b := f.val(o), f.val(n); a != b {
				return Change{}, new.changed(p+"."+f.key, fmt.Sprintf("cluster %d: changed from %s to %s: a running cluster's definition cannot change (remove the cluster, reload, add it back; or restart)", n.ID, a, b))
			}
		}
		ch.Exports = append(ch.Exports, diffExports(n.ID, o.Exports, n.Exports))
	}
	for _, o := range old.Clusters {
		if !inNew[o.ID] {
			ch.RemovedClusters = append(ch.RemovedClusters, o.ID)
		}
	}
	return ch, nil
}

func diffExports(id uint32, old, new []Export) ExportChange {
	ec := ExportChange{Cluster: id}
	prev := map[string]Export{}
	for _, e := range old {
		prev[e.VM] = e
	}
	kept := map[string]bool{}
	for _, e := range new {
		o, ok := prev[e.VM]
		switch {
		case !ok:
			ec.Added = append(ec.Added, e)
		case slices.Equal(o.Queues, e.Queues):
			ec.Unchanged = append(ec.Unchanged, e)
			kept[e.VM] = true
		default:
			ec.Added = append(ec.Added, e)
		}
	}
	for _, e := range old {
		if !kept[e.VM] {
			ec.Removed = append(ec.Removed, e)
		}
	}
	return ec
}

func topValue(f *File, key string) string {
	if key == "state_dir" {
		return f.StateDir
	}
	return f.Control
}

// changed locates a refused change in f: the line of the key, or of the
// closest table holding it when the key is absent (a default).
func (f *File) changed(key, msg string) error {
	line, path := 1, key
	for {
		if l, ok := f.lines[path]; ok {
			line = l
			break
		}
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			break
		}
		path = path[:i]
	}
	name := f.name
	if name == "" {
		name = "(config)"
	}
	return &Error{File: name, Line: line, Key: key, Err: kindErrorf(ErrChanged, "%s", msg)}
}
