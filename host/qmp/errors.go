package qmp

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on. A QMP failure is an [*Error] whose Is
// method matches the sentinel for its class.
var (
	// ErrGeneric matches QMP errors of class GenericError.
	ErrGeneric = errors.New("qmp: generic error")
	// ErrDeviceNotFound matches QMP errors of class DeviceNotFound: the
	// device id names no device (for example, it was already unplugged).
	ErrDeviceNotFound = errors.New("qmp: device not found")
	// ErrCommandNotFound matches QMP errors of class CommandNotFound.
	ErrCommandNotFound = errors.New("qmp: command not found")
	// ErrKVMMissingCap matches QMP errors of class KVMMissingCap.
	ErrKVMMissingCap = errors.New("qmp: KVM capability missing")

	// ErrNoRootPort means a q35 (PCIe) machine has no free pcie-root-port
	// with enough prefetchable 64-bit window for the region.
	ErrNoRootPort = errors.New("no free pcie-root-port")
	// ErrBadSize means the region size is not a power of two (ivshmem BARs
	// must be), or is zero and the file size is unknown.
	ErrBadSize = errors.New("region size is not a power of two")
	// ErrDetachTimeout means QEMU did not report DEVICE_DELETED in time,
	// usually because the guest ignored the ACPI eject request. The
	// attachment is left in place; Detach may be called again.
	ErrDetachTimeout = errors.New("timed out waiting for DEVICE_DELETED")
	// ErrClosed means the QMP connection is closed.
	ErrClosed = errors.New("qmp connection closed")
)

// Error is a failed QMP command as QEMU reported it, class included.
type Error struct {
	// Command is the QMP command that failed, e.g. "device_add".
	Command string
	// Class is QEMU's error class, e.g. "GenericError", "DeviceNotFound";
	// empty when the Monitor reported the failure without one.
	Class string
	// Desc is QEMU's human-readable description.
	Desc string
}

// Error formats the command, the QMP error class and QEMU's description.
func (e *Error) Error() string {
	if e.Class == "" {
		return fmt.Sprintf("qmp %s: %s", e.Command, e.Desc)
	}
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Is matches the sentinel error for e's class.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrGeneric:
		return e.Class == "GenericError"
	case ErrDeviceNotFound:
		return e.Class == "DeviceNotFound"
	case ErrCommandNotFound:
		return e.Class == "CommandNotFound"
	case ErrKVMMissingCap:
		return e.Class == "KVMMissingCap"
	}
	return false
}
