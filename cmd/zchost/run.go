package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
	"github.com/zcfabric/zc/host/agent"
)

func init() {
	register("run", "create a cluster, capture or generate into it, balance over its queues, export them", runCmd)
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type runOpts struct {
	cluster       clusterID
	in            multiFlag
	vms           multiFlag
	queues        int
	hash          string
	queueLen      int
	buffers       int
	bufferSize    int
	queueBuffers  int
	lossless      bool
	backing       string
	hugeDir       string
	interval      time.Duration
	keep          bool
	waitConsumers time.Duration
	shared        bool
	ctl           bool
	cpuprofile    string
	drainTimeout  time.Duration
	vmRecover     time.Duration
	doorbell      bool
	group         string
	bpf           string
	log           logFlags
}

func runFlags(o *runOpts) *flag.FlagSet {
	fs := newFlags("run", "-c ID [-i SOURCE ...] [-n QUEUES] [-m HASH] [--lossless] [--vm QMP.sock|libvirt:DOMAIN ...]")
	o.cluster = 99
	for _, n := range []string{"c", "cluster"} {
		fs.Var(&o.cluster, n, "cluster `id` consumers attach to as zc:ID@QUEUE")
	}
	for _, n := range []string{"i", "in"} {
		fs.Var(&o.in, n, "packet `source`, repeatable; an interface name alone is zc:IF. None: create the cluster\n"+
			"and wait (queues fed by producers that attach, e.g. zsend -o zc:ID@Q).\n"+host.SourceUsage())
	}
	for _, n := range []string{"n", "queues"} {
		fs.IntVar(&o.queues, n, 1, "number of egress `queues`")
	}
	for _, n := range []string{"m", "hash"} {
		fs.StringVar(&o.hash, n, "0", "balancing `mode`, a number or a name:\n"+zc.HashModeUsage())
	}
	for _, n := range []string{"q", "queue-len"} {
		fs.IntVar(&o.queueLen, n, 4096, "queue capacity in `packets` (a power of two)")
	}
	for _, n := range []string{"b", "buffers"} {
		fs.IntVar(&o.buffers, n, 0, "engine pool `buffers` (default: queues*queue-len+1024, plus the fill ring of each AF_XDP socket: 4096 each unless ?ring=N)")
	}
	fs.IntVar(&o.bufferSize, "buffer-size", 2048, "buffer size in `bytes` (a power of two; 2048 or 4096 for AF_XDP)")
	fs.IntVar(&o.queueBuffers, "queue-buffers", 0, "buffers each queue owns for an outside `producer` (zsend -o, a guest)")
	fs.BoolVar(&o.lossless, "lossless", false, "back-pressure: wait for room instead of dropping when a queue is full")
	fs.StringVar(&o.backing, "backing", "auto", "region memory: auto (hugetlbfs if mounted with free pages, else /dev/shm), shm, hugetlbfs, memfd")
	fs.StringVar(&o.group, "group", "", "let this `group` (name or id) open the cluster's region file too (mode 0660; default 0600:\n"+
		"only zchost's user, and QEMU's user for a VM's region, may open it)")
	fs.StringVar(&o.hugeDir, "hugetlbfs", "", "hugetlbfs mount `dir` (default: found in /proc/mounts)")
	fs.Var(&o.vms, "vm", "hot-plug into the running `VM[=Q,Q..]` (repeatable): its QMP socket path, or libvirt:DOMAIN[@SOCKET|URI]\n"+
		"for a libvirt domain (a <shmem> device; regions in /dev/shm, no --ctl). By default each VM\n"+
		"gets a region of its own (its own trust domain) holding the listed queues (all if none), filled by one\n"+
		"counted copy; the guest opens them by the same names, zc:ID@Q. With --shared, or with no -i sources\n"+
		"(queues fed by producers in the VMs), the VM maps the cluster's own region: zero copy, trusted guests")
	fs.BoolVar(&o.ctl, "ctl", false, "offer the regions over each VM's zc.ctl control channel (virtio-serial; hot-plugged when the VM\n"+
		"has none) and plug them when the guest asks (zcguest ctl plug) instead of at start. Without it a zc.ctl\n"+
		"port the VM has is served too. Either way the guest gets an unplug-notice before an unplug")
	fs.DurationVar(&o.vmRecover, "vm-recover", 10*time.Second, "a VM whose region fails (its guest broke a ring, or the region file was truncated) keeps\n"+
		"its packets dropped and counted; after this `long` it gets a fresh region, plugged in place of the\n"+
		"broken device (offered again with --ctl). Each further failure doubles the wait, up to 10m. 0: never")
	fs.BoolVar(&o.doorbell, "doorbell", false, "plug each VM's region as an ivshmem-doorbell device that zchost serves, so idle guest readers and\n"+
		"writers sleep on an interrupt instead of polling, whoever feeds or reads them on the host (zchost rings them,\n"+
		"and watches the queues of other host processes for them), and host processes reading a guest's queue sleep\n"+
		"too, woken through the guest's doorbell (QMP VMs, and libvirt domains as a doorbell <shmem>;\n"+
		"the guest needs a q35 machine with an intel-iommu with intremap=on (libvirt: <iommu model='intel'> with\n"+
		"<driver intremap='on'/> and <ioapic driver='qemu'/>) and the vfio-pci module: QEMU's doorbell interrupts\n"+
		"only through MSI-X; other guests poll, and say so)")
	fs.BoolVar(&o.shared, "shared", false, "put every VM on the cluster's own region (zero copy; only for guests you trust)")
	fs.DurationVar(&o.interval, "stats-interval", time.Second, "print source and queue counters this often (0: never)")
	fs.DurationVar(&o.waitConsumers, "wait-consumers", 0, "before the sources start, wait up to this `long` for every queue to have a consumer attached")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a Go CPU profile of the run to `file` (go tool pprof)")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", agent.DefaultDrainTimeout, "after the sources end, give up waiting for consumers that read nothing for this `long`\n"+
		"(0: wait as long as they keep packets queued, until interrupted)")
	fs.BoolVar(&o.keep, "keep", false, "keep the cluster after the sources end, until interrupted")
	fs.StringVar(&o.bpf, "bpf", "", "classic BPF `program` applied to every source (tcpdump -ddd output)")
	o.log.add(fs)
	return fs
}

func runCmd(args []string) error {
	var o runOpts
	fs := runFlags(&o)
	if err := parseAll(fs, args); err != nil {
		return err
	}
	cfg, err := o.config()
	if err != nil {
		return err
	}
	if idle := o.noEffect(fs); len(idle) > 0 {
		cfg.Log.Warn("flags with no effect in this run", "flags", idle)
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := agent.New(ctx, cfg)
	if err != nil {
		if errors.Is(err, agent.ErrConfig) {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}

// config turns the flags into the agent's configuration.
func (o *runOpts) config() (agent.Config, error) {
	mode, ok := zc.ParseHashMode(o.hash)
	if !ok {
		return agent.Config{}, fmt.Errorf("%w: -m %q: want %s", errUsage, o.hash, zc.HashModeNames())
	}
	backing, err := ivshmemBacking(o.backing)
	if err != nil {
		return agent.Config{}, fmt.Errorf("%w: --backing: %v", errUsage, err)
	}
	if o.queues < 1 {
		return agent.Config{}, fmt.Errorf("%w: -n %d: need at least one queue", errUsage, o.queues)
	}
	if err := cmp.Or(negative("-q", o.queueLen), negative("-b", o.buffers), negative("--buffer-size", o.bufferSize),
		negative("--queue-buffers", o.queueBuffers), negative("--drain-timeout", o.drainTimeout),
		negative("--wait-consumers", o.waitConsumers), negative("--vm-recover", o.vmRecover),
		negative("--stats-interval", o.interval)); err != nil {
		return agent.Config{}, err
	}
	if o.group != "" && backing == zc.BackingMemfd {
		return agent.Config{}, fmt.Errorf("%w: --group %s: a memfd region has no file mode to share (other processes reach it as zchost's user or root only); use --backing shm or hugetlbfs", errUsage, o.group)
	}
	drain := o.drainTimeout
	if drain == 0 {
		drain = -1 // no bound
	}
	cfg := agent.Config{
		ID: uint32(o.cluster), Queues: o.queues, QueueLen: o.queueLen, Buffers: o.buffers, BufferSize: o.bufferSize,
		QueueBuffers: o.queueBuffers, Backing: backing, HugetlbDir: o.hugeDir, Group: o.group,
		Sources: o.in, BPF: o.bpf, Mode: mode, Lossless: o.lossless,
		Shared: o.shared, Ctl: o.ctl, Doorbell: o.doorbell, VMRecover: o.vmRecover,
		DrainTimeout: drain, WaitConsumers: o.waitConsumers, StatsInterval: o.interval, Keep: o.keep,
		Log: o.log.logger("zchost"),
	}
	for _, s := range o.vms {
		e, err := agent.ParseExport(s, o.queues)
		if err != nil {
			return agent.Config{}, fmt.Errorf("%w: --vm: %v", errUsage, err)
		}
		cfg.Exports = append(cfg.Exports, e)
	}
	return cfg, nil
}

// noEffect names the flags given that do nothing in this run: those of
// the balancer without -i sources (the queues are fed by producers that
// attach), those of VM exports without --vm.
func (o *runOpts) noEffect(fs *flag.FlagSet) []string {
	var idle []string
	fs.Visit(func(f *flag.Flag) {
		name := "--" + f.Name
		if len(f.Name) == 1 {
			name = "-" + f.Name
		}
		switch f.Name {
		case "m", "hash", "lossless", "wait-consumers", "drain-timeout", "bpf":
			if len(o.in) == 0 {
				idle = append(idle, name+" (no -i source)")
			}
		case "ctl", "doorbell", "shared", "vm-recover":
			if len(o.vms) == 0 {
				idle = append(idle, name+" (no --vm)")
			}
		}
	})
	return idle
}

func ivshmemBacking(s string) (zc.Backing, error) {
	switch s {
	case "", "auto":
		return zc.BackingAuto, nil
	case "shm":
		return zc.BackingShm, nil
	case "huge", "hugetlb", "hugetlbfs":
		return zc.BackingHugetlb, nil
	case "memfd":
		return zc.BackingMemfd, nil
	}
	return 0, errors.New("want auto, shm, hugetlbfs or memfd")
}
