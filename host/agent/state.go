package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// State is what an agent records in its state directory about the
// regions it runs, for its successor and for operators: which region
// each VM holds, of which generation, and whether it is plugged. A
// successor trusts none of it blindly: it adopts a region only after
// validating it (zc.AdoptCluster) and a device only after finding it in
// the VM (adoptVM).
type State struct {
	Cluster    uint32    `json:"cluster"`
	PID        int       `json:"pid"`
	Updated    time.Time `json:"updated"`
	Region     string    `json:"region"`
	Generation uint64    `json:"generation"`
	Adopted    bool      `json:"adopted,omitempty"`
	// GapSeconds: adopted, how long the predecessor had been gone (the
	// sources' blind time).
	GapSeconds float64       `json:"gap_seconds,omitempty"`
	VMs        []StateExport `json:"vms,omitempty"`
}

// StateExport is one VM's export in State.
type StateExport struct {
	VM         string `json:"vm"`
	Queues     []int  `json:"queues"`
	Region     string `json:"region"`
	Generation uint64 `json:"generation"`
	Plugged    bool   `json:"plugged"`
	Adopted    bool   `json:"adopted,omitempty"`
	// Waiting: the VM was not reachable; plugged when it appears.
	Waiting bool `json:"waiting,omitempty"`
}

// StatePath is the state file of cluster id in dir.
func StatePath(dir string, id uint32) string {
	return filepath.Join(dir, fmt.Sprintf("cluster-%d.json", id))
}

// ReadState reads a state file StatePath wrote.
func ReadState(path string) (State, error) {
	var s State
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read agent state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("read agent state %s: %w", path, err)
	}
	return s, nil
}

// State returns what the agent runs now, as its state file records it.
func (a *Agent) State() State {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	return a.stateLocked()
}

// stateLocked is State with exMu held.
func (a *Agent) stateLocked() State {
	s := State{Cluster: a.c.ID(), PID: os.Getpid(), Updated: time.Now(), Region: a.c.Path(), Generation: a.c.Generation(), Adopted: a.c.Adopted(),
		GapSeconds: a.gap.Seconds()}
	for _, e := range a.exports {
		e.mu.Lock()
		t := e.target
		se := StateExport{VM: e.qmpPath, Queues: e.queues, Region: t.Path(), Generation: t.Generation(), Plugged: e.detach != nil, Adopted: t.Adopted()}
		e.mu.Unlock()
		s.VMs = append(s.VMs, se)
	}
	for _, p := range a.pending {
		s.VMs = append(s.VMs, StateExport{VM: p.VM, Queues: exportQueues(p, a.cfg.Queues), Waiting: true})
	}
	return s
}

// saveState writes the state file (atomically: a temporary file renamed)
// when the agent has a state directory.
func (a *Agent) saveState() {
	a.exMu.Lock()
	defer a.exMu.Unlock()
	a.saveStateLocked()
}

// saveStateLocked is saveState with exMu held.
func (a *Agent) saveStateLocked() {
	if a.cfg.StateDir == "" || a.c == nil {
		return
	}
	b, _ := json.MarshalIndent(a.stateLocked(), "", "  ")
	path := StatePath(a.cfg.StateDir, a.c.ID())
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err == nil {
		err = os.Rename(tmp, path)
		if err == nil {
			return
		}
	}
	a.log.Warn("state file not written", "path", path)
}

// removeState removes the state file: the agent stopped cleanly.
func (a *Agent) removeState() {
	if a.cfg.StateDir != "" && a.c != nil {
		os.Remove(StatePath(a.cfg.StateDir, a.c.ID()))
	}
}
