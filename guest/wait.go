package guest

import (
	"context"
	"fmt"
	"time"
)

// DefaultPoll is the interval Wait uses when given a poll interval <= 0.
// Plug-to-visible takes ~30 ms under TCG, so 10 ms adds little.
const DefaultPoll = 10 * time.Millisecond

// Wait blocks until a device under root (see [Find]) with BAR2 assigned
// satisfies match (nil matches any), and returns it. It polls sysfs every
// poll; a device that appears is checked again at each poll until its BAR is
// assigned. It returns ctx's error, wrapped, when ctx ends first.
func Wait(ctx context.Context, root string, match func(Device) bool, poll time.Duration) (Device, error) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		devs, err := Find(root)
		if err != nil {
			return Device{}, err
		}
		for _, d := range devs {
			if d.Size > 0 && (match == nil || match(d)) {
				return d, nil
			}
		}
		select {
		case <-ctx.Done():
			return Device{}, fmt.Errorf("zc: wait for ivshmem device: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// MatchCluster returns a match function for [Wait] that accepts devices
// whose region header carries the given cluster id (see [ClusterID]).
func MatchCluster(id uint32) func(Device) bool {
	return func(d Device) bool {
		got, ok, err := d.ClusterID()
		return err == nil && ok && got == id
	}
}

// ClusterID maps d briefly and returns the cluster id from its header; ok is
// false when the region does not start with the zcfabric magic.
func (d Device) ClusterID() (id uint32, ok bool, err error) {
	m, err := d.Map()
	if err != nil {
		return 0, false, err
	}
	defer m.Close()
	id, ok = ClusterID(m.Bytes())
	return id, ok, nil
}
