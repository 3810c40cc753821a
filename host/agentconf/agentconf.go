// Package agentconf reads the configuration file of `zchost daemon`: a
// TOML file declaring the daemon's own settings and the clusters it keeps,
// each with its sources and the VMs its queues are exported to. See Help
// for every key and dist/zchost.toml for a full example.
//
// The file is parsed strictly: an unknown key, a value of the wrong type
// and a bad value are all errors, and each one names the file, the line
// and the key (with array indices, "cluster[1].mode") as an *Error:
//
//	zchost.toml:12: cluster[1].mode: "ipx": want round-robin, ip-pair, fan-out, 5-tuple, gtp (or 0..4)
//
// Parsing opens nothing: sources are checked for their syntax only, VM
// names for their form. A file that parses is complete: defaults are filled
// in, each export lists its queues, so two Files compare field by field
// (Diff, for a reload).
//
// TOML decoding is github.com/pelletier/go-toml/v2 in strict mode, which
// reports unknown keys and type mismatches with their line and key; its
// unstable AST parser locates the keys the checks of this package refuse.
package agentconf

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc"
)

// Errors an *Error wraps, for callers that branch on the kind of mistake.
var (
	// ErrSyntax: the file is not valid TOML.
	ErrSyntax = errors.New("syntax error")
	// ErrUnknownKey: a key the schema does not have.
	ErrUnknownKey = errors.New("unknown key")
	// ErrType: a value of the wrong TOML type.
	ErrType = errors.New("wrong type")
	// ErrValue: a value of the right type that is out of range, malformed
	// or in conflict with another.
	ErrValue = errors.New("bad value")
	// ErrChanged: Diff found a change a running daemon cannot apply.
	ErrChanged = errors.New("cannot change while running")
)

// Error is a mistake in a configuration file, located by file, line and
// key. Key is the dotted path with array indices ("cluster[1].export[0].vm");
// it is empty only for a syntax error on a line that holds no key.
type Error struct {
	File string
	Line int
	Key  string
	Err  error
}

// Error formats the error as "FILE:LINE: KEY: MESSAGE".
func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: %s: %v", e.File, e.Line, e.Key, e.Err)
}

// Unwrap returns the cause: it matches one of ErrSyntax, ErrUnknownKey,
// ErrType, ErrValue or ErrChanged under errors.Is.
func (e *Error) Unwrap() error { return e.Err }

// kindError is a message that matches a sentinel without repeating its
// text: `"ipx": want ...` rather than `bad value: "ipx": want ...`.
type kindError struct {
	kind error
	msg  string
}

func (k *kindError) Error() string { return k.msg }
func (k *kindError) Unwrap() error { return k.kind }

func kindErrorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// File is a parsed configuration file, defaults filled in.
type File struct {
	// StateDir holds the daemon's record of what it made (state_dir,
	// default /run/zcfabric).
	StateDir string
	// Control is the control socket's path (control, default
	// StateDir/zchost.sock).
	Control string
	// Metrics is the Prometheus endpoint's listen address, host:port
	// (metrics); empty: no endpoint.
	Metrics string
	// KeepPlugged leaves regions plugged and their files in place when the
	// daemon stops on SIGTERM, for an upgrade (keep_plugged).
	KeepPlugged bool
	// LogLevel is the log level (log_level, default info).
	LogLevel hclog.Level
	// Clusters are the clusters in file order, ids distinct.
	Clusters []Cluster

	name  string         // the file name errors carry
	lines map[string]int // key path -> line, for Diff's errors
}

// Cluster is one [[cluster]] table: a cluster as `zchost run` makes it.
type Cluster struct {
	// ID is the cluster id consumers attach by, zc:ID@QUEUE (id; required).
	ID uint32
	// Queues is the number of egress queues (queues, default 1).
	Queues int
	// Mode is the balancing mode (mode, default round-robin).
	Mode zc.HashMode
	// Lossless waits for room instead of dropping when a queue is full
	// (lossless).
	Lossless bool
	// Sources are packet sources as `zchost run -i` takes them (sources);
	// none: the queues are fed by producers that attach.
	Sources []string
	// QueueLen is each queue's capacity in packets, a power of two
	// (queue_len, default 4096).
	QueueLen int
	// Buffers is the engine pool's size (buffers); 0: computed as
	// `zchost run` does (PoolBuffers).
	Buffers int
	// BufferSize is a packet buffer's size in bytes, a power of two
	// (buffer_size, default 2048).
	BufferSize int
	// QueueBuffers is the number of buffers each queue owns for an outside
	// producer (queue_buffers).
	QueueBuffers int
	// Backing is the region memory (backing, default auto).
	Backing zc.Backing
	// Hugetlbfs is the hugetlbfs mount to use (hugetlbfs; "" finds one).
	Hugetlbfs string
	// Group may open the cluster's region file too (group; "": mode 0600).
	Group string
	// Shared puts every VM on the cluster's own region (shared).
	Shared bool
	// Ctl offers the regions over each VM's zc.ctl channel (ctl).
	Ctl bool
	// Doorbell plugs each VM's region as an ivshmem-doorbell device
	// (doorbell).
	Doorbell bool
	// BPF is a classic BPF program in `tcpdump -ddd` form applied to every
	// source (bpf; "": none).
	BPF string
	// VMRecover is how long a VM whose region failed waits for a fresh one
	// (vm_recover, default 10s; 0: never).
	VMRecover time.Duration
	// Exports are the VMs the queues are exported to, in file order.
	Exports []Export
}

// Export is one [[cluster.export]] table: a VM and the queues it reads.
type Export struct {
	// VM is a QMP socket path or "libvirt:DOMAIN[@SOCKET|URI]" (vm).
	VM string
	// Queues are the queues the VM reads, ascending (queues; absent in the
	// file: every queue of the cluster).
	Queues []int
}

// Defaults of the keys that have one besides the zero value.
const (
	DefaultStateDir   = "/run/zcfabric"
	DefaultControl    = "zchost.sock" // inside StateDir
	DefaultQueueLen   = 4096
	DefaultBufferSize = 2048
	DefaultVMRecover  = 10 * time.Second
)

// Load reads and parses the configuration file at path; errors name path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agentconf: read %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses a configuration file's contents; name is the file name
// errors carry. Every error is an *Error.
func Parse(name string, data []byte) (*File, error) {
	ix := buildIndex(data)
	var raw rawFile
	if err := decode(data, &raw); err != nil {
		return nil, ix.decodeError(name, err)
	}
	if err := ix.checkKinds(name); err != nil {
		return nil, err
	}
	return convert(name, ix, &raw)
}
