package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zcfabric/zc/ivshmem"
)

// SysfsEnv names the environment variable that overrides the sysfs root
// [Resolve] searches (default [DefaultSysfs]); tests point it at a fake tree.
const SysfsEnv = "ZC_SYSFS"

// ErrNotFound means no ivshmem device carries the cluster asked for. The
// root package maps it to zc.ErrNotFound.
var ErrNotFound = errors.New("no ivshmem device carries the cluster")

// SysfsRoot returns $ZC_SYSFS, or [DefaultSysfs] when it is unset.
func SysfsRoot() string {
	if r := os.Getenv(SysfsEnv); r != "" {
		return r
	}
	return DefaultSysfs
}

// Resolve finds the ivshmem device whose region header carries cluster
// under [SysfsRoot], maps its BAR2 and returns the mapping (closing it
// unmaps the BAR) and [ivshmem.SideGuest]. It is the resolver zc.Open uses
// inside a guest; see [ResolveIn].
func Resolve(cluster uint32) (*ivshmem.Mapping, ivshmem.Side, error) {
	m, err := ResolveIn(SysfsRoot(), cluster)
	if err != nil {
		return nil, 0, err
	}
	return m, ivshmem.SideGuest, nil
}

// ResolveIn is [Resolve] under an explicit sysfs root ("" means
// [DefaultSysfs]). Every device with BAR2 assigned is mapped and its header
// validated with [ivshmem.Parse]; the first whose cluster id matches is
// returned, still mapped. A device whose header names the cluster but fails
// validation returns that error. When no device matches (or root has no PCI
// bus at all, as on a machine without sysfs) the error wraps [ErrNotFound].
func ResolveIn(root string, cluster uint32) (*ivshmem.Mapping, error) {
	devs, err := Find(root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("zc: resolve cluster %d in guest: %w (%v)", cluster, ErrNotFound, err)
		}
		return nil, fmt.Errorf("zc: resolve cluster %d in guest: %w", cluster, err)
	}
	var skipped []error
	for _, d := range devs {
		if d.Size == 0 {
			continue
		}
		gm, err := d.Map()
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		b := gm.Bytes()
		id, ok := ClusterID(b)
		if !ok || id != cluster {
			gm.Close()
			continue
		}
		if _, err := ivshmem.Parse(b); err != nil {
			gm.Close()
			return nil, fmt.Errorf("zc: resolve cluster %d in guest: device %s: %w", cluster, d.Addr, err)
		}
		path := filepath.Join(d.Dir, "resource2")
		return ivshmem.FromBytes(b, path, gm.Close), nil
	}
	if len(skipped) > 0 {
		return nil, fmt.Errorf("zc: resolve cluster %d in guest: %w among %d ivshmem devices under %s (%d could not be mapped: %w)",
			cluster, ErrNotFound, len(devs), root, len(skipped), errors.Join(skipped...))
	}
	return nil, fmt.Errorf("zc: resolve cluster %d in guest: %w among %d ivshmem devices under %s", cluster, ErrNotFound, len(devs), root)
}
