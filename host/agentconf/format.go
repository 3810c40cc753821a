package agentconf

import (
	"fmt"

	"github.com/pelletier/go-toml/v2"
)

type outFile struct {
	StateDir    string       `toml:"state_dir"`
	Control     string       `toml:"control"`
	Metrics     string       `toml:"metrics"`
	KeepPlugged bool         `toml:"keep_plugged"`
	LogLevel    string       `toml:"log_level"`
	Cluster     []outCluster `toml:"cluster"`
}

type outCluster struct {
	ID           uint32      `toml:"id"`
	Queues       int         `toml:"queues"`
	Mode         string      `toml:"mode"`
	Lossless     bool        `toml:"lossless"`
	Sources      []string    `toml:"sources"`
	QueueLen     int         `toml:"queue_len"`
	Buffers      int         `toml:"buffers"`
	BufferSize   int         `toml:"buffer_size"`
	QueueBuffers int         `toml:"queue_buffers"`
	Backing      string      `toml:"backing"`
	Hugetlbfs    string      `toml:"hugetlbfs"`
	Group        string      `toml:"group"`
	Shared       bool        `toml:"shared"`
	Ctl          bool        `toml:"ctl"`
	Doorbell     bool        `toml:"doorbell"`
	BPF          string      `toml:"bpf"`
	VMRecover    string      `toml:"vm_recover"`
	Export       []outExport `toml:"export"`
}

type outExport struct {
	VM     string `toml:"vm"`
	Queues []int  `toml:"queues"`
}

// Format writes f as a configuration file with every key set: what the
// daemon runs with, defaults spelled out (`zchost daemon --print-config`,
// a record in the state directory). Parse reads it back to an equal File.
func (f *File) Format() ([]byte, error) {
	o := outFile{StateDir: f.StateDir, Control: f.Control, Metrics: f.Metrics, KeepPlugged: f.KeepPlugged,
		LogLevel: f.LogLevel.String()}
	for _, c := range f.Clusters {
		oc := outCluster{ID: c.ID, Queues: c.Queues, Mode: c.Mode.String(), Lossless: c.Lossless,
			Sources: c.Sources, QueueLen: c.QueueLen, Buffers: c.Buffers, BufferSize: c.BufferSize,
			QueueBuffers: c.QueueBuffers, Backing: c.Backing.String(), Hugetlbfs: c.Hugetlbfs, Group: c.Group,
			Shared: c.Shared, Ctl: c.Ctl, Doorbell: c.Doorbell, BPF: c.BPF, VMRecover: c.VMRecover.String()}
		if oc.Sources == nil {
			oc.Sources = []string{}
		}
		for _, e := range c.Exports {
			oc.Export = append(oc.Export, outExport(e))
		}
		o.Cluster = append(o.Cluster, oc)
	}
	b, err := toml.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("agentconf: format: %w", err)
	}
	return b, nil
}
