package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/status"
)

// TestStatsDistrustsVMRegions: what zchost stats makes of a VM's region
// whose guest rewrote the header. Rewritten without a valid checksum, it
// is listed as corrupt (it used to vanish from the list); rewritten and
// re-signed with a fresh checksum, it still parses, and only the agent's
// record (the status file) shows it is not the header the agent wrote.
// The producer counters shown are the agent's, not the region's.
func TestStatsDistrustsVMRegions(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "zcstats-")
	if err != nil {
		t.Skipf("needs /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("ZC_DIR", dir)
	id := 0x7c000000 | rand.Uint32N(1<<24)
	c, err := zc.CreateCluster(zc.Config{ID: id, Queues: 2, QueueLen: 16, Buffers: 64, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vms := make([]*zc.Cluster, 2)
	rec := status.File{Cluster: id, PID: os.Getpid(), Updated: time.Now()}
	for k := range vms {
		vms[k], err = zc.CreateCluster(zc.Config{ID: id, Queues: 2, QueueLen: 16, Buffers: 64, Backing: zc.BackingShm, Path: zc.VMRegionPath(id, k+1)})
		if err != nil {
			t.Fatal(err)
		}
		defer vms[k].Close()
		rec.Regions = append(rec.Regions, status.Region{Path: vms[k].Path(), VM: "vm", Generation: vms[k].Generation(),
			Checksum: vms[k].Checksum(), State: "ok", Queues: []zc.QueueStats{{Queue: 0, Sent: 42, State: "ok", View: "producer"}}})
	}
	if err := status.Write(status.Path(id), rec); err != nil {
		t.Fatal(err)
	}
	// The guests: vm1 scribbles on its creator pid (checksum now wrong),
	// vm2 does the same and re-signs, and forges its sent counter.
	b1, b2 := vms[0].Bytes(), vms[1].Bytes()
	binary.LittleEndian.PutUint32(b1[104:], 4242)
	binary.LittleEndian.PutUint32(b2[104:], 4242)
	binary.LittleEndian.PutUint32(b2[108:], crc32.Checksum(b2[:108], crc32.MakeTable(crc32.Castagnoli)))

	infos, err := zc.InspectVMRegions(id)
	if err != nil || len(infos) != 2 {
		t.Fatalf("inspect: %d regions, %v", len(infos), err)
	}
	agent, err := status.Read(status.Path(id))
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]zc.ClusterInfo{}
	for _, in := range infos {
		byPath[in.Path] = mergeAgent(in, &agent)
	}
	if in := byPath[vms[0].Path()]; in.State != "corrupt" || in.Failure == "" {
		t.Errorf("vm1 (bad checksum): State %q Failure %q, want corrupt", in.State, in.Failure)
	}
	in := byPath[vms[1].Path()]
	if in.State != "corrupt" || !strings.Contains(in.Failure, "header rewritten") {
		t.Errorf("vm2 (re-signed): State %q Failure %q, want corrupt: header rewritten", in.State, in.Failure)
	}
	if len(in.Queues) == 0 || in.Queues[0].Sent != 42 || in.Queues[0].View != "agent" {
		t.Errorf("vm2 queue 0: %+v, want the agent's sent count (42), view agent", in.Queues)
	}
}

// TestStatsSaysRecordAge: zchost stats says whose record it merged, how
// old it is and when its agent last found it current (the agent touches
// an unchanged record instead of writing it), and when that agent is gone
// (killed: its last record stays), says so instead of showing it as
// current.
func TestStatsSaysRecordAge(t *testing.T) {
	bin, env, id, c := statsCluster(t, 0x7d000000)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pid              int
		running          bool
		written, checked time.Duration // ago; checked 0: not touched after writing
		sayText          string
	}{
		{os.Getpid(), true, 0, 0, fmt.Sprintf("agent record: pid %d, written 0s ago", os.Getpid())},
		{os.Getpid(), true, 5 * time.Second, 3 * time.Second, fmt.Sprintf("agent record: pid %d, checked 3s ago, unchanged for 5s", os.Getpid())},
		{dead.Process.Pid, false, 5 * time.Second, 3 * time.Second, fmt.Sprintf("agent record: pid %d is gone (last seen 3s ago)", dead.Process.Pid)},
	} {
		now := time.Now()
		rec := status.File{Cluster: id, PID: tc.pid, Updated: now.Add(-tc.written),
			Regions: []status.Region{{Path: c.Path(), Generation: c.Generation(), Checksum: c.Checksum(), State: "ok"}}}
		if err := status.Write(status.Path(id), rec); err != nil {
			t.Fatal(err)
		}
		if tc.checked > 0 {
			if err := status.Touch(status.Path(id), now.Add(-tc.checked)); err != nil {
				t.Fatal(err)
			}
		}
		run := func(args ...string) string {
			cmd := exec.Command(filepath.Join(bin, "zchost"), append([]string{"stats", "-c", strconv.FormatUint(uint64(id), 10)}, args...)...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("zchost stats %q: %v\n%s", args, err, out)
			}
			return string(out)
		}
		if out := run(); !strings.Contains(out, tc.sayText) {
			t.Errorf("zchost stats does not say %q:\n%s", tc.sayText, out)
		}
		var js struct {
			Agent struct {
				PID               int     `json:"pid"`
				AgeSeconds        float64 `json:"age_seconds"`
				CheckedAgeSeconds float64 `json:"checked_age_seconds"`
				Running           bool    `json:"running"`
			} `json:"agent"`
		}
		if err := json.Unmarshal([]byte(run("--json")), &js); err != nil {
			t.Fatal(err)
		}
		if js.Agent.PID != tc.pid || js.Agent.Running != tc.running || js.Agent.AgeSeconds < tc.written.Seconds() ||
			js.Agent.CheckedAgeSeconds < tc.checked.Seconds() || js.Agent.CheckedAgeSeconds > js.Agent.AgeSeconds {
			t.Errorf("zchost stats --json agent %+v, want pid %d running %v, written at least %v ago, checked at least %v ago and not before it was written",
				js.Agent, tc.pid, tc.running, tc.written, tc.checked)
		}
	}
}

// TestStatsShowsSourcePositions: zchost stats says how far the agent's
// finite sources got, from its marks (written after every burst) when
// they are that agent's, else from its record (up to a second old).
func TestStatsShowsSourcePositions(t *testing.T) {
	bin, env, id, c := statsCluster(t, 0x7e000000)
	const name = "gen:len=64,count=1000"
	rec := status.File{Cluster: id, PID: os.Getpid(), Updated: time.Now(), Sources: []status.Source{{Name: name, Position: 100}},
		Regions: []status.Region{{Path: c.Path(), Generation: c.Generation(), Checksum: c.Checksum(), State: "ok"}}}
	if err := status.Write(status.Path(id), rec); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(status.Path(id))
	defer os.Remove(status.MarksPath(id))
	for _, tc := range []struct {
		marksPID int
		want     uint64
	}{
		{os.Getpid(), 150}, // the agent's marks: fresher than its record
		{1, 100},           // another agent's: the record
	} {
		m, err := status.CreateMarks(status.MarksPath(id), tc.marksPID, []uint64{150})
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		cmd := exec.Command(filepath.Join(bin, "zchost"), "stats", "-c", strconv.FormatUint(uint64(id), 10))
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("zchost stats: %v\n%s", err, out)
		}
		if want := fmt.Sprintf("source %s: at %d", name, tc.want); !strings.Contains(string(out), want) {
			t.Errorf("marks of pid %d: zchost stats does not say %q:\n%s", tc.marksPID, want, out)
		}
		cmd = exec.Command(filepath.Join(bin, "zchost"), "stats", "--json", "-c", strconv.FormatUint(uint64(id), 10))
		cmd.Env = env
		if out, err = cmd.Output(); err != nil {
			t.Fatal(err)
		}
		var js struct {
			Agent struct {
				Sources []status.Source `json:"sources"`
			} `json:"agent"`
		}
		if err := json.Unmarshal(out, &js); err != nil || len(js.Agent.Sources) != 1 || js.Agent.Sources[0] != (status.Source{Name: name, Position: tc.want}) {
			t.Errorf("marks of pid %d: zchost stats --json sources %+v (%v), want %s at %d", tc.marksPID, js.Agent.Sources, err, name, tc.want)
		}
	}
}

// statsCluster is the setup of the record tests: the binaries, an
// environment of its own, and a small cluster with a random id in the
// range from base, closed at the end of the test.
func statsCluster(t *testing.T, base uint32) (bin string, env []string, id uint32, c *zc.Cluster) {
	t.Helper()
	bin, env = binaries(t), hostileEnv(t)
	id = base | rand.Uint32N(1<<24)
	c, err := zc.CreateCluster(zc.Config{ID: id, Queues: 1, QueueLen: 16, Buffers: 64, Backing: zc.BackingShm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return bin, env, id, c
}
