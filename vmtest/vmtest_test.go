package vmtest

import (
	"bytes"
	"compress/gzip"
	"io"
	"strings"
	"testing"
)

func TestQEMUArgs(t *testing.T) {
	c := defaultConfig()
	Machine("q35")(c)
	VirtioSerial("zc.ctl")(c)
	args := strings.Join(c.qemuArgs("tcg", "max", "K", "I", "/q.sock", "/c.sock"), " ")
	for _, want := range []string{
		"-accel tcg -cpu max -machine q35 -m 256M -smp 1",
		"-no-reboot", "-nic none", "-kernel K -initrd I",
		"-qmp unix:/q.sock,server=on,wait=off",
		"-device pcie-root-port,id=zcrp1,slot=1,pref64-reserve=64M",
		"-chardev socket,path=/c.sock,server=on,wait=off,id=zcctl -device virtserialport,chardev=zcctl,name=zc.ctl",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("QEMU args lack %q:\n%s", want, args)
		}
	}
	RootPorts(0, "")(c)
	if args := strings.Join(c.qemuArgs("tcg", "max", "K", "I", "/q", "/c"), " "); strings.Contains(args, "pcie-root-port") {
		t.Errorf("RootPorts(0) still adds root ports: %s", args)
	}
	if got := strings.Join(c.modules, " "); got != strings.Join(VirtioConsoleModules, " ") {
		t.Errorf("VirtioSerial modules %q, want %q", got, VirtioConsoleModules)
	}
}

// TestInitramfs reads the archive back: the gzip'ed newc headers must be
// well formed, 4-byte aligned, and carry /init, busybox and /dev/console.
func TestInitramfs(t *testing.T) {
	r := &initramfs{busybox: []byte("BB"), binaries: map[string][]byte{"zcguest": []byte("GO!")}, script: "echo hi"}
	img, err := r.build()
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		mode       uint64
		data       string
		rmaj, rmin uint64
	}
	got := map[string]entry{}
	for off := 0; ; {
		if !bytes.HasPrefix(raw[off:], []byte("070701")) {
			t.Fatalf("bad magic at offset %d", off)
		}
		field := func(i int) uint64 {
			var v uint64
			for _, c := range raw[off+6+8*i : off+14+8*i] {
				v = v*16 + uint64(strings.IndexByte("0123456789ABCDEF", c))
			}
			return v
		}
		size, nameLen := int(field(6)), int(field(11))
		e := entry{mode: field(1), rmaj: field(9), rmin: field(10)}
		name := string(raw[off+110 : off+110+nameLen-1])
		off = (off + 110 + nameLen + 3) &^ 3
		e.data = string(raw[off : off+size])
		off = (off + size + 3) &^ 3
		if name == "TRAILER!!!" {
			break
		}
		got[name] = e
	}
	if e := got["init"]; e.mode != 0o100755 || !strings.HasPrefix(e.data, "#!/bin/busybox sh\n") || !strings.Contains(e.data, "\necho hi\n") || !strings.Contains(e.data, "poweroff -f") {
		t.Errorf("/init = %+v", e)
	}
	if e := got["bin/busybox"]; e.data != "BB" || got["bin/zcguest"].data != "GO!" {
		t.Errorf("binaries: busybox %q, zcguest %q", e.data, got["bin/zcguest"].data)
	}
	if e := got["dev/console"]; e.mode != 0o020600 || e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("dev/console = %+v, want char device 5:1", e)
	}
}

func TestFormatResult(t *testing.T) {
	s, err := FormatResult(map[string]int{"n": 3})
	if err != nil || s != `ZCRESULT {"n":3}` {
		t.Errorf("FormatResult = %q, %v", s, err)
	}
}
