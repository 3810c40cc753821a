package qmp

import (
	"errors"
	"testing"
)

// TestRegions lists ivshmem-plain devices from qom-list and qom-get replies
// shaped like QEMU 7.2's, skipping other peripherals.
func TestRegions(t *testing.T) {
	vm, _ := startFake(t, func(cmd string, args map[string]any) (string, []string) {
		switch cmd {
		case "qom-list":
			return `{"return": [{"name": "type", "type": "string"}, {"name": "zcrp1", "type": "child<pcie-root-port>"}, ` +
				`{"name": "zcdev-b", "type": "child<ivshmem-plain>"}, {"name": "zcdev-a", "type": "child<ivshmem-plain>"}]}`, nil
		case "qom-get":
			p, prop := args["path"].(string), args["property"].(string)
			switch {
			case prop == "memdev":
				return `{"return": "/objects/zcmem-` + p[len(p)-1:] + `"}`, nil
			case prop == "mem-path":
				return `{"return": "/dev/shm/zc-` + p[len(p)-1:] + `"}`, nil
			case prop == "size":
				return `{"return": 1048576}`, nil
			}
		}
		return `{"error": {"class": "GenericError", "desc": "unexpected"}}`, nil
	})
	got, err := vm.Regions(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []Attachment{
		{MemID: "zcmem-a", DevID: "zcdev-a", Path: "/dev/shm/zc-a", Size: 1 << 20},
		{MemID: "zcmem-b", DevID: "zcdev-b", Path: "/dev/shm/zc-b", Size: 1 << 20},
	}
	if len(got) != len(want) {
		t.Fatalf("Regions = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("region %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestRegionsError(t *testing.T) {
	vm, _ := startFake(t, func(string, map[string]any) (string, []string) {
		return `{"error": {"class": "GenericError", "desc": "no"}}`, nil
	})
	if _, err := vm.Regions(ctxT(t)); !errors.Is(err, ErrGeneric) {
		t.Errorf("Regions = %v, want ErrGeneric", err)
	}
}
