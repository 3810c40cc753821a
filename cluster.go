package zc

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// Backing selects the memory behind a cluster's region.
type Backing = ivshmem.Backing

// Backings, re-exported from ivshmem.
const (
	BackingAuto    = ivshmem.BackingAuto
	BackingShm     = ivshmem.BackingShm
	BackingHugetlb = ivshmem.BackingHugetlb
	BackingMemfd   = ivshmem.BackingMemfd
)

// Config describes a cluster to create. Zero fields take the defaults.
type Config struct {
	// ID is the cluster id others attach by (zc:ID@Q).
	ID uint32
	// Queues is the number of queues (default 1).
	Queues int
	// QueueLen is each queue's capacity in packets, a power of two
	// (default 4096).
	QueueLen int
	// BufferSize is the size of a packet buffer, a power of two
	// (default 2048, which also suits AF_XDP).
	BufferSize int
	// Buffers is the size of the creator's pool (default: enough to fill
	// every queue, plus 1024 for bursts in flight).
	Buffers int
	// QueueBuffers gives each queue buffers of its own, for a producer
	// that attaches from outside (zsend in another process or a guest).
	// Default 0: the queues are fed by the creator.
	QueueBuffers int
	// Backing selects tmpfs, hugetlbfs or memfd (default: hugetlbfs if a
	// mount with free pages exists, else /dev/shm).
	Backing Backing
	// HugetlbDir is the hugetlbfs mount to use ("" finds one).
	HugetlbDir string
	// Path overrides the region's name (default RegionPath(ID)).
	Path string
	// Shared marks a shared trust domain (several VMs on one region).
	Shared bool
	// OneVM marks a VM's own region: it is plugged into one VM only,
	// so a process in that guest may take over a queue end that a dead
	// process of the same guest left claimed (killed, or from before the
	// guest rebooted). Never set it on a region two VMs map.
	OneVM bool
	// Group, when set, names a group (name or id) whose members may open
	// the region file too (mode 0660); by default it is 0600, the creating
	// user's only (see ivshmem.CreateOptions).
	Group string
}

func (c *Config) defaults() {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.QueueLen == 0 {
		c.QueueLen = 4096
	}
	if c.BufferSize == 0 {
		c.BufferSize = 2048
	}
	if c.Buffers == 0 {
		c.Buffers = c.Queues*c.QueueLen + 1024
	}
	if c.Path == "" {
		c.Path = RegionPath(c.ID)
	}
}

// Cluster is a region created by this process: its queues, and the
// engine pool the creator produces from.
type Cluster struct {
	r       *region
	pool    *Pool
	sum     uint32 // header checksum as written
	adopted bool   // taken over from a creator that is gone (AdoptCluster)
	closed  sync.Once
	done    atomic.Bool // Close or Leave called: no more attaching
}

// CreateCluster creates cluster cfg.ID and publishes it under its name. A
// region of the same id left by a dead process is replaced (with a new
// generation); one whose creator is alive gives ErrExists.
func CreateCluster(cfg Config) (*Cluster, error) {
	cfg.defaults()
	gen := uint64(1)
	if old, err := ivshmem.Map(cfg.Path); err == nil {
		l, perr := ivshmem.Parse(old.Bytes)
		alive := perr == nil && ivshmem.State(old.Bytes) == ivshmem.StateReady && processAlive(l.CreatorPID)
		if perr == nil {
			gen = l.Generation + 1
			if !alive {
				ivshmem.MarkClosed(old.Bytes) // wake attachers of the dead one
			}
		}
		old.Close()
		if alive {
			return nil, fmt.Errorf("zc: create cluster %d: %w (%s, pid %d)", cfg.ID, ErrExists, cfg.Path, l.CreatorPID)
		}
	}
	l, err := cfg.plan(gen, time.Now().UnixNano(), uint32(os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("zc: create cluster %d: %w", cfg.ID, err)
	}
	m, err := ivshmem.CreateWith(cfg.Path, l.RegionSize, ivshmem.CreateOptions{Backing: cfg.Backing, HugetlbDir: cfg.HugetlbDir, Group: cfg.Group})
	if err != nil {
		return nil, fmt.Errorf("zc: create cluster %d: %w", cfg.ID, err)
	}
	if m.Kind == BackingHugetlb {
		l.Flags |= ivshmem.FlagHugepages
	}
	if err := l.Write(m.Bytes); err != nil {
		m.Close()
		m.Remove()
		return nil, fmt.Errorf("zc: create cluster %d: %w", cfg.ID, err)
	}
	ivshmem.Publish(m.Bytes)
	if err := m.Publish(); err != nil {
		m.Close()
		m.Remove()
		return nil, fmt.Errorf("zc: create cluster %d: %w", cfg.ID, err)
	}
	r := newRegion(m, l, ivshmem.SideHost)
	r.onEnd = func() { protect(func() { ivshmem.MarkClosed(m.Bytes) }); m.Remove() }
	return &Cluster{r: r, pool: newPool(r, l.EngineFirst, l.EngineCount), sum: ivshmem.HeaderChecksum(m.Bytes)}, nil
}

// plan computes the layout of the region cfg (with defaults applied)
// describes.
func (cfg *Config) plan(gen uint64, created int64, pid uint32) (ivshmem.Layout, error) {
	if cfg.Queues < 0 || cfg.QueueLen < 0 || cfg.BufferSize < 0 || cfg.Buffers < 0 || cfg.QueueBuffers < 0 {
		return ivshmem.Layout{}, fmt.Errorf("%w: negative size", ivshmem.ErrConfig)
	}
	var flags uint32
	if cfg.Shared {
		flags |= ivshmem.FlagShared
	}
	if cfg.OneVM {
		flags |= ivshmem.FlagOneVM
	}
	icfg := ivshmem.Config{
		ClusterID: cfg.ID, Queues: uint32(cfg.Queues), Slots: uint32(cfg.QueueLen),
		BufSize: uint32(cfg.BufferSize), Buffers: uint32(cfg.Buffers), QueueBuffers: uint32(cfg.QueueBuffers),
		Flags: flags, Generation: gen, Created: created, CreatorPID: pid,
	}
	if cfg.Backing == BackingAuto || cfg.Backing == BackingHugetlb {
		icfg.MinSize = ivshmem.HugePageSize
	}
	return ivshmem.Plan(icfg)
}

// nestedAlive reports, from the initial pid namespace, whether pid
// namespace ino has a live process whose pid there is pid: a process
// whose last NSpid (/proc/P/status) is pid, in a nested namespace (more
// than one NSpid), whose /proc/P/ns/pid is ino. A namespace with no
// process left is gone, and so are its claims. When /proc cannot be
// read, or the namespace of such a process cannot (a user who may not
// look at others' processes), it says alive: nothing is taken over on a
// guess.
func nestedAlive(ino uint64, pid uint32) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	want := "pid:[" + strconv.FormatUint(ino, 10) + "]"
	last := []byte(strconv.FormatUint(uint64(pid), 10))
	unknown := false
	for _, e := range ents {
		p, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		dir := "/proc/" + e.Name()
		b, err := os.ReadFile(dir + "/status")
		if err != nil {
			continue
		}
		nested := false
		for line := range bytes.Lines(b) {
			if f := bytes.Fields(line); len(f) > 0 && string(f[0]) == "NSpid:" {
				nested = len(f) > 2 && bytes.Equal(f[len(f)-1], last)
				break
			}
		}
		if !nested {
			continue
		}
		l, err := os.Readlink(dir + "/ns/pid")
		switch {
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			unknown = true // not ours to look at: it might be the one
		case err == nil && l == want:
			return processAlive(uint32(p))
		}
	}
	return unknown
}

// processAlive reports whether process pid exists and is not a zombie
// (killed, not yet reaped: its mappings are gone).
func processAlive(pid uint32) bool {
	if pid == 0 {
		return false
	}
	err := syscall.Kill(int(pid), 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/stat"); err == nil {
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return false
		}
	}
	return true
}

// ID returns the cluster id.
func (c *Cluster) ID() uint32 { return c.r.l.ClusterID }

// NumQueues returns the number of queues.
func (c *Cluster) NumQueues() int { return len(c.r.l.Queues) }

// Pool returns the creator's engine pool.
func (c *Cluster) Pool() *Pool { return c.pool }

// Path returns the region's name; File the backing file QEMU should map
// (they differ for hugetlbfs and memfd).
func (c *Cluster) Path() string { return c.r.m.Path }

// File returns the real backing file of the region.
func (c *Cluster) File() string { return c.r.m.File }

// Size returns the region's size in bytes (a power of two).
func (c *Cluster) Size() uint64 { return c.r.l.RegionSize }

// Backing returns the backing in use.
func (c *Cluster) Backing() Backing { return c.r.m.Kind }

// Generation returns this incarnation's generation.
func (c *Cluster) Generation() uint64 { return c.r.l.Generation }

// Bytes returns the whole region (for capture engines that use the buffer
// area as an AF_XDP UMEM).
func (c *Cluster) Bytes() []byte { return c.r.b }

// BufferArea returns the page-aligned area holding every buffer; buffer h
// starts at h*BufferSize().
func (c *Cluster) BufferArea() []byte { return c.r.l.BufferArea(c.r.b) }

// BufferSize returns the size of one buffer.
func (c *Cluster) BufferSize() int { return int(c.r.l.BufSize) }

// Producer attaches the producer end of queue q for the creator, fed from
// the engine pool.
func (c *Cluster) Producer(q int) (*Queue, error) {
	qu, err := c.attach(q, ivshmem.EndProducer)
	if err != nil {
		return nil, err
	}
	qu.setSource(c.pool)
	if c.adopted {
		qu.takeRing()
	}
	return qu, nil
}

// Output attaches the producer end of queue q for a worker
// (RunBalancer, RunFanout, RunPipeline) to feed with buffers it relays.
func (c *Cluster) Output(q int) (*Queue, error) {
	return c.attach(q, ivshmem.EndProducer)
}

// Consumer attaches the consumer end of queue q inside the creator.
func (c *Cluster) Consumer(q int) (*Queue, error) {
	return c.attach(q, ivshmem.EndConsumer)
}

// attach attaches end e of queue q, unless the cluster was closed or left
// here (ErrClosed: its queues attached before go on until closed) or q is
// not one of its queues (ErrNoQueue).
func (c *Cluster) attach(q int, e ivshmem.End) (*Queue, error) {
	if c.done.Load() {
		return nil, fmt.Errorf("zc: attach cluster %d queue %d as %s: %w (closed here)", c.r.l.ClusterID, q, e, ErrClosed)
	}
	if q < 0 {
		return nil, c.r.noQueue(int64(q))
	}
	return c.r.attach(uint32(q), e, false)
}

// Close marks the cluster closed (attachers get ErrClosed), removes its
// name and unmaps it once every queue attached through it is closed.
func (c *Cluster) Close() error {
	var err error
	c.done.Store(true)
	c.closed.Do(func() {
		protect(func() { ivshmem.MarkClosed(c.r.b); c.r.l.WakeAll(c.r.b) }) // a truncated file faults: closed all the same
		c.r.m.Remove()
		err = c.r.unref()
	})
	return err
}

// Leave unmaps the cluster without closing it: its name, its devices and
// its readers stay, for a successor to adopt (AdoptCluster), as if this
// process had been killed. Close every queue attached through it first.
func (c *Cluster) Leave() error {
	var err error
	c.done.Store(true)
	c.closed.Do(func() {
		c.r.mu.Lock()
		c.r.onEnd = nil
		c.r.mu.Unlock()
		err = c.r.unref()
	})
	return err
}
