package ivshmem

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on.
var (
	// ErrBadRegion: the bytes are not a valid region (magic, version,
	// checksum, sizes or offsets are wrong). Wrapped with the reason.
	ErrBadRegion = errors.New("bad region")
	// ErrClosed: the region was closed by its creator or went away (an
	// unplugged ivshmem BAR reads as zeros).
	ErrClosed = errors.New("region closed")
	// ErrGone: the region went away under an attacher: unplugged from the
	// guest (the BAR reads zeros) or re-created. It wraps ErrClosed, so
	// errors.Is(err, ErrClosed) holds too; a region closed normally by
	// its creator is ErrClosed without ErrGone.
	ErrGone = fmt.Errorf("%w: the queue went away (unplugged or re-created)", ErrClosed)
	// ErrCorrupt: a ring index written by the peer is out of range. The
	// ring can no longer be trusted; its queue is lost, nothing else is.
	ErrCorrupt = errors.New("ring corrupt")
	// ErrConfig: a configuration value is out of range.
	ErrConfig = errors.New("bad configuration")
	// ErrBusy: the end of a queue is already attached by a live party.
	ErrBusy = errors.New("queue end busy")
	// ErrVersion: the region is of another format version than this
	// binary reads (an older or newer zcfabric made it). Wraps
	// ErrBadRegion.
	ErrVersion = fmt.Errorf("%w: format version mismatch", ErrBadRegion)
)
