package agentconf

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host"
	"github.com/zcfabric/zc/host/libvirt"
	"github.com/zcfabric/zc/ivshmem"
)

// maxSocketPath is the longest path a unix socket can bind (sun_path is
// 108 bytes with the terminating NUL).
const maxSocketPath = 107

// checker collects the mistakes of one file; the earliest by line is the
// one reported.
type checker struct {
	name  string
	ix    *index
	first *Error
	n     int // mistakes found so far
}

func (c *checker) fail(path string, kind error, format string, args ...any) {
	c.n++
	e := &Error{File: c.name, Line: c.ix.line(path), Key: path, Err: kindErrorf(kind, format, args...)}
	if c.first == nil || e.Line < c.first.Line {
		c.first = e
	}
}

func convert(name string, ix *index, raw *rawFile) (*File, error) {
	c := &checker{name: name, ix: ix}
	f := &File{name: name, lines: map[string]int{}, StateDir: DefaultStateDir, Metrics: raw.Metrics,
		KeepPlugged: raw.KeepPlugged, LogLevel: hclog.Info}
	for _, e := range ix.entries {
		f.lines[e.path] = e.line
	}
	if raw.StateDir != nil {
		f.StateDir = *raw.StateDir
		c.absPath("state_dir", f.StateDir)
	}
	f.Control = filepath.Join(f.StateDir, DefaultControl)
	if raw.Control != nil {
		f.Control = *raw.Control
		c.absPath("control", f.Control)
	}
	if len(f.Control) > maxSocketPath {
		c.fail("control", ErrValue, "%q: %d bytes, longer than a unix socket path can be (%d)", f.Control, len(f.Control), maxSocketPath)
	}
	if f.Metrics != "" {
		host, port, err := net.SplitHostPort(f.Metrics)
		if err != nil {
			c.fail("metrics", ErrValue, "%q: want host:port (\"127.0.0.1:9477\", \":9477\"): %v", f.Metrics, err)
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			c.fail("metrics", ErrValue, "%q: port %q: want 1..65535", f.Metrics, port)
		} else if strings.ContainsAny(host, " /") {
			c.fail("metrics", ErrValue, "%q: host %q is not a host name or address", f.Metrics, host)
		}
	}
	if raw.LogLevel != nil {
		switch l := strings.ToLower(*raw.LogLevel); l {
		case "trace", "debug", "info", "warn", "error", "off":
			f.LogLevel = hclog.LevelFromString(l)
		default:
			c.fail("log_level", ErrValue, "%q: want trace, debug, info, warn, error or off", *raw.LogLevel)
		}
	}
	ids := map[uint32]string{}
	for i := range raw.Cluster {
		p := "cluster[" + strconv.Itoa(i) + "]"
		cl := c.cluster(p, &raw.Cluster[i])
		if raw.Cluster[i].ID != nil {
			if prev, dup := ids[cl.ID]; dup {
				c.fail(p+".id", ErrValue, "cluster %d is also defined at %s:%d (%s)", cl.ID, name, ix.line(prev), prev)
			} else {
				ids[cl.ID] = p + ".id"
			}
		}
		f.Clusters = append(f.Clusters, cl)
	}
	if c.first != nil {
		return nil, c.first
	}
	return f, nil
}

func (c *checker) absPath(key, v string) {
	if v == "" || !filepath.IsAbs(v) {
		c.fail(key, ErrValue, "%q: want an absolute path", v)
	}
}

// intIn checks an integer key's range; what describes the range.
func (c *checker) intIn(key string, v, lo, hi int64, what string) int {
	if v < lo || v > hi {
		c.fail(key, ErrValue, "%d: want %s", v, what)
		return int(lo)
	}
	return int(v)
}

func (c *checker) pow2(key string, v, lo, hi int64, unit string) int {
	if v < lo || v > hi || v&(v-1) != 0 {
		c.fail(key, ErrValue, "%d: want a power of two from %d to %d (%s)", v, lo, hi, unit)
		return int(lo)
	}
	return int(v)
}

func (c *checker) cluster(p string, r *rawCluster) Cluster {
	cl := Cluster{Queues: 1, QueueLen: DefaultQueueLen, BufferSize: DefaultBufferSize, VMRecover: DefaultVMRecover,
		Lossless: r.Lossless, Hugetlbfs: r.Hugetlbfs, Group: r.Group, Shared: r.Shared, Ctl: r.Ctl,
		Doorbell: r.Doorbell, BPF: r.BPF}
	before := c.n
	if r.ID == nil {
		c.fail(p+".id", ErrValue, "missing: every cluster needs an id (consumers attach as zc:ID@QUEUE)")
	} else {
		cl.ID = uint32(c.intIn(p+".id", *r.ID, 0, 1<<32-1, "0..4294967295"))
	}
	if r.Queues != nil {
		cl.Queues = c.intIn(p+".queues", *r.Queues, 1, ivshmem.MaxQueues, fmt.Sprintf("1..%d", ivshmem.MaxQueues))
	}
	switch m := r.Mode.(type) {
	case nil:
	case string:
		if mode, ok := zc.ParseHashMode(m); ok {
			cl.Mode = mode
		} else {
			c.fail(p+".mode", ErrValue, "%q: want %s", m, zc.HashModeNames())
		}
	case int64:
		if mode, ok := zc.ParseHashMode(strconv.FormatInt(m, 10)); ok {
			cl.Mode = mode
		} else {
			c.fail(p+".mode", ErrValue, "%d: want %s", m, zc.HashModeNames())
		}
	default:
		kind := "a table"
		if e, ok := c.ix.get(p + ".mode"); ok {
			kind = kindName(e.kind)
		}
		c.fail(p+".mode", ErrType, "want a mode name or 0..4, not %s", kind)
	}
	for i, s := range r.Sources {
		if err := checkSource(s); err != nil {
			c.fail(p+".sources["+strconv.Itoa(i)+"]", ErrValue, "%v", err)
		}
	}
	if len(r.Sources) > 0 {
		cl.Sources = slices.Clone(r.Sources)
	}
	if r.QueueLen != nil {
		cl.QueueLen = c.pow2(p+".queue_len", *r.QueueLen, 2, ivshmem.MaxSlots, "packets")
	}
	if r.BufferSize != nil {
		cl.BufferSize = c.pow2(p+".buffer_size", *r.BufferSize, ivshmem.MinBufSize, ivshmem.MaxBufSize, "bytes")
	}
	cl.Buffers = c.intIn(p+".buffers", r.Buffers, 0, ivshmem.MaxBuffers, fmt.Sprintf("0 (computed) or up to %d", ivshmem.MaxBuffers))
	cl.QueueBuffers = c.intIn(p+".queue_buffers", r.QueueBuffers, 0, ivshmem.MaxBuffers, fmt.Sprintf("0..%d", ivshmem.MaxBuffers))
	if b, err := ivshmem.ParseBacking(r.Backing); err != nil {
		c.fail(p+".backing", ErrValue, "%q: want auto, shm, hugetlbfs or memfd", r.Backing)
	} else {
		cl.Backing = b
	}
	if cl.Hugetlbfs != "" {
		c.absPath(p+".hugetlbfs", cl.Hugetlbfs)
	}
	if strings.TrimSpace(cl.BPF) != "" {
		if _, err := host.ParseFilter(cl.BPF); err != nil {
			c.fail(p+".bpf", ErrValue, "%v", err)
		}
	}
	if r.VMRecover != nil {
		d, err := time.ParseDuration(*r.VMRecover)
		switch {
		case err != nil:
			c.fail(p+".vm_recover", ErrValue, "%q: want a duration such as \"10s\" or \"2m\" (\"0\": never)", *r.VMRecover)
		case d < 0:
			c.fail(p+".vm_recover", ErrValue, "%q: want a duration >= 0", *r.VMRecover)
		default:
			cl.VMRecover = d
		}
	}
	if c.n == before {
		// The region must fit the format's limits; checked once the
		// sizes themselves are right.
		if _, err := cl.plan(); err != nil {
			key := p
			for _, k := range []string{"buffers", "queue_buffers", "queue_len", "queues", "buffer_size"} {
				if c.ix.has(p + "." + k) {
					key = p + "." + k
					break
				}
			}
			c.fail(key, ErrValue, "%v", err)
		}
	}
	c.exports(p, r, &cl)
	return cl
}

// exports checks a cluster's exports: their VM names, their queues, and
// that no queue goes to two VMs of a cluster whose VMs get regions of
// their own.
func (c *checker) exports(p string, r *rawCluster, cl *Cluster) {
	vms := map[string]string{}
	owner := map[int]string{}
	exclusive := !cl.SharesRegion()
	for i, re := range r.Export {
		ep := p + ".export[" + strconv.Itoa(i) + "]"
		ex := Export{VM: re.VM}
		switch {
		case !c.ix.has(ep + ".vm"):
			c.fail(ep+".vm", ErrValue, "missing: every export names a VM (a QMP socket path or \"libvirt:DOMAIN\")")
		case libvirt.IsSpec(re.VM):
			if _, err := libvirt.ParseSpec(re.VM); err != nil {
				c.fail(ep+".vm", ErrValue, "%v", err)
			} else if cl.Ctl {
				c.fail(ep+".vm", ErrValue, "%q: ctl = true is not supported for libvirt domains (the zc.ctl port is managed over QMP)", re.VM)
			}
		default:
			c.absPath(ep+".vm", re.VM)
		}
		if prev, dup := vms[re.VM]; dup && re.VM != "" {
			c.fail(ep+".vm", ErrValue, "%q is also exported at line %d (%s): list all its queues in one export", re.VM, c.ix.line(prev), prev)
		} else {
			vms[re.VM] = ep + ".vm"
		}
		if c.ix.has(ep + ".queues") {
			if len(re.Queues) == 0 {
				c.fail(ep+".queues", ErrValue, "empty: list the VM's queues, or leave the key out for all of them")
			}
			seen := map[int64]bool{}
			for _, q := range re.Queues {
				if q < 0 || q >= int64(cl.Queues) {
					c.fail(ep+".queues", ErrValue, "queue %d out of range: cluster %d has %d queue(s), 0..%d", q, cl.ID, cl.Queues, cl.Queues-1)
					continue
				}
				if seen[q] {
					c.fail(ep+".queues", ErrValue, "queue %d listed twice", q)
					continue
				}
				seen[q] = true
				ex.Queues = append(ex.Queues, int(q))
			}
			slices.Sort(ex.Queues)
		} else {
			for q := range cl.Queues {
				ex.Queues = append(ex.Queues, q)
			}
		}
		for _, q := range ex.Queues {
			if prev, ok := owner[q]; ok && exclusive {
				c.fail(ep+".queues", ErrValue, "queue %d is also exported to %q: each VM has a region of its own, so a queue goes to one VM (split the queues, or set shared = true)",
					q, prev)
				break
			}
			owner[q] = re.VM
		}
		cl.Exports = append(cl.Exports, ex)
	}
}

// checkSource checks a source spec's syntax without opening anything:
// gen: options fully, afxdp:, zc: and bare interface names their
// interface list and options (as host.RingBuffers parses them), the others
// their kind and a non-empty rest.
func checkSource(spec string) error {
	if strings.TrimSpace(spec) == "" {
		return fmt.Errorf("empty source")
	}
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		kind, rest = "zc", spec
	}
	if rest == "" {
		return fmt.Errorf("%q: nothing after %q", spec, kind+":")
	}
	switch kind {
	case "gen":
		if _, err := host.ParseGen(rest); err != nil {
			return fmt.Errorf("%q: %w", spec, err)
		}
	case "afxdp", "zc":
		if _, err := host.RingBuffers(spec); err != nil {
			return err
		}
	case "afpacket":
		if strings.ContainsAny(rest, "?@") {
			return fmt.Errorf("%q: afpacket: takes an interface list only (no @queue, no options)", spec)
		}
	case "pcap":
	default:
		return fmt.Errorf("%q: unknown kind %q (want gen:, pcap:, afxdp:, afpacket:, zc: or an interface name)", spec, kind)
	}
	return nil
}

// SharesRegion reports whether the cluster's VMs map the cluster's own
// region (zero copy, one trust domain) rather than each getting a region
// of its own: shared = true, or no sources (the queues are fed by
// producers, which may be in the VMs). As in `zchost run`.
func (cl *Cluster) SharesRegion() bool {
	return cl.Shared || len(cl.Sources) == 0
}

// PoolBuffers returns the engine pool's size: Buffers, or when 0 what
// `zchost run` computes: room for every queue to be full, 1024 in flight,
// and the fill ring of each AF_XDP socket the sources open.
func (cl *Cluster) PoolBuffers() (int, error) {
	if cl.Buffers != 0 {
		return cl.Buffers, nil
	}
	n := cl.Queues*cl.QueueLen + 1024
	for _, s := range cl.Sources {
		k, err := host.RingBuffers(s)
		if err != nil {
			return 0, fmt.Errorf("agentconf: cluster %d: %w", cl.ID, err)
		}
		n += k
	}
	return n, nil
}

// ClusterConfig returns the zc.Config that creates the cluster's own
// region (the pool sized by PoolBuffers).
func (cl *Cluster) ClusterConfig() (zc.Config, error) {
	n, err := cl.PoolBuffers()
	if err != nil {
		return zc.Config{}, err
	}
	return zc.Config{ID: cl.ID, Queues: cl.Queues, QueueLen: cl.QueueLen, BufferSize: cl.BufferSize, Buffers: n,
		QueueBuffers: cl.QueueBuffers, Backing: cl.Backing, HugetlbDir: cl.Hugetlbfs, Group: cl.Group}, nil
}

// plan lays the cluster's region out without creating it, for the
// format's limits (total buffers, region size).
func (cl *Cluster) plan() (ivshmem.Layout, error) {
	cfg, err := cl.ClusterConfig()
	if err != nil {
		return ivshmem.Layout{}, err
	}
	if uint64(cfg.Buffers)+uint64(cfg.Queues)*uint64(cfg.QueueBuffers) > ivshmem.MaxBuffers {
		return ivshmem.Layout{}, fmt.Errorf("%d buffers plus %d per queue: more than a region holds (%d)", cfg.Buffers, cfg.QueueBuffers, ivshmem.MaxBuffers)
	}
	return ivshmem.Plan(ivshmem.Config{ClusterID: cfg.ID, Queues: uint32(cfg.Queues), Slots: uint32(cfg.QueueLen),
		BufSize: uint32(cfg.BufferSize), Buffers: uint32(cfg.Buffers), QueueBuffers: uint32(cfg.QueueBuffers)})
}
