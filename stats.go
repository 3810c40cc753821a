package zc

import (
	"errors"
	"fmt"
	"os"
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
	// ProducerGone and ConsumerGone say that the process which called
	// Inspect (only Inspect sets them) can tell that end's holder is gone
	// (killed, or from before its guest rebooted): its claim is stale,
	// and the next process to attach that end takes it over
	// (ivshmem/doc.go, Ownership).
	ProducerGone, ConsumerGone bool `json:",omitempty"`
	// View says whose record the counters are. "producer" or "consumer":
	// Queue.Stats of an attached end, whose own counters (Sent, SentBytes,
	// Drops, Reclaimed, BadReturns, Recovered for a producer; Received,
	// ReceivedBytes, Bad, Returned for a consumer) come from its process
	// memory, where the peer cannot write; everything else (the other
	// end's counters, Depth, the owners) is what the peer reported in the
	// region. "region": every field read from the region (Inspect), as
	// anyone attached may have written it.
	View string `json:",omitempty"`
	// State is "ok", or "failed" once the queue broke for good (Failure
	// says why): from then on its packets are dropped and counted, and
	// the rest of the cluster carries on. Empty when unknown (read from
	// the region by a process that holds neither end).
	State   string `json:",omitempty"`
	Failure string `json:",omitempty"`
	// RecoveriesDeferred counts recovery requests put off by the rate
	// limit (RecoverEvery): a consumer asking again and again.
	RecoveriesDeferred uint64 `json:",omitempty"`
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
		View: "region",
	}
}

// Stats returns this queue's counters: this end's own from process
// memory, the peer's as the region reports them (see QueueStats.View).
// Safe from any goroutine, also while another uses the queue, and after
// the region went away (a fault reading it leaves the peer's fields zero).
func (q *Queue) Stats() QueueStats {
	s := QueueStats{Queue: int(q.id), Slots: int(q.slots), State: "ok"}
	ferr := q.Err()
	if err := protect(func() { s = readQueueStats(q.r.b, &q.r.l, int(q.id)) }); err != nil && ferr == nil {
		ferr = err
	}
	s.State = "ok"
	if ferr != nil {
		s.State, s.Failure = "failed", ferr.Error()
	}
	if q.out != nil {
		s.View = "producer"
		s.Sent, s.SentBytes, s.Drops = q.out.Own(ivshmem.CountPackets), q.out.Own(ivshmem.CountBytes), q.out.Own(ivshmem.CountDrops)
		s.Reclaimed, s.BadReturns, s.Recovered = q.ret.Own(ivshmem.CountPackets), q.ret.Own(ivshmem.CountDrops), q.ret.Own(ivshmem.CountBytes)
		s.RecoveriesDeferred = q.deferred.Load()
	} else {
		s.View = "consumer"
		s.Received, s.ReceivedBytes, s.Bad = q.in.Own(ivshmem.CountPackets), q.in.Own(ivshmem.CountBytes), q.in.Own(ivshmem.CountDrops)
		s.Returned = q.back.Own(ivshmem.CountPackets)
	}
	return s
}

// Stats returns the counters of every queue of the cluster.
func (c *Cluster) Stats() []QueueStats { return c.r.stats() }

func (r *region) stats() []QueueStats {
	out := make([]QueueStats, len(r.l.Queues))
	for i := range out {
		if err := protect(func() { out[i] = readQueueStats(r.b, &r.l, i) }); err != nil {
			out[i] = QueueStats{Queue: i, Slots: int(r.l.Queues[i].Slots), View: "region", State: "failed", Failure: err.Error()}
		}
	}
	return out
}

// gone reports whether end e of queue q is held by an owner this process
// can tell is gone.
func (r *region) gone(q uint32, e ivshmem.End) bool {
	o := r.l.QueueOwner(r.b, q, e)
	return o.Side != 0 && r.stale(o)
}

// PeerGone reports whether this end can tell that the holder of the
// queue's other end is gone (killed, or from before its guest rebooted),
// as Inspect's ProducerGone and ConsumerGone judge it: its claim is stale,
// and the next process to attach that end takes it over. False when the
// queue failed or the other end is free. It reads the region and /proc:
// not for a hot path. Safe to call from another goroutine than the one
// using the queue, as Err is.
func (q *Queue) PeerGone() (gone bool) {
	if q.Err() != nil {
		return false
	}
	other := ivshmem.EndConsumer
	if q.end == ivshmem.EndConsumer {
		other = ivshmem.EndProducer
	}
	if protect(func() { gone = q.r.gone(q.id, other) }) != nil {
		return false
	}
	return gone
}

// Owner names the holder of end e of the queue for a table: "-" when
// free, its pid, "guest:PID" in a guest, with " (gone)" when the reader
// of the stats could tell it is (ProducerGone, ConsumerGone).
func (q QueueStats) Owner(e ivshmem.End) string {
	pid, guest, gone := q.Producer, q.ProducerGuest, q.ProducerGone
	if e == ivshmem.EndConsumer {
		pid, guest, gone = q.Consumer, q.ConsumerGuest, q.ConsumerGone
	}
	if pid == 0 {
		return "-"
	}
	s := fmt.Sprint(pid)
	if guest {
		s = "guest:" + s
	}
	if gone {
		s += " (gone)"
	}
	return s
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
	// State is "ok" for a region that validates, "corrupt" for one whose
	// header no longer does (Failure says why; InspectVMRegions lists it
	// instead of leaving it out). A per-VM region's bytes are the guest's
	// to write: a valid-looking header proves nothing about who wrote it;
	// zchost compares it with the agent's own record.
	State   string `json:",omitempty"`
	Failure string `json:",omitempty"`
	// Checksum is the header's CRC-32C word as the region holds it now.
	Checksum uint32 `json:",omitempty"`
	Queues   []QueueStats
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
			if !errors.Is(err, os.ErrNotExist) { // else gone since the glob
				out = append(out, ClusterInfo{ID: id, Path: p, State: "corrupt", Failure: err.Error()})
			}
			continue
		}
		var r *region
		if ferr := protect(func() { r, err = validate(m, id, ivshmem.SideHost) }); ferr != nil {
			err = ferr
		}
		if err != nil {
			m.Close()
			out = append(out, ClusterInfo{ID: id, Path: p, File: m.File, State: "corrupt", Failure: err.Error()})
			continue
		}
		out = append(out, r.info(id))
		r.unref()
	}
	return out, nil
}

// info describes the region for Inspect, with the queue ends whose
// holders this process can tell are gone (only here: judging a holder
// costs system calls, and a container's a walk of /proc, which the
// agent's periodic and drain-time stats must not pay).
func (r *region) info(id uint32) ClusterInfo {
	qs := r.stats()
	for i := range qs {
		protect(func() {
			qs[i].ProducerGone = r.gone(uint32(i), ivshmem.EndProducer)
			qs[i].ConsumerGone = r.gone(uint32(i), ivshmem.EndConsumer)
		})
	}
	return ClusterInfo{
		ID: id, Path: r.m.Path, File: r.m.File, Size: r.l.RegionSize, Generation: r.l.Generation,
		CreatorPID: r.l.CreatorPID, BufferSize: int(r.l.BufSize), Buffers: int(r.l.NumBufs),
		Hugepages: r.l.Flags&ivshmem.FlagHugepages != 0, Shared: r.l.Flags&ivshmem.FlagShared != 0,
		State: "ok", Checksum: r.headerChecksum(), Queues: qs,
	}
}

// headerChecksum reads the region's header checksum word now (0 if the
// memory faults).
func (r *region) headerChecksum() uint32 {
	var v uint32
	protect(func() { v = ivshmem.HeaderChecksum(r.b) })
	return v
}

// Checksum returns the header checksum this process created the region
// with: what the region must still hold for its header to be the one the
// creator wrote.
func (c *Cluster) Checksum() uint32 { return c.sum }
