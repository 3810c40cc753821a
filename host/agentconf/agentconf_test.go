package agentconf

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
)

const distFile = "../../dist/zchost.toml"

// public drops what Parse keeps for Diff's messages, for comparisons.
func public(f *File) File {
	g := *f
	g.name, g.lines = "", nil
	return g
}

func TestDistExample(t *testing.T) {
	f, err := Load(distFile)
	if err != nil {
		t.Fatal(err)
	}
	want := File{
		StateDir: "/run/zcfabric", Control: "/run/zcfabric/zchost.sock", Metrics: "127.0.0.1:9477",
		LogLevel: hclog.Info,
		Clusters: []Cluster{{
			ID: 99, Queues: 2, Mode: zc.ModeIPPair, Sources: []string{"gen:len=64,rate=1e6"},
			QueueLen: 4096, BufferSize: 2048, Backing: zc.BackingAuto, VMRecover: 10 * time.Second,
			Exports: []Export{{VM: "/run/vm1.qmp", Queues: []int{0}}, {VM: "libvirt:probe2", Queues: []int{1}}},
		}, {
			ID: 100, Queues: 1, Mode: zc.ModeRoundRobin, QueueLen: 4096, BufferSize: 2048, QueueBuffers: 1024,
			VMRecover: 10 * time.Second, Exports: []Export{{VM: "/run/vm1.qmp", Queues: []int{0}}},
		}},
	}
	if got := public(f); !reflect.DeepEqual(got, want) {
		t.Errorf("dist/zchost.toml:\n got %+v\nwant %+v", got, want)
	}
	if n, err := f.Clusters[0].PoolBuffers(); err != nil || n != 2*4096+1024 {
		t.Errorf("PoolBuffers = %d, %v; want %d", n, err, 2*4096+1024)
	}
	if f.Clusters[0].SharesRegion() || !f.Clusters[1].SharesRegion() {
		t.Errorf("SharesRegion: cluster 99 (sources, not shared) %v, cluster 100 (no sources) %v",
			f.Clusters[0].SharesRegion(), f.Clusters[1].SharesRegion())
	}
	// The example shows every key the schema has.
	data, _ := os.ReadFile(distFile)
	for _, k := range schema {
		if !strings.Contains(string(data), "\n"+k.name+" = ") && !strings.Contains(string(data), "[["+join(k.table, k.name)+"]]") {
			t.Errorf("dist/zchost.toml does not show key %s", join(k.table, k.name))
		}
	}
}

func TestDefaults(t *testing.T) {
	f, err := Parse("min.toml", []byte("state_dir = \"/var/lib/zc\"\n[[cluster]]\nid = 7\n[[cluster.export]]\nvm = \"/run/a.qmp\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := File{StateDir: "/var/lib/zc", Control: "/var/lib/zc/zchost.sock", LogLevel: hclog.Info,
		Clusters: []Cluster{{ID: 7, Queues: 1, QueueLen: DefaultQueueLen, BufferSize: DefaultBufferSize,
			VMRecover: DefaultVMRecover, Exports: []Export{{VM: "/run/a.qmp", Queues: []int{0}}}}}}
	if got := public(f); !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}
	empty, err := Parse("empty.toml", nil)
	if err != nil || empty.StateDir != DefaultStateDir || empty.Control != "/run/zcfabric/zchost.sock" || len(empty.Clusters) != 0 {
		t.Errorf("empty file: %+v, %v", empty, err)
	}
}

// TestModeForms: names, integers and numeric strings all parse.
func TestModeForms(t *testing.T) {
	for src, want := range map[string]zc.HashMode{
		`"round-robin"`: zc.ModeRoundRobin, `"ip-pair"`: zc.ModeIPPair, `"fanout"`: zc.ModeFanout,
		`"5-tuple"`: zc.Mode5Tuple, `"gtp"`: zc.ModeGTP, `3`: zc.Mode5Tuple, `"4"`: zc.ModeGTP, `1`: zc.ModeIPPair,
	} {
		f, err := Parse("m.toml", []byte("[[cluster]]\nid = 1\nmode = "+src+"\n"))
		if err != nil || f.Clusters[0].Mode != want {
			t.Errorf("mode = %s: %v, %v; want %v", src, f, err, want)
		}
	}
}

func TestBadFiles(t *testing.T) {
	const c1 = "[[cluster]]\nid = 1\n"
	for _, tc := range []struct {
		name, doc string
		line      int
		key       string
		kind      error
		msg       string
	}{
		{"unknown top key", "state_dir = \"/x\"\nbogus = 1\n", 2, "bogus", ErrUnknownKey, "top level takes state_dir"},
		{"unknown cluster key", c1 + "[[cluster]]\nid = 2\nfoo = 2\n", 5, "cluster[1].foo", ErrUnknownKey, "[[cluster]] takes id, queues"},
		{"unknown export key", c1 + "[[cluster.export]]\nvm = \"/a\"\nbar = 1\n", 5, "cluster[0].export[0].bar", ErrUnknownKey, "takes vm, queues"},
		{"unknown table", c1 + "[[cluster.bogus]]\nx = 1\n", 3, "cluster[0].bogus[0]", ErrUnknownKey, ""},
		{"bad mode", c1 + "[[cluster]]\nid = 2\nqueues = 2\nmode = \"ipx\"\n", 6, "cluster[1].mode", ErrValue,
			`"ipx": want round-robin, ip-pair, fan-out, 5-tuple, gtp (or 0..4)`},
		{"mode out of range", c1 + "mode = 7\n", 3, "cluster[0].mode", ErrValue, "7: want round-robin"},
		{"mode wrong type", c1 + "mode = true\n", 3, "cluster[0].mode", ErrType, "not a boolean"},
		{"queues string", c1 + "queues = \"two\"\n", 3, "cluster[0].queues", ErrType, "want an integer number of queues, not a string"},
		{"keep_plugged string", "keep_plugged = \"yes\"\n", 1, "keep_plugged", ErrType, "want true or false, not a string"},
		{"sources element", c1 + "sources = [\"gen:\",\n  7]\n", 4, "cluster[0].sources[1]", ErrType, "not an integer"},
		{"export queue element", c1 + "[[cluster.export]]\nvm = \"/a\"\nqueues = [0, \"1\"]\n", 5, "cluster[0].export[0].queues[1]", ErrType, "not a string"},
		{"cluster as table", "[cluster]\nid = 1\n", 1, "cluster", ErrType, "want [[cluster]] tables, not a table"},
		{"export as table", c1 + "[cluster.export]\nvm = \"/a\"\n", 3, "cluster[0].export", ErrType, "[[cluster.export]]"},
		{"cluster as integer", "cluster = 5\n", 1, "cluster", ErrType, "not an integer"},
		{"syntax", "state_dir = \"/x\"\nmetrics = \n", 2, "metrics", ErrSyntax, "start of value"},
		{"syntax in table", c1 + "queues = [1,\n", 3, "cluster[0].queues", ErrSyntax, "array is incomplete"},
		{"syntax no key", c1 + "= 3\n", 3, "", ErrSyntax, ""},
		{"duplicate key", "state_dir = \"/a\"\nstate_dir = \"/b\"\n", 2, "state_dir", ErrSyntax, "already defined"},
		{"duplicate cluster id", c1 + "[[cluster]]\nid = 2\n[[cluster]]\nid = 1\n", 6, "cluster[2].id", ErrValue, "cluster 1 is also defined at dup.toml:2"},
		{"missing id", "[[cluster]]\nqueues = 2\n", 1, "cluster[0].id", ErrValue, "missing"},
		{"negative id", "[[cluster]]\nid = -1\n", 2, "cluster[0].id", ErrValue, "-1: want 0..4294967295"},
		{"zero queues", c1 + "queues = 0\n", 3, "cluster[0].queues", ErrValue, "want 1..1024"},
		{"queue_len not pow2", c1 + "queue_len = 1000\n", 3, "cluster[0].queue_len", ErrValue, "power of two"},
		{"buffer_size small", c1 + "buffer_size = 64\n", 3, "cluster[0].buffer_size", ErrValue, "power of two from 256"},
		{"too many buffers", c1 + "buffers = 16777216\nqueue_buffers = 5\n", 3, "cluster[0].buffers", ErrValue, "more than a region holds"},
		{"negative buffers", c1 + "buffers = -1\n", 3, "cluster[0].buffers", ErrValue, "-1"},
		{"bad backing", c1 + "backing = \"nvme\"\n", 3, "cluster[0].backing", ErrValue, "want auto, shm, hugetlbfs or memfd"},
		{"relative hugetlbfs", c1 + "hugetlbfs = \"huge\"\n", 3, "cluster[0].hugetlbfs", ErrValue, "absolute"},
		{"bad bpf", c1 + "bpf = \"2\\n6 0 0 1\"\n", 3, "cluster[0].bpf", ErrValue, "count says 2"},
		{"bad duration", c1 + "vm_recover = \"10\"\n", 3, "cluster[0].vm_recover", ErrValue, `"10": want a duration`},
		{"negative duration", c1 + "vm_recover = \"-1s\"\n", 3, "cluster[0].vm_recover", ErrValue, ">= 0"},
		{"duration integer", c1 + "vm_recover = 10\n", 3, "cluster[0].vm_recover", ErrType, "not an integer"},
		{"bad source kind", c1 + "sources = [\"gen:len=64\", \"tap:x\"]\n", 3, "cluster[0].sources[1]", ErrValue, `unknown kind "tap"`},
		{"bad gen option", c1 + "sources = [\"gen:len=x\"]\n", 3, "cluster[0].sources[0]", ErrValue, "len=x"},
		{"queue as source", c1 + "sources = [\"zc:5@0\"]\n", 3, "cluster[0].sources[0]", ErrValue, "cluster queue"},
		{"afxdp option", c1 + "sources = [\"afxdp:eth0?ring=3\"]\n", 3, "cluster[0].sources[0]", ErrValue, "ring=3"},
		{"empty source", c1 + "sources = [\"\"]\n", 3, "cluster[0].sources[0]", ErrValue, "empty"},
		{"source kind only", c1 + "sources = [\"gen:\"]\n", 3, "cluster[0].sources[0]", ErrValue, "nothing after"},
		{"export queue out of range", c1 + "queues = 2\n[[cluster.export]]\nvm = \"/a\"\nqueues = [2]\n", 6, "cluster[0].export[0].queues", ErrValue,
			"queue 2 out of range: cluster 1 has 2 queue(s), 0..1"},
		{"export queue negative", c1 + "[[cluster.export]]\nvm = \"/a\"\nqueues = [-1]\n", 5, "cluster[0].export[0].queues", ErrValue, "out of range"},
		{"export queue twice in one", c1 + "queues = 2\n[[cluster.export]]\nvm = \"/a\"\nqueues = [1, 1]\n", 6, "cluster[0].export[0].queues", ErrValue, "listed twice"},
		{"export queues empty", c1 + "[[cluster.export]]\nvm = \"/a\"\nqueues = []\n", 5, "cluster[0].export[0].queues", ErrValue, "empty"},
		{"queue in two exports", c1 + "queues = 2\nsources = [\"gen:len=64\"]\n[[cluster.export]]\nvm = \"/a\"\n[[cluster.export]]\nvm = \"/b\"\nqueues = [1]\n",
			9, "cluster[0].export[1].queues", ErrValue, "queue 1 is also exported to \"/a\""},
		{"same vm twice", c1 + "[[cluster.export]]\nvm = \"/a\"\n[[cluster.export]]\nvm = \"/a\"\n", 6, "cluster[0].export[1].vm", ErrValue, "also exported at line 4"},
		{"export without vm", c1 + "[[cluster.export]]\nqueues = [0]\n", 3, "cluster[0].export[0].vm", ErrValue, "missing"},
		{"relative qmp path", c1 + "[[cluster.export]]\nvm = \"vm1.qmp\"\n", 4, "cluster[0].export[0].vm", ErrValue, "absolute"},
		{"bad libvirt spec", c1 + "[[cluster.export]]\nvm = \"libvirt:\"\n", 4, "cluster[0].export[0].vm", ErrValue, "empty domain"},
		{"libvirt with ctl", c1 + "ctl = true\n[[cluster.export]]\nvm = \"libvirt:probe\"\n", 5, "cluster[0].export[0].vm", ErrValue, "ctl = true"},
		{"inline tables", "cluster = [{id = 1, export = [{vm = \"/a\", queues = [5]}]}]\n", 1, "cluster[0].export[0].queues", ErrValue, "queue 5 out of range"},
		{"relative state_dir", "state_dir = \"run\"\n", 1, "state_dir", ErrValue, "absolute"},
		{"long control", "control = \"/" + strings.Repeat("x", 120) + "\"\n", 1, "control", ErrValue, "longer than a unix socket path"},
		{"metrics no port", "metrics = \"9477\"\n", 1, "metrics", ErrValue, "want host:port"},
		{"metrics bad port", "metrics = \":http\"\n", 1, "metrics", ErrValue, "want 1..65535"},
		{"bad log level", "log_level = \"loud\"\n", 1, "log_level", ErrValue, "want trace, debug"},
		{"earliest error wins", c1 + "queue_len = 3\n[[cluster]]\nid = 1\n", 3, "cluster[0].queue_len", ErrValue, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("dup.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("parsed %q: %+v", tc.doc, f)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if e.File != "dup.toml" || e.Line != tc.line || e.Key != tc.key {
				t.Errorf("error at %s:%d key %q; want dup.toml:%d key %q (%v)", e.File, e.Line, e.Key, tc.line, tc.key, err)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %v does not match %v", err, tc.kind)
			}
			prefix := "dup.toml:" + strconv.Itoa(tc.line) + ": "
			if tc.key != "" {
				prefix += tc.key + ": "
			}
			if s := err.Error(); !strings.HasPrefix(s, prefix) || !strings.Contains(s, tc.msg) {
				t.Errorf("error %q: want prefix %q and %q", s, prefix, tc.msg)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "zchost.toml")
	if err := os.WriteFile(path, []byte("[[cluster]]\nid = 1\nqueues = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if want := path + ":3: cluster[0].queues: "; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load: %v; want prefix %q", err, want)
	}
	if _, err := Load(filepath.Join(dir, "absent.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent): %v; want ErrNotExist", err)
	}
}

func TestRoundTrip(t *testing.T) {
	f, err := Load(distFile)
	if err != nil {
		t.Fatal(err)
	}
	f.Clusters[0].BPF = "1\n6 0 0 262144\n"
	f.Clusters[0].Backing = zc.BackingHugetlb
	f.Clusters[0].Hugetlbfs = "/dev/hugepages"
	f.Clusters[1].VMRecover = 0
	f.Clusters[1].Mode = zc.ModeFanout
	f.LogLevel = hclog.Debug
	out, err := f.Format()
	if err != nil {
		t.Fatal(err)
	}
	g, err := Parse("formatted.toml", out)
	if err != nil {
		t.Fatalf("formatted file does not parse: %v\n%s", err, out)
	}
	if a, b := public(f), public(g); !reflect.DeepEqual(a, b) {
		t.Errorf("round trip:\n was %+v\n got %+v\n%s", a, b, out)
	}
	if ch, err := Diff(f, g); err != nil || !ch.Empty() {
		t.Errorf("Diff of a file and its round trip: %+v, %v", ch, err)
	}
}

func TestHelpNamesEveryKey(t *testing.T) {
	for _, k := range schema {
		if _, table := tableSpec(join(k.table, k.name)); table {
			if !strings.Contains(Help, "[["+join(k.table, k.name)+"]]") {
				t.Errorf("Help does not document [[%s]]", join(k.table, k.name))
			}
			continue
		}
		if !strings.Contains(Help, "  "+k.name+" = ") {
			t.Errorf("Help does not document %s", join(k.table, k.name))
		}
	}
}

// TestSchemaMatchesStructs: the decoder's struct tags and the schema name
// the same keys.
func TestSchemaMatchesStructs(t *testing.T) {
	tags := map[string]bool{}
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			fld := typ.Field(i)
			key := join(prefix, fld.Tag.Get("toml"))
			tags[key] = true
			if ft := fld.Type; ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				walk(key, ft.Elem())
			}
		}
	}
	walk("", reflect.TypeFor[rawFile]())
	for k := range tags {
		if schemaByKey[k] == nil {
			t.Errorf("struct key %s is not in the schema", k)
		}
	}
	for k := range schemaByKey {
		if !tags[k] {
			t.Errorf("schema key %s is not in the structs", k)
		}
	}
}

// TestSharedOverlap: VMs of a shared cluster, or of one without sources
// (fed by producers: the VMs map its own region), may read the same queue.
func TestSharedOverlap(t *testing.T) {
	for _, head := range []string{
		"[[cluster]]\nid = 1\nqueues = 2\nshared = true\nsources = [\"gen:len=64\"]\n",
		"[[cluster]]\nid = 1\nqueues = 2\n",
	} {
		doc := head + "[[cluster.export]]\nvm = \"/run/a.qmp\"\n[[cluster.export]]\nvm = \"libvirt:b@qemu:///system\"\nqueues = [1]\n"
		f, err := Parse("shared.toml", []byte(doc))
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		want := []Export{{VM: "/run/a.qmp", Queues: []int{0, 1}}, {VM: "libvirt:b@qemu:///system", Queues: []int{1}}}
		if !reflect.DeepEqual(f.Clusters[0].Exports, want) || !f.Clusters[0].SharesRegion() {
			t.Errorf("exports %+v (shares region: %v); want %+v", f.Clusters[0].Exports, f.Clusters[0].SharesRegion(), want)
		}
	}
}
