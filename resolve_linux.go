package zc

import (
	"errors"
	"fmt"

	"github.com/zcfabric/zc/guest"
	"github.com/zcfabric/zc/ivshmem"
)

// In a KVM guest, Open and Inspect find a cluster's region as an ivshmem
// device (see the guest package) when there is no host region of that id,
// so the same binary runs on either side. The sysfs root is $ZC_SYSFS, else
// /sys.
func init() { RegisterResolver(resolveGuest) }

func resolveGuest(id uint32) (*ivshmem.Mapping, ivshmem.Side, error) {
	m, side, err := guest.Resolve(id)
	if errors.Is(err, guest.ErrNotFound) {
		return nil, 0, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return m, side, err
}
