package agent

import (
	"slices"
	"testing"
)

func parseAll(t *testing.T, specs []string, nq int) []Export {
	t.Helper()
	var es []Export
	for _, s := range specs {
		e, err := ParseExport(s, nq)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		es = append(es, e)
	}
	return es
}

func TestParseExports(t *testing.T) {
	es := parseAll(t, []string{"/a.qmp=0,2", "/b.qmp=1"}, 3)
	if err := checkExports(es, 3, true); err != nil || len(es) != 2 || !slices.Equal(es[0].Queues, []int{0, 2}) || es[1].Queues[0] != 1 {
		t.Fatalf("%+v %v", es, err)
	}
	both := parseAll(t, []string{"/a.qmp", "/b.qmp"}, 2)
	if err := checkExports(both, 2, true); err == nil {
		t.Fatal("two VMs on the same queues without --shared accepted")
	}
	if err := checkExports(both, 2, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseExport("/a.qmp=5", 2); err == nil {
		t.Fatal("queue out of range accepted")
	}
	if got := exportQueues(both[0], 3); !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("no list = %v, want every queue", got)
	}
}

func TestParseExportsLibvirt(t *testing.T) {
	es := parseAll(t, []string{
		"/run/vm1.qmp=0",
		"libvirt:web1=1",
		"libvirt:web2@qemu+unix:///system?socket=/run/x/libvirt-sock=2,3",
		"libvirt:web3@qemu+unix:///system?socket=/run/a=b",
	}, 4)
	want := []Export{
		{"/run/vm1.qmp", []int{0}},
		{"libvirt:web1", []int{1}},
		{"libvirt:web2@qemu+unix:///system?socket=/run/x/libvirt-sock", []int{2, 3}},
		{"libvirt:web3@qemu+unix:///system?socket=/run/a=b", nil},
	}
	for i, w := range want {
		if es[i].VM != w.VM || !slices.Equal(es[i].Queues, w.Queues) {
			t.Errorf("export %d = %+v, want %+v", i, es[i], w)
		}
	}
	if _, err := ParseExport("libvirt:web1=4", 4); err == nil {
		t.Error("queue 4 of 4 accepted")
	}
}
