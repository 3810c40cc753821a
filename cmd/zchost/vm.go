package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/agent"
	"github.com/zcfabric/zc/host/qmp"
	"github.com/zcfabric/zc/host/vmm"
)

func init() {
	register("attach", "hot-plug a running cluster's region into a VM (QMP or libvirt)", attachCmd)
	register("detach", "unplug a cluster's region from a VM (QMP or libvirt)", detachCmd)
}

// attachment is what attach prints and detach reads back: the QEMU ids of
// one hot-plugged region.
type attachment struct {
	Cluster uint32 `json:"cluster,omitempty"`
	VM      string `json:"vm"`
	MemID   string `json:"mem"`
	DevID   string `json:"dev"`
	Chardev string `json:"chardev,omitempty"` // an ivshmem-doorbell's
	Bus     string `json:"bus,omitempty"`
	Path    string `json:"path"`
	Size    uint64 `json:"size"`
}

func toAttachment(cluster uint32, vm string, a qmp.Attachment) attachment {
	return attachment{Cluster: cluster, VM: vm, MemID: a.MemID, DevID: a.DevID, Chardev: a.ChardevID, Bus: a.Bus, Path: a.Path, Size: a.Size}
}

// vmFlags are the flags attach and detach share.
type vmFlags struct {
	control *string
	queues  queueList
	qmp     string
	cluster int64
	timeout time.Duration
}

func (f *vmFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&f.qmp, "qmp", "", "the `VM`: "+vmm.Help)
	for _, n := range []string{"c", "cluster"} {
		fs.Int64Var(&f.cluster, n, -1, "cluster `id`")
	}
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	f.control = fs.String("control", defaultControl(), "a running zchost daemon's control `socket`: when the daemon runs the cluster, it does\n"+
		"the attach or detach (its own region for the VM, kept across its restarts); otherwise it is done here")
}

// daemonRuns reports whether the daemon at f.control runs f.cluster (no
// daemon there: false).
func (f *vmFlags) daemonRuns() bool {
	st, err := ask(*f.control, controlRequest{Op: "status"}, 5*time.Second)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(st.Clusters, func(c agent.State) bool { return int64(c.Cluster) == f.cluster })
}

// viaDaemon asks the daemon at f.control to attach or detach (op), which
// runs f.cluster (daemonRuns).
func (f *vmFlags) viaDaemon(op string) error {
	rep, err := ask(*f.control, controlRequest{Op: op, Cluster: uint32(f.cluster), VM: f.qmp, Queues: f.queues}, f.timeout+noticeWait)
	if err != nil {
		return err
	}
	fmt.Println(rep.Changes, "(by the zchost daemon)")
	return nil
}

// noticeWait is the time a daemon may take beyond the plug itself (an
// unplug notice to the guest first).
const noticeWait = 20 * time.Second

// queueList is a flag of comma-separated queue numbers.
type queueList []int

func (q *queueList) String() string { return fmt.Sprint([]int(*q)) }
func (q *queueList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return fmt.Errorf("queue %q", f)
		}
		*q = append(*q, n)
	}
	return nil
}

func attachCmd(args []string) error {
	fs := newFlags("attach", "--qmp PATH|libvirt:DOMAIN[@SOCKET|URI] -c ID [--queues Q,Q..] [--bus ROOTPORT]")
	var f vmFlags
	f.add(fs)
	fs.Var(&f.queues, "queues", "the `Q,Q..` the VM reads (default all): the daemon that runs the cluster gives the VM a region\n"+
		"of its own with these; without a daemon the VM maps the cluster's whole region, and this is refused")
	bus := fs.String("bus", "", "plug behind this bus `id` (default: the default bus on pc, a free pcie-root-port on q35; QMP only;\n"+
		"not with a daemon, which picks the bus)")
	if err := parseAll(fs, args); err != nil {
		return err
	}
	if f.qmp == "" || f.cluster < 0 {
		return fmt.Errorf("%w: need --qmp PATH|libvirt:DOMAIN and -c ID", errUsage)
	}
	if f.cluster > math.MaxUint32 {
		return fmt.Errorf("%w: -c %d: cluster ids are 0..%d", errUsage, f.cluster, uint32(math.MaxUint32))
	}
	if f.daemonRuns() {
		if *bus != "" {
			return fmt.Errorf("%w: --bus: the zchost daemon at %s runs cluster %d and picks the bus itself", errUsage, *f.control, f.cluster)
		}
		return f.viaDaemon("attach")
	}
	if len(f.queues) > 0 {
		return fmt.Errorf("%w: --queues: no zchost daemon at %s runs cluster %d; without one the VM maps the cluster's whole region (all its queues)", errUsage, *f.control, f.cluster)
	}
	id := uint32(f.cluster)
	info, err := zc.Inspect(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	vm, err := vmm.Dial(ctx, f.qmp)
	if err != nil {
		return fmt.Errorf("attach cluster %d: %w", id, err)
	}
	defer vm.Close()
	a, err := vm.Attach(ctx, info.File, info.Size, fmt.Sprintf("c%d", id), *bus)
	if err != nil {
		return fmt.Errorf("attach cluster %d: %w", id, err)
	}
	return json.NewEncoder(os.Stdout).Encode(toAttachment(id, f.qmp, a))
}

func detachCmd(args []string) error {
	fs := newFlags("detach", "--qmp PATH|libvirt:DOMAIN[@SOCKET|URI] (-c ID | --dev ID [--mem ID])")
	var f vmFlags
	f.add(fs)
	dev := fs.String("dev", "", "the ivshmem-plain or ivshmem-doorbell device `id` to unplug (as attach printed it; for libvirt the device alias)")
	mem := fs.String("mem", "", "its memory-backend `id` (default: read from the device; libvirt removes its own)")
	if err := parseAll(fs, args); err != nil {
		return err
	}
	if f.qmp == "" || (f.cluster < 0) == (*dev == "") {
		return fmt.Errorf("%w: need --qmp PATH|libvirt:DOMAIN and either -c ID or --dev ID", errUsage)
	}
	if f.cluster > math.MaxUint32 {
		return fmt.Errorf("%w: -c %d: cluster ids are 0..%d", errUsage, f.cluster, uint32(math.MaxUint32))
	}
	if *dev == "" && f.daemonRuns() {
		return f.viaDaemon("detach")
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	vm, err := vmm.Dial(ctx, f.qmp)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer vm.Close()

	var todo []qmp.Attachment
	if *dev != "" && *mem != "" {
		todo = append(todo, qmp.Attachment{DevID: *dev, MemID: *mem})
	} else {
		regions, err := vm.Regions(ctx)
		if err != nil {
			return fmt.Errorf("detach: %w", err)
		}
		files := clusterFiles(f.cluster)
		for _, r := range regions {
			// A memfd region goes to QEMU by fd (mem-path /proc/self/fd/N):
			// known by the ids attach gave it.
			byID := strings.HasPrefix(r.MemID, fmt.Sprintf("zcmem-c%d-", f.cluster))
			if r.DevID == *dev || (*dev == "" && (files[r.Path] || byID || isVMRegion(f.cluster, r.Path))) {
				todo = append(todo, r)
			}
		}
		if len(todo) == 0 {
			if *dev != "" {
				return fmt.Errorf("detach device %s: %w", *dev, qmp.ErrDeviceNotFound)
			}
			return fmt.Errorf("detach cluster %d: no ivshmem device in vm %s uses its region: %w", f.cluster, f.qmp, zc.ErrNotFound)
		}
	}
	enc := json.NewEncoder(os.Stdout)
	var errs []error
	for _, a := range todo {
		if err := vm.Detach(ctx, a); err != nil {
			errs = append(errs, err)
			continue
		}
		c := uint32(0)
		if f.cluster >= 0 {
			c = uint32(f.cluster)
		}
		if err := enc.Encode(toAttachment(c, f.qmp, a)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// clusterFiles returns the paths a VM's memory backend may name for
// cluster id's region: the live cluster's backing file, and its region
// name with the symlink resolved (when the cluster is gone already).
func clusterFiles(id int64) map[string]bool {
	files := map[string]bool{}
	p := zc.RegionPath(uint32(id))
	files[p] = true
	if real, err := filepath.EvalSymlinks(p); err == nil {
		files[real] = true
	}
	if info, err := zc.Inspect(uint32(id)); err == nil {
		files[info.File] = true
		files[info.Path] = true
	}
	return files
}

// isVMRegion reports whether path is one of cluster id's per-VM regions
// (zc.VMRegionPath).
func isVMRegion(id int64, path string) bool {
	_, ok := zc.IsVMRegionPath(uint32(id), path)
	return ok
}
