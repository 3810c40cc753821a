package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// Lifecycle is a change in a domain's life that zchost acts on.
type Lifecycle int

// The lifecycle changes Watch reports.
const (
	// Started: the domain started (or resumed from a saved state): its
	// regions can be plugged.
	Started Lifecycle = iota + 1
	// Stopped: the domain stopped, crashed, was destroyed or undefined:
	// its regions are to be freed.
	Stopped
)

func (l Lifecycle) String() string {
	switch l {
	case Started:
		return "started"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("lifecycle(%d)", int(l))
}

// Watch follows the lifecycle events of domain spec.Domain (which need
// not be defined yet) until ctx ends or the connection to libvirt is
// lost; then the channel closes. The connection is its own, held for
// the watch.
func Watch(ctx context.Context, spec Spec) (<-chan Lifecycle, error) {
	l, err := connect(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("zc: watch libvirt domain %s: %w", spec.Domain, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	events, err := l.LifecycleEvents(wctx)
	if err != nil {
		cancel()
		l.Disconnect()
		return nil, fmt.Errorf("zc: watch libvirt domain %s: %w", spec.Domain, err)
	}
	out := make(chan Lifecycle, 4)
	go func() {
		defer close(out)
		defer l.Disconnect()
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case <-l.Disconnected():
				return
			case ev, ok := <-events:
				if !ok {
					return
				}
				if ev.Dom.Name != spec.Domain {
					continue
				}
				var lc Lifecycle
				switch golibvirt.DomainEventType(ev.Event) {
				case golibvirt.DomainEventStarted, golibvirt.DomainEventResumed:
					lc = Started
				case golibvirt.DomainEventStopped, golibvirt.DomainEventCrashed, golibvirt.DomainEventUndefined:
					lc = Stopped
				default:
					continue
				}
				select {
				case out <- lc:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}
