package doorbell

import "encoding/binary"

// ProtocolVersion is the ivshmem client-server protocol version this
// server speaks: the first message it sends. QEMU since 2.5 expects 0.
const ProtocolVersion = 0

// MsgSize is the size of every message: one little-endian int64.
const MsgSize = 8

// encode returns the wire form of message v.
func encode(v int64) [MsgSize]byte {
	var b [MsgSize]byte
	binary.LittleEndian.PutUint64(b[:], uint64(v))
	return b
}

// Decode returns the value of one message as sent on the wire, for clients
// (and tests) of the protocol.
func Decode(b [MsgSize]byte) int64 {
	return int64(binary.LittleEndian.Uint64(b[:]))
}
