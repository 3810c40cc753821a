package vmtest

import (
	"fmt"
	"time"
)

// config is what Start boots; Options change it.
type config struct {
	machine   string
	memory    string
	rootPorts int
	portRes   string
	script    string
	binaries  map[string]string // name in /bin → Go package
	modules   []string
	ctlName   string
	cmdline   []string
	timeout   time.Duration
	name      string
	extraQEMU []string
	files     map[string]string // path in the guest → host file (HostFile)
}

// Option configures [Start].
type Option func(*config)

// Machine picks the QEMU machine type: "pc" (default, i440fx) or "q35".
func Machine(m string) Option { return func(c *config) { c.machine = m } }

// Memory sets guest RAM in QEMU's syntax (default "256M").
func Memory(m string) Option { return func(c *config) { c.memory = m } }

// RootPorts adds n pcie-root-ports with ids zcrp1..zcrpN (slots 1..n), each
// reserving a 64-bit prefetchable window of reserve (QEMU size syntax, e.g.
// "64M") for hot-plugged regions. On q35 the default is one port with 64M;
// RootPorts(0, "") boots without any. Ignored on pc.
func RootPorts(n int, reserve string) Option {
	return func(c *config) { c.rootPorts, c.portRes = n, reserve }
}

// Script sets the shell commands the guest's /init runs after boot (busybox
// sh, PATH=/bin). Its exit status is printed as "ZCEXIT <status>", then the
// guest powers off.
func Script(s string) Option { return func(c *config) { c.script = s } }

// GoBinary adds the Go package pkg, built statically (see [BuildGo]), to the
// guest as /bin/name.
func GoBinary(name, pkg string) Option {
	return func(c *config) { c.binaries[name] = pkg }
}

// Modules loads the named kernel modules (without .ko) in the guest, in
// order, before the script runs.
func Modules(names ...string) Option {
	return func(c *config) { c.modules = append(c.modules, names...) }
}

// VirtioSerial adds a virtio-serial controller and a port named name (e.g.
// "zc.ctl") backed by a unix socket at [VM.CtlPath], and loads
// [VirtioConsoleModules] in the guest.
func VirtioSerial(name string) Option {
	return func(c *config) {
		c.ctlName = name
		c.modules = append(c.modules, VirtioConsoleModules...)
	}
}

// KernelArgs appends to the kernel command line.
func KernelArgs(args ...string) Option {
	return func(c *config) { c.cmdline = append(c.cmdline, args...) }
}

// QEMUArgs appends raw arguments to QEMU's command line.
func QEMUArgs(args ...string) Option {
	return func(c *config) { c.extraQEMU = append(c.extraQEMU, args...) }
}

// Timeout bounds the VM's life (default 2 minutes): the VM is killed when
// it runs longer, and pending expectations fail.
func Timeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// Name sets the prefix of the VM's log lines (default: the machine type).
func Name(n string) Option { return func(c *config) { c.name = n } }

func defaultConfig() *config {
	return &config{
		machine:   "pc",
		memory:    "256M",
		binaries:  map[string]string{},
		timeout:   2 * time.Minute,
		rootPorts: -1,
	}
}

// qemuArgs returns QEMU's command line, less the binary.
func (c *config) qemuArgs(accel, cpu, kernel, initrd, qmp, ctl string) []string {
	args := []string{
		"-accel", accel, "-cpu", cpu,
		"-machine", c.machine, "-m", c.memory, "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-nic", "none",
		"-kernel", kernel, "-initrd", initrd,
		"-append", c.kernelCmdline(),
		"-qmp", "unix:" + qmp + ",server=on,wait=off",
	}
	if c.machine == "q35" {
		n, res := c.rootPorts, c.portRes
		if n < 0 {
			n, res = 1, "64M"
		}
		for i := 1; i <= n; i++ {
			args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=zcrp%d,slot=%d,pref64-reserve=%s", i, i, res))
		}
	}
	if c.ctlName != "" {
		args = append(args,
			"-device", "virtio-serial-pci",
			"-chardev", "socket,path="+ctl+",server=on,wait=off,id=zcctl",
			"-device", "virtserialport,chardev=zcctl,name="+c.ctlName)
	}
	return append(args, c.extraQEMU...)
}

func (c *config) kernelCmdline() string {
	s := "console=ttyS0 quiet panic=-1"
	for _, a := range c.cmdline {
		s += " " + a
	}
	return s
}
