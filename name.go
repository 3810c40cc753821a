package zc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Name is a parsed queue name: zc:CLUSTER@QUEUE, the PF_RING ZC
// convention. The same string works on the host and in a guest.
type Name struct {
	Cluster uint32
	Queue   uint32
}

// String formats the name as zc:CLUSTER@QUEUE.
func (n Name) String() string { return fmt.Sprintf("zc:%d@%d", n.Cluster, n.Queue) }

// ParseName parses "zc:99@0".
func ParseName(s string) (Name, error) {
	rest, ok := strings.CutPrefix(s, "zc:")
	c, q, ok2 := strings.Cut(rest, "@")
	if !ok || !ok2 {
		return Name{}, fmt.Errorf("zc: %w: %q (want zc:CLUSTER@QUEUE, e.g. zc:99@0)", ErrBadName, s)
	}
	cid, err1 := strconv.ParseUint(c, 10, 32)
	qid, err2 := strconv.ParseUint(q, 10, 32)
	if err1 != nil || err2 != nil {
		return Name{}, fmt.Errorf("zc: %w: %q (cluster and queue are decimal numbers)", ErrBadName, s)
	}
	return Name{Cluster: uint32(cid), Queue: uint32(qid)}, nil
}

// Dir is the directory where host regions are named: $ZC_DIR, or /dev/shm.
func Dir() string {
	if d := os.Getenv("ZC_DIR"); d != "" {
		return d
	}
	return "/dev/shm"
}

// RegionPath is the name of cluster id's region on the host: Dir()/zc-ID.
// It is a file or a symlink to the real file (hugetlbfs, memfd).
func RegionPath(id uint32) string {
	return filepath.Join(Dir(), "zc-"+strconv.FormatUint(uint64(id), 10))
}

// VMRegionPath names the k-th region (k from 1) the agent made for a VM
// of cluster id, RegionPath(id)+".vmK": a VM's own trust domain. This is
// the one place that writes the convention; IsVMRegionPath and
// InspectVMRegions read it.
func VMRegionPath(id uint32, k int) string {
	return RegionPath(id) + ".vm" + strconv.Itoa(k)
}

// IsVMRegionPath reports whether path (a region name or the file it
// resolves to) is one of cluster id's VM regions, and which.
func IsVMRegionPath(id uint32, path string) (k int, ok bool) {
	rest, ok := strings.CutPrefix(filepath.Base(path), filepath.Base(RegionPath(id))+".vm")
	if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" {
		return 0, false
	}
	k, err := strconv.Atoi(rest)
	return k, err == nil
}
