package guest

import (
	"bytes"
	"encoding/binary"

	"github.com/zcfabric/zc/ivshmem"
)

// clusterIDOffset is the byte offset of the header's little-endian uint32
// cluster id (ivshmem/doc.go), which ivshmem does not export: ClusterID
// reads it without validating the rest of the header, as ivshmem.Parse
// would.
const clusterIDOffset = 24

// ClusterID returns the cluster id of the region in b; ok is false when b is
// too short or does not start with ivshmem.Magic (an unplugged BAR reads as
// zeros). It reads only; it does not validate the rest of the header.
func ClusterID(b []byte) (id uint32, ok bool) {
	if len(b) < clusterIDOffset+4 || !bytes.Equal(b[:len(ivshmem.Magic)], []byte(ivshmem.Magic)) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b[clusterIDOffset:]), true
}
