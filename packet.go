package zc

// Packet is a zero-copy view of one buffer of a cluster. Data points into
// the shared region: it is valid until the packet is released (consumer)
// or sent (producer), and must not be kept after that.
//
// A producer gets packets from Alloc with Data spanning the whole buffer;
// it writes the frame and shortens Data to the frame (Data = Data[:n]).
// Data must stay a prefix of the slice Alloc gave.
type Packet struct {
	// Data is the packet's bytes inside the shared buffer.
	Data []byte
	// Timestamp is the capture or generation time, Unix nanoseconds.
	Timestamp int64
	// Hash is the value the balancer computed (or the producer set).
	Hash uint32
	// Port is the source interface or queue, set by the producer.
	Port uint32
	// Seq is free for applications (the generator numbers packets).
	Seq uint32
	// Flags are free for applications, but for bit 31 (the format's
	// "metadata present" bit: not carried).
	Flags uint32

	handle uint32
	off    uint32
}

// Handle returns the packet's buffer handle (its index in the cluster).
func (p *Packet) Handle() uint32 { return p.handle }
