// Package testgate holds the gates tests use to skip when the machine lacks
// something they need: root, a capability, hugepages, QEMU, /dev/kvm, a guest.
// Every gate skips with a message that names what is missing and how to get
// it; none of them ever fails a test on its own.
package testgate
