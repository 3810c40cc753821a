package zc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/zcfabric/zc/ivshmem"
)

// OpenOption configures Open.
type OpenOption func(*openConfig)

type openConfig struct {
	producer bool
	force    bool
}

// AsProducer attaches the producer end of the queue, fed from the queue's
// own pool (the cluster must be created with QueueBuffers > 0).
func AsProducer() OpenOption { return func(c *openConfig) { c.producer = true } }

// Force takes the end over even if another live party holds it.
func Force() OpenOption { return func(c *openConfig) { c.force = true } }

// Resolver finds the region of a cluster somewhere other than the host's
// region directory: this package registers one that looks for an ivshmem
// device through the guest package (resolve_linux.go). It returns
// ErrNotFound when it has nothing.
type Resolver func(cluster uint32) (*ivshmem.Mapping, ivshmem.Side, error)

var resolvers []Resolver

// RegisterResolver adds a way to find regions, tried after the host's
// region directory, in registration order.
func RegisterResolver(r Resolver) { resolvers = append(resolvers, r) }

// Open attaches to a queue by name, "zc:99@0": the consumer end by
// default. On a host it maps the region named RegionPath(99); in a guest,
// the ivshmem device carrying cluster 99. The region is validated before
// use.
func Open(name string, opts ...OpenOption) (*Queue, error) {
	n, err := ParseName(name)
	if err != nil {
		return nil, err
	}
	var cfg openConfig
	for _, o := range opts {
		o(&cfg)
	}
	r, err := findRegion(n.Cluster)
	if err != nil {
		return nil, err
	}
	end := ivshmem.EndConsumer
	if cfg.producer {
		end = ivshmem.EndProducer
	}
	q, err := r.attach(n.Queue, end, cfg.force)
	r.unref() // the queue holds its own reference
	if err != nil {
		return nil, err
	}
	if cfg.producer {
		ql := r.l.Queues[n.Queue]
		if ql.PoolCount == 0 {
			q.Close()
			return nil, fmt.Errorf("zc: attach %s as producer: %w: the queue has no buffers of its own (create the cluster with queue buffers, zchost --queue-buffers)", name, ErrNoBuffers)
		}
		q.setSource(newPool(r, ql.PoolFirst, ql.PoolCount))
		q.adoptInFlight(AdoptWait)
	}
	return q, nil
}

func findRegion(id uint32) (*region, error) {
	r, err := openRegion(id)
	if err == nil || !errors.Is(err, ErrNotFound) {
		return r, err
	}
	for _, res := range resolvers {
		m, side, rerr := res(id)
		if rerr != nil {
			if errors.Is(rerr, ErrNotFound) {
				continue
			}
			return nil, fmt.Errorf("zc: attach cluster %d: %w", id, rerr)
		}
		r, verr := validate(m, id, side)
		if verr != nil {
			m.Close()
			return nil, verr
		}
		return r, nil
	}
	return nil, err
}

// OpenWait is Open that waits up to wait for the cluster to appear (a
// guest whose region is not plugged yet, an agent still starting),
// retrying every 50 ms; other errors return at once.
func OpenWait(ctx context.Context, name string, wait time.Duration, opts ...OpenOption) (*Queue, error) {
	deadline := time.Now().Add(wait)
	for {
		q, err := Open(name, opts...)
		if err == nil || !errors.Is(err, ErrNotFound) || !time.Now().Before(deadline) {
			return q, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("zc: attach %s: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
