package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// VM is a QMP connection to one running QEMU process, used to hot-plug and
// unplug regions. Its methods are safe for concurrent use.
type VM struct {
	mon  goqmp.Monitor
	name string // how errors name the VM: its socket path

	attachMu sync.Mutex // serialises root-port choice and device_add

	waitMu  sync.Mutex
	waiters map[string]chan struct{} // device id → closed on DEVICE_DELETED

	stop   context.CancelFunc
	evDone chan struct{}
}

// Dial connects to the QMP socket of a running QEMU (started with e.g.
// -qmp unix:PATH,server=on,wait=off), negotiates capabilities and returns a
// VM. ctx bounds the dial and the handshake only. QEMU serves one client
// per QMP socket at a time: while another client is connected the greeting
// does not come, so give ctx a deadline.
func Dial(ctx context.Context, socketPath string) (*VM, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("zc: connect to vm %s: %w", socketPath, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	mon := NewSocketMonitor(conn)
	if err := mon.Connect(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("zc: connect to vm %s: %w", socketPath, err)
	}
	_ = conn.SetDeadline(time.Time{})
	vm, err := New(mon, socketPath)
	if err != nil {
		mon.Disconnect()
		return nil, err
	}
	return vm, nil
}

// New returns a VM over an already connected Monitor, such as go-qemu's
// SocketMonitor or a qmptest fake. name is how errors refer to the VM. The
// VM listens to mon's events until Close. Monitors other than
// [SocketMonitor] may report QMP failures without their class; such errors
// do not match the class sentinels.
func New(mon goqmp.Monitor, name string) (*VM, error) {
	ctx, stop := context.WithCancel(context.Background())
	events, err := mon.Events(ctx)
	if err != nil {
		stop()
		return nil, fmt.Errorf("zc: listen to events of vm %s: %w", name, err)
	}
	vm := &VM{
		mon:     mon,
		name:    name,
		waiters: make(map[string]chan struct{}),
		stop:    stop,
		evDone:  make(chan struct{}),
	}
	go vm.dispatch(events)
	return vm, nil
}

// Name returns the name errors use for the VM (its QMP socket path for a
// VM from [Dial]).
func (vm *VM) Name() string { return vm.name }

// Close disconnects from QMP. Attachments stay in the VM.
func (vm *VM) Close() error {
	vm.stop()
	err := vm.mon.Disconnect()
	if err != nil {
		return fmt.Errorf("zc: disconnect from vm %s: %w", vm.name, err)
	}
	return nil
}

// dispatch wakes Detach calls waiting for DEVICE_DELETED. It drains the
// event channel until it closes, which go-qemu's SocketMonitor requires.
func (vm *VM) dispatch(events <-chan goqmp.Event) {
	defer close(vm.evDone)
	for ev := range events {
		if ev.Event != "DEVICE_DELETED" {
			continue
		}
		id, _ := ev.Data["device"].(string)
		vm.waitMu.Lock()
		if ch, ok := vm.waiters[id]; ok {
			close(ch)
			delete(vm.waiters, id)
		}
		vm.waitMu.Unlock()
	}
}

// expectDeleted registers interest in DEVICE_DELETED for id before the
// command that triggers it is sent. The returned func unregisters.
func (vm *VM) expectDeleted(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	vm.waitMu.Lock()
	vm.waiters[id] = ch
	vm.waitMu.Unlock()
	return ch, func() {
		vm.waitMu.Lock()
		if vm.waiters[id] == ch {
			delete(vm.waiters, id)
		}
		vm.waitMu.Unlock()
	}
}

// command is a QMP command on the wire.
type command struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

// execute runs one command and decodes its "return" into out (if non-nil).
// files go to QEMU with the command (see [VM.run]). If ctx ends first,
// execute returns ctx's error; the command may still complete in QEMU.
func (vm *VM) execute(ctx context.Context, cmd string, args, out any, files ...*os.File) error {
	b, err := json.Marshal(command{Execute: cmd, Arguments: args})
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	type result struct {
		raw []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		raw, err := vm.run(b, files)
		done <- result{raw, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
	if res.err != nil {
		var qe *Error
		if errors.As(res.err, &qe) {
			return qe
		}
		return fmt.Errorf("qmp %s: %w", cmd, res.err)
	}
	if out == nil {
		return nil
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(res.raw, &reply); err != nil {
		return fmt.Errorf("qmp %s: bad reply: %w", cmd, err)
	}
	if err := json.Unmarshal(reply.Return, out); err != nil {
		return fmt.Errorf("qmp %s: bad reply: %w", cmd, err)
	}
	return nil
}
