package guest

import (
	"bytes"
	"encoding/binary"
)

// Header fields read here until the ivshmem package's parser is wired in;
// they match ivshmem/doc.go.
const (
	// Magic opens every zcfabric region.
	Magic = "ZCFABRIC"
	// clusterIDOffset is the byte offset of the little-endian uint32
	// cluster id.
	clusterIDOffset = 24
)

// ClusterID returns the cluster id of the region in b; ok is false when b is
// too short or does not start with [Magic] (an unplugged BAR reads as
// zeros). It reads only; it does not validate the rest of the header.
func ClusterID(b []byte) (id uint32, ok bool) {
	if len(b) < clusterIDOffset+4 || !bytes.Equal(b[:len(Magic)], []byte(Magic)) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b[clusterIDOffset:]), true
}
