package agentconf

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func mustParse(t *testing.T, name, doc string) *File {
	t.Helper()
	f, err := Parse(name, []byte(doc))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return f
}

const diffBase = `metrics = "127.0.0.1:9477"
[[cluster]]
id = 99
queues = 3
sources = ["gen:len=64"]
[[cluster.export]]
vm = "/run/a.qmp"
queues = [0]
[[cluster.export]]
vm = "/run/b.qmp"
queues = [1]
[[cluster.export]]
vm = "libvirt:c"
queues = [2]
[[cluster]]
id = 100
[[cluster.export]]
vm = "/run/a.qmp"
`

func TestDiff(t *testing.T) {
	old := mustParse(t, "old.toml", diffBase)
	newDoc := strings.Replace(diffBase, "[[cluster.export]]\nvm = \"/run/b.qmp\"\nqueues = [1]\n", "", 1)
	newDoc = strings.Replace(newDoc, "vm = \"libvirt:c\"\nqueues = [2]", "vm = \"libvirt:c\"\nqueues = [2, 1]", 1)
	newDoc = strings.Replace(newDoc, "[[cluster]]\nid = 100\n", "[[cluster.export]]\nvm = \"/run/d.qmp\"\nqueues = [0]\n[[cluster]]\nid = 100\n", 1)
	newDoc = strings.Replace(newDoc, "[[cluster]]\nid = 100\n", "[[cluster]]\nid = 101\n", 1)
	newDoc = strings.Replace(newDoc, `metrics = "127.0.0.1:9477"`, `metrics = ""`+"\nlog_level = \"debug\"", 1)
	// d takes queue 0 as well: refused (a has it, regions are per VM).
	if _, err := Parse("new.toml", []byte(newDoc)); err == nil || !strings.Contains(err.Error(), "queue 0 is also exported") {
		t.Fatalf("queue 0 twice: %v", err)
	}
	newDoc = strings.Replace(newDoc, "vm = \"/run/d.qmp\"\nqueues = [0]", "vm = \"/run/d.qmp\"\nqueues = [1]", 1)
	newDoc = strings.Replace(newDoc, "queues = [2, 1]", "queues = [2]", 1)
	new := mustParse(t, "new.toml", newDoc)
	ch, err := Diff(old, new)
	if err != nil {
		t.Fatal(err)
	}
	a := Export{VM: "/run/a.qmp", Queues: []int{0}}
	b := Export{VM: "/run/b.qmp", Queues: []int{1}}
	c := Export{VM: "libvirt:c", Queues: []int{2}}
	d := Export{VM: "/run/d.qmp", Queues: []int{1}}
	want := Change{
		AddedClusters:   []uint32{101},
		RemovedClusters: []uint32{100},
		Exports:         []ExportChange{{Cluster: 99, Added: []Export{d}, Removed: []Export{b}, Unchanged: []Export{a, c}}},
		Settings:        []string{"metrics", "log_level"},
	}
	if !reflect.DeepEqual(ch, want) {
		t.Errorf("Diff:\n got %+v\nwant %+v", ch, want)
	}
	if ch.Empty() {
		t.Error("Empty() on a change")
	}
}

func TestDiffChangedQueues(t *testing.T) {
	old := mustParse(t, "old.toml", diffBase)
	// c moves from queue 2 to 1 and 2 once b no longer holds 1: unplugged
	// and plugged again.
	newDoc := strings.Replace(diffBase, "[[cluster.export]]\nvm = \"/run/b.qmp\"\nqueues = [1]\n", "", 1)
	newDoc = strings.Replace(newDoc, "queues = [2]", "queues = [2, 1]", 1)
	ch, err := Diff(old, mustParse(t, "new.toml", newDoc))
	if err != nil {
		t.Fatal(err)
	}
	want := []ExportChange{{Cluster: 99,
		Added:     []Export{{VM: "libvirt:c", Queues: []int{1, 2}}},
		Removed:   []Export{{VM: "/run/b.qmp", Queues: []int{1}}, {VM: "libvirt:c", Queues: []int{2}}},
		Unchanged: []Export{{VM: "/run/a.qmp", Queues: []int{0}}},
	}, {Cluster: 100, Unchanged: []Export{{VM: "/run/a.qmp", Queues: []int{0}}}}}
	if !reflect.DeepEqual(ch.Exports, want) || len(ch.AddedClusters)+len(ch.RemovedClusters)+len(ch.Settings) != 0 {
		t.Errorf("Diff:\n got %+v\nwant exports %+v", ch, want)
	}
}

func TestDiffNothing(t *testing.T) {
	old := mustParse(t, "old.toml", diffBase)
	// Same definition, spelled differently: defaults written out, mode by
	// number, queues of an export in another order.
	same := strings.Replace(diffBase, "[[cluster]]\nid = 100\n", "[[cluster]]\nid = 100\nqueues = 1\nmode = 0\nvm_recover = \"10s\"\nqueue_len = 4096\n", 1)
	ch, err := Diff(old, mustParse(t, "same.toml", same))
	if err != nil || !ch.Empty() {
		t.Errorf("Diff of equal files: %+v, %v", ch, err)
	}
}

func TestDiffRefused(t *testing.T) {
	old := mustParse(t, "old.toml", diffBase)
	for _, tc := range []struct {
		name, from, to string
		line           int
		key, msg       string
	}{
		{"queues", "queues = 3", "queues = 4", 4, "cluster[0].queues", "cluster 99: changed from 3 to 4"},
		{"mode", "id = 99\n", "id = 99\nmode = \"fanout\"\n", 4, "cluster[0].mode", "from round-robin to fan-out"},
		{"sources", `sources = ["gen:len=64"]`, `sources = ["gen:len=128"]`, 5, "cluster[0].sources", "gen:len=128"},
		{"default restored", "id = 99\nqueues = 3\n", "id = 99\nqueues = 3\nvm_recover = \"1s\"\n", 5, "cluster[0].vm_recover", "from 10s to 1s"},
		{"removed key", "[[cluster]]\nid = 100\n", "[[cluster]]\nid = 100\nshared = true\n", 17, "cluster[1].shared", "from false to true"},
		{"state_dir", `metrics = "127.0.0.1:9477"`, `metrics = "127.0.0.1:9477"` + "\nstate_dir = \"/var/zc\"", 2, "state_dir", "restarted"},
		{"control", `metrics = "127.0.0.1:9477"`, `metrics = "127.0.0.1:9477"` + "\ncontrol = \"/run/x.sock\"", 2, "control", "restarted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := strings.Replace(diffBase, tc.from, tc.to, 1)
			if doc == diffBase {
				t.Fatalf("%q not in the base file", tc.from)
			}
			_, err := Diff(old, mustParse(t, "new.toml", doc))
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrChanged) {
				t.Fatalf("Diff: %v; want an *Error matching ErrChanged", err)
			}
			if e.File != "new.toml" || e.Line != tc.line || e.Key != tc.key || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Diff: %v; want new.toml:%d: %s: ...%s...", err, tc.line, tc.key, tc.msg)
			}
		})
	}
	// The cluster's definition back as before, in a later reload: no error.
	if _, err := Diff(mustParse(t, "old.toml", diffBase), old); err != nil {
		t.Error(err)
	}
}
