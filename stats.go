package zc

import (
	"fmt"
	"path/filepath"

	"github.com/zcfabric/zc/ivshmem"
)

// QueueStats are a queue's counters as kept in the region, readable by any
// attached process, host or guest. The producer end writes Sent,
// SentBytes, Drops, Reclaimed and BadReturns; the consumer end writes
// Received, ReceivedBytes, Bad and Returned.
type QueueStats struct {
	Queue int
	Slots int
	// Depth is the number of packets waiting in the queue.
	Depth int
	// Sent and SentBytes count what the producer put in.
	Sent, SentBytes uint64
	// Drops counts packets the producer dropped because the queue was
	// full (drop policy).
	Drops uint64
	// Received and ReceivedBytes count what the consumer took out.
	Received, ReceivedBytes uint64
	// Bad counts entries the consumer refused (invalid handle or length).
	Bad uint64
	// Returned counts buffers the consumer released; Reclaimed those the
	// producer took back; BadReturns the returns it refused; Recovered the
	// buffers a consumer held when it went away, taken back when the next
	// consumer attached.
	Returned, Reclaimed, BadReturns, Recovered uint64
	// Producer and Consumer are the pids holding each end (0: free) and
	// whether they run in a guest.
	Producer, Consumer           uint32
	ProducerGuest, ConsumerGuest bool
}

func readQueueStats(b []byte, l *ivshmem.Layout, i int) QueueStats {
	q := l.Queues[i]
	prod, cons, ps, cs := ivshmem.RingCounters(b, q.DataRing)
	_, _, rps, rcs := ivshmem.RingCounters(b, q.RetRing)
	po, co := l.QueueOwner(b, uint32(i), ivshmem.EndProducer), l.QueueOwner(b, uint32(i), ivshmem.EndConsumer)
	depth := int(prod - cons)
	if prod-cons > q.Slots {
		depth = -1 // a corrupt ring: shown, not trusted
	}
	return QueueStats{
		Queue: i, Slots: int(q.Slots), Depth: depth,
		Sent: ps[ivshmem.CountPackets], SentBytes: ps[ivshmem.CountBytes], Drops: ps[ivshmem.CountDrops],
		Received: cs[ivshmem.CountPackets], ReceivedBytes: cs[ivshmem.CountBytes], Bad: cs[ivshmem.CountDrops],
		Returned: rps[ivshmem.CountPackets], Reclaimed: rcs[ivshmem.CountPackets], BadReturns: rcs[ivshmem.CountDrops], Recovered: rcs[ivshmem.CountBytes],
		Producer: po.PID, Consumer: co.PID,
		ProducerGuest: po.Side == ivshmem.SideGuest, ConsumerGuest: co.Side == ivshmem.SideGuest,
	}
}

// Stats returns this queue's counters.
func (q *Queue) Stats() QueueStats { return readQueueStats(q.r.b, &q.r.l, int(q.id)) }

// Stats returns the counters of every queue of the cluster.
func (c *Cluster) Stats() []QueueStats { return c.r.stats() }

func (r *region) stats() []QueueStats {
	out := make([]QueueStats, len(r.l.Queues))
	for i := range out {
		out[i] = readQueueStats(r.b, &r.l, i)
	}
	return out
}

// ClusterInfo describes a cluster found by Inspect.
type ClusterInfo struct {
	ID         uint32
	Path, File string
	Size       uint64
	Generation uint64
	CreatorPID uint32
	BufferSize int
	Buffers    int
	Hugepages  bool
	Shared     bool
	Queues     []QueueStats
}

// Inspect maps cluster id's region without attaching to any queue and
// returns its description and counters.
func Inspect(id uint32) (ClusterInfo, error) {
	r, err := findRegion(id)
	if err != nil {
		return ClusterInfo{}, fmt.Errorf("zc: inspect cluster %d: %w", id, err)
	}
	defer r.unref()
	return r.info(id), nil
}

// InspectVMRegions describes the regions zchost run made for VMs of
// cluster id (RegionPath(id)+".vmN": a VM's own trust domain).
func InspectVMRegions(id uint32) ([]ClusterInfo, error) {
	paths, err := filepath.Glob(RegionPath(id) + ".vm*")
	if err != nil {
		return nil, fmt.Errorf("zc: inspect vm regions of cluster %d: %w", id, err)
	}
	var out []ClusterInfo
	for _, p := range paths {
		m, err := ivshmem.Map(p)
		if err != nil {
			continue // gone since the glob
		}
		r, err := validate(m, id, ivshmem.SideHost)
		if err != nil {
			m.Close()
			continue
		}
		out = append(out, r.info(id))
		r.unref()
	}
	return out, nil
}

func (r *region) info(id uint32) ClusterInfo {
	return ClusterInfo{
		ID: id, Path: r.m.Path, File: r.m.File, Size: r.l.RegionSize, Generation: r.l.Generation,
		CreatorPID: r.l.CreatorPID, BufferSize: int(r.l.BufSize), Buffers: int(r.l.NumBufs),
		Hugepages: r.l.Flags&ivshmem.FlagHugepages != 0, Shared: r.l.Flags&ivshmem.FlagShared != 0,
		Queues: r.stats(),
	}
}
