package ivshmem

import "errors"

// Sentinel errors callers branch on.
var (
	// ErrBadRegion: the bytes are not a valid region (magic, version,
	// checksum, sizes or offsets are wrong). Wrapped with the reason.
	ErrBadRegion = errors.New("bad region")
	// ErrClosed: the region was closed by its creator or went away (an
	// unplugged ivshmem BAR reads as zeros).
	ErrClosed = errors.New("region closed")
	// ErrCorrupt: a ring index written by the peer is out of range. The
	// ring can no longer be trusted; its queue is lost, nothing else is.
	ErrCorrupt = errors.New("ring corrupt")
	// ErrConfig: a configuration value is out of range.
	ErrConfig = errors.New("bad configuration")
	// ErrBusy: the end of a queue is already attached by a live party.
	ErrBusy = errors.New("queue end busy")
)
