package libvirt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{"libvirt:web1", Spec{Domain: "web1", Socket: DefaultSocket}},
		{"libvirt:web1@/tmp/x/libvirt-sock", Spec{Domain: "web1", Socket: "/tmp/x/libvirt-sock"}},
		{"libvirt:web1@qemu:///system", Spec{Domain: "web1", URI: "qemu:///system"}},
		{"libvirt:web-1.a_b@qemu+unix:///system?socket=/run/x=1", Spec{Domain: "web-1.a_b", URI: "qemu+unix:///system?socket=/run/x=1"}},
		{"libvirt:db@qemu+ssh://root@host/system", Spec{Domain: "db", URI: "qemu+ssh://root@host/system"}},
	} {
		got, err := ParseSpec(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if back, err := ParseSpec(got.String()); err != nil || back != got {
			t.Errorf("ParseSpec(%q.String() = %q) = %+v, %v", tc.in, got.String(), back, err)
		}
	}
	for _, bad := range []string{"", "web1", "/run/vm.qmp", "libvirt:", "libvirt:@/sock", "libvirt:a/b", "libvirt:web1@", "libvirt:web1@relative/sock", "libvirt:web1@://x"} {
		if got, err := ParseSpec(bad); !errors.Is(err, ErrBadSpec) {
			t.Errorf("ParseSpec(%q) = %+v, %v; want ErrBadSpec", bad, got, err)
		}
	}
	if !IsSpec("libvirt:x") || IsSpec("/run/libvirt:x") {
		t.Error("IsSpec")
	}
}

func TestShmemXML(t *testing.T) {
	got, err := ShmemXML("zc-99.vm1", 16<<20, "ua-zc-c99-1-2-abcd")
	want := `<shmem name='zc-99.vm1'><model type='ivshmem-plain'/><size unit='B'>16777216</size><alias name='ua-zc-c99-1-2-abcd'/></shmem>`
	if err != nil || got != want {
		t.Errorf("ShmemXML = %s, %v\nwant %s", got, err, want)
	}
	// What we send parses back as the device we meant.
	as, _, err := parseDomain("<domain><devices>" + got + "</devices></domain>")
	if err != nil || len(as) != 1 || as[0] != (Attachment{Alias: "ua-zc-c99-1-2-abcd", Name: "zc-99.vm1", Path: "/dev/shm/zc-99.vm1", Size: 16 << 20}) {
		t.Errorf("parse back: %+v, %v", as, err)
	}
	for _, c := range []struct{ name, alias string }{{"", "ua-x"}, {"a/b", "ua-x"}, {"zc-1", "shmem0"}, {"zc-1", "ua-"}, {"zc-1", "ua-a'b"}} {
		if _, err := ShmemXML(c.name, 1<<20, c.alias); err == nil {
			t.Errorf("ShmemXML(%q, %q) accepted", c.name, c.alias)
		}
	}
}

func TestNewAlias(t *testing.T) {
	a, b := newAlias("c99"), newAlias("c99")
	if a == b || !validAlias(a) || !strings.HasPrefix(a, "ua-zc-c99-") {
		t.Errorf("newAlias: %q, %q; want two distinct valid ua-zc-c99- aliases", a, b)
	}
	if l := newAlias("we!rd name/" + strings.Repeat("x", 40)); !validAlias(l) {
		t.Errorf("newAlias of an odd label: %q is not a valid alias", l)
	}
}

// liveXML is trimmed from libvirt 9.0's live XML of a domain with two
// shmem devices (one named by libvirt, one by us) running QEMU as
// libvirt-qemu.
const liveXML = `<domain type='qemu' id='2'>
  <name>zcx2</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <shmem name='zc-4242'>
      <model type='ivshmem-plain'/>
      <size unit='M'>16</size>
      <alias name='shmem0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </shmem>
    <shmem name='zc-7'>
      <model type='ivshmem-plain'/>
      <size unit='KiB'>2048</size>
      <alias name='ua-zc-c7-1-1-00ff00ff'/>
    </shmem>
    <shmem name='doorbell'>
      <model type='ivshmem-doorbell'/>
      <server path='/var/lib/libvirt/shmem-doorbell-sock'/>
    </shmem>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel>
  </seclabel>
</domain>`

func TestParseDomain(t *testing.T) {
	as, dac, err := parseDomain(liveXML)
	if err != nil {
		t.Fatal(err)
	}
	want := []Attachment{ // sorted by alias; libvirt's default doorbell server path
		{Name: "doorbell", Path: "/dev/shm/doorbell", Server: "/var/lib/libvirt/shmem-doorbell-sock"},
		{Alias: "shmem0", Name: "zc-4242", Path: "/dev/shm/zc-4242", Size: 16 << 20},
		{Alias: "ua-zc-c7-1-1-00ff00ff", Name: "zc-7", Path: "/dev/shm/zc-7", Size: 2 << 20},
	}
	if !slices.Equal(as, want) {
		t.Errorf("shmems %+v, want %+v", as, want)
	}
	if as[1].MemID() != "shmmem-shmem0" || as[1].ChardevID() != "" || as[0].ChardevID() != "char" {
		t.Errorf("MemID %q", as[0].MemID())
	}
	if dac != (dacLabel{set: true, uid: 64055, gid: 64055}) {
		t.Errorf("DAC label %+v", dac)
	}
	_, dac, err = parseDomain(`<domain><seclabel type='dynamic' model='dac' relabel='yes'><label>+0:+0</label></seclabel><seclabel type='none' model='dac' relabel='no'><label>+5:+5</label></seclabel></domain>`)
	if err != nil || dac != (dacLabel{set: true}) {
		t.Errorf("root DAC label: %+v, %v", dac, err)
	}
	if _, _, err := parseDomain(`<domain><seclabel model='dac'><label>libvirt-qemu</label></seclabel></domain>`); err == nil {
		t.Error("accepted a DAC label without a group")
	}
	if _, _, err := parseDomain(`<domain><devices><shmem name='x'><size unit='furlong'>1</size></shmem></devices></domain>`); err == nil {
		t.Error("accepted an unknown unit")
	}
}

func TestScaled(t *testing.T) {
	for _, c := range []struct {
		v, unit string
		want    uint64
	}{{"5", "", 5}, {"5", "bytes", 5}, {"4", "M", 4 << 20}, {"4", "MiB", 4 << 20}, {"4", "MB", 4e6}, {"1", "G", 1 << 30}, {"2", "k", 2048}} {
		if got, err := scaled(c.v, c.unit); err != nil || got != c.want {
			t.Errorf("scaled(%s %s) = %d, %v; want %d", c.v, c.unit, got, err, c.want)
		}
	}
	if _, err := scaled("18446744073709551615", "K"); err == nil {
		t.Error("no overflow error")
	}
}

// TestAttachChecks: what must be refused before libvirt is asked (a
// Domain without a connection would panic if it got that far).
func TestAttachChecks(t *testing.T) {
	d := &Domain{spec: Spec{Domain: "web1"}}
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := d.AttachRegion(ctx, AttachSpec{Path: filepath.Join(dir, "zc-1")}); !errors.Is(err, ErrNotDevShm) ||
		!strings.Contains(err.Error(), "libvirt domain web1") {
		t.Errorf("region outside /dev/shm: %v, want ErrNotDevShm naming the domain", err)
	}
	if _, err := os.Stat(ShmDir); err != nil {
		t.Skipf("requires %s: %v", ShmDir, err)
	}
	missing := filepath.Join(ShmDir, "zc-libvirt-test-missing-region")
	if _, err := d.AttachRegion(ctx, AttachSpec{Path: missing}); !errors.Is(err, ErrNoRegion) {
		t.Errorf("missing region: %v, want ErrNoRegion", err)
	}
	f, err := os.CreateTemp(ShmDir, "zc-libvirt-test-")
	if err != nil {
		t.Skip(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	for _, c := range []struct {
		file, ask int64
	}{{3 << 20, 0}, {4 << 20, 8 << 20}, {4 << 20, 2 << 20}, {1 << 19, 0}} {
		if err := f.Truncate(c.file); err != nil {
			t.Fatal(err)
		}
		if _, err := d.AttachRegion(ctx, AttachSpec{Path: f.Name(), Size: uint64(c.ask)}); !errors.Is(err, ErrBadSize) {
			t.Errorf("file of %d bytes, asked %d: %v, want ErrBadSize", c.file, c.ask, err)
		}
	}
}

// TestGrant gives a file to QEMU's DAC user, and leaves it alone for root.
func TestGrant(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root (chown)")
	}
	p := filepath.Join(t.TempDir(), "zc-1")
	if err := os.WriteFile(p, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	owner := func() (uint32, uint32) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	fi, _ := os.Stat(p)
	if err := grant(p, fi, dacLabel{set: true}); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(); u != 0 || g != 0 {
		t.Errorf("root label changed the owner to %d:%d", u, g)
	}
	if err := grant(p, fi, dacLabel{set: true, uid: 64055, gid: 64056}); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(); u != 64055 || g != 64056 {
		t.Errorf("owner %d:%d, want 64055:64056", u, g)
	}
}

func TestDoorbellXML(t *testing.T) {
	got, err := DoorbellXML("zc-99.vm1", "/tmp/zcbell-1/bell.sock", 1, "ua-zc-c99-1-2-abcd", 3)
	want := `<shmem name='zc-99.vm1'><model type='ivshmem-doorbell'/><server path='/tmp/zcbell-1/bell.sock'/>` +
		`<msi vectors='1' ioeventfd='on'/><alias name='ua-zc-c99-1-2-abcd'/><address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></shmem>`
	if err != nil || got != want {
		t.Errorf("DoorbellXML = %s, %v\nwant %s", got, err, want)
	}
	// What we send parses back as the device we meant.
	as, _, err := parseDomain("<domain><devices>" + got + "</devices></domain>")
	wantA := Attachment{Alias: "ua-zc-c99-1-2-abcd", Name: "zc-99.vm1", Path: "/dev/shm/zc-99.vm1", Server: "/tmp/zcbell-1/bell.sock", Vectors: 1}
	if err != nil || len(as) != 1 || as[0] != wantA || as[0].ChardevID() != "charua-zc-c99-1-2-abcd" {
		t.Errorf("parse back: %+v, %v; want %+v", as, err, wantA)
	}
	if got, _ := DoorbellXML("r", "/s", 0, "ua-x", -1); strings.Contains(got, "<address") || !strings.Contains(got, "vectors='1'") {
		t.Errorf("DoorbellXML with bus -1 and 0 vectors: %s", got)
	}
	for _, c := range []struct{ name, sock, alias string }{{"", "/s", "ua-x"}, {"a/b", "/s", "ua-x"}, {"r", "rel/s", "ua-x"}, {"r", "/s", "shmem0"}} {
		if _, err := DoorbellXML(c.name, c.sock, 1, c.alias, -1); err == nil {
			t.Errorf("DoorbellXML(%q, %q, %q) accepted", c.name, c.sock, c.alias)
		}
	}
}

// q35XML is trimmed from libvirt 9.0's live XML of a q35 domain with two
// pcie-root-ports, the first one holding a device.
const q35XML = `<domain type='qemu'><devices>
    <controller type='pci' index='0' model='pcie-root'><alias name='pcie.0'/></controller>
    <controller type='pci' index='1' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='1' port='0x8'/><alias name='pci.1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0' multifunction='on'/></controller>
    <controller type='pci' index='2' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='2' port='0x9'/><alias name='pci.2'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x1'/></controller>
    <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></hostdev>
  </devices></domain>`

func TestFreeRootPort(t *testing.T) {
	if p, err := freeRootPort(q35XML); err != nil || p != 2 {
		t.Errorf("freeRootPort(q35) = %d, %v; want 2 (port 1 holds a device; a hostdev's host address does not count)", p, err)
	}
	full := strings.Replace(q35XML, "</devices>", "<shmem name='x'><address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></shmem></devices>", 1)
	if p, err := freeRootPort(full); err != nil || p != -1 {
		t.Errorf("freeRootPort(no free port) = %d, %v; want -1", p, err)
	}
	if p, err := freeRootPort(liveXML); err != nil || p != -1 {
		t.Errorf("freeRootPort(pc) = %d, %v; want -1", p, err)
	}
}
