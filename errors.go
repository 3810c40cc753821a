package zc

import (
	"errors"

	"github.com/zcfabric/zc/ivshmem"
)

// Sentinel errors callers branch on. Errors returned by this package wrap
// them with the operation and the object, e.g.
// "zc: attach cluster 99 queue 3: queue end busy: consumer of queue 3 held by pid 812".
var (
	// ErrQueueFull: the queue had no room; Send counted a drop.
	ErrQueueFull = errors.New("queue full")
	// ErrNoBuffers: the pool has no free buffer (all in flight).
	ErrNoBuffers = errors.New("no free buffers")
	// ErrClosed: the queue, its cluster or the region went away (closed
	// by the creator, unplugged from the guest, re-created).
	ErrClosed = ivshmem.ErrClosed
	// ErrGone: the queue went away under its attacher (the VM's ivshmem
	// device was unplugged, or the region re-created). Wraps ErrClosed.
	ErrGone = ivshmem.ErrGone
	// ErrBadRegion: the region's bytes failed validation.
	ErrBadRegion = ivshmem.ErrBadRegion
	// ErrCorrupt: the peer of a queue broke the ring protocol; the queue
	// is lost, the rest of the cluster is not.
	ErrCorrupt = ivshmem.ErrCorrupt
	// ErrBusy: that end of the queue is attached by someone else.
	ErrBusy = ivshmem.ErrBusy
	// ErrNotFound: no cluster with that id exists here.
	ErrNotFound = errors.New("cluster not found")
	// ErrNoQueue: the cluster exists but has no queue of that number
	// (OpenWait does not wait for it: a cluster's queues never change).
	ErrNoQueue = errors.New("no such queue")
	// ErrExists: a live cluster with that id exists already.
	ErrExists = errors.New("cluster exists")
	// ErrBadName: a queue name is not of the form zc:CLUSTER@QUEUE.
	ErrBadName = errors.New("bad queue name")
	// ErrNotHeld: Release of a packet this consumer does not hold
	// (released twice, received elsewhere, or a handle a broken producer
	// delivered twice in one burst); nothing is returned for it. Also
	// SendBurst of a packet the producer may not send (sent already, not
	// from its Alloc, resliced past its buffer).
	ErrNotHeld = errors.New("packet not held")
	// ErrWrongEnd: the call needs the other end of the queue (Recv on a
	// producer, Send on a consumer).
	ErrWrongEnd = errors.New("wrong end of the queue")
)
