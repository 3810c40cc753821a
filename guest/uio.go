package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Registers of an ivshmem device's BAR0 (QEMU docs/specs/ivshmem-spec.rst),
// byte offsets; each is 32 bits wide and takes 4-byte accesses only.
const (
	// RegIntrMask and RegIntrStatus drive INTx, which QEMU's
	// ivshmem-doorbell never raises (it interrupts through MSI-X only).
	RegIntrMask   = 0
	RegIntrStatus = 4
	// RegIVPosition reads the device's own peer id (0 without a server).
	RegIVPosition = 8
	// RegDoorbell rings a peer: write peer<<16 | vector.
	RegDoorbell = 12
)

// DriverVFIO is the in-tree driver that takes a doorbell's interrupts.
const DriverVFIO = "vfio-pci"

// Sentinel errors callers branch on.
var (
	// ErrNoInterrupts means the guest cannot take the doorbell's
	// interrupts, so Wait cannot work and the caller must poll. The
	// error wrapping it says why (no IOMMU, vfio-pci not loaded, an
	// ivshmem-plain device). Ringing other peers works regardless.
	ErrNoInterrupts = errors.New("no doorbell interrupts in this guest")
	// ErrDoorbellGone means the device is being unplugged (the kernel
	// asked for it back) or is gone; the doorbell released it.
	ErrDoorbellGone = errors.New("doorbell device went away")
	// ErrDoorbellClosed means Close was called.
	ErrDoorbellClosed = errors.New("doorbell closed")
)

// DoorbellOptions tune [OpenDoorbell].
type DoorbellOptions struct {
	// NoBind leaves the device's driver alone: interrupts then work only
	// if it is bound to vfio-pci already. By default OpenDoorbell binds it
	// (driver_override, then drivers_probe), unbinding another driver.
	NoBind bool
	// DevDir is where device nodes are ("" means /dev). Missing VFIO
	// nodes are created there from sysfs (mknod), for guests whose /dev is
	// not a devtmpfs.
	DevDir string
}

// Doorbell is the guest's end of an ivshmem-doorbell device: it rings
// peers through the Doorbell register of BAR0 (mapped through sysfs's
// resource0, no driver needed) and, when the guest can take the device's
// MSI-X interrupts, waits for them. The only module-free way to take them
// is VFIO (in-tree vfio-pci): the device must have an IOMMU group, i.e. the
// VM has a virtual IOMMU (q35 with -device intel-iommu,intremap=on), or the
// guest kernel has VFIO's no-IOMMU mode enabled. Without, [Doorbell.Wait]
// returns [ErrNoInterrupts] and the caller polls. BAR2 (the region) is
// mapped as before with [Device.Map], whichever driver is bound.
//
// VFIO lets one process at a time hold a device. The first process of
// the guest to open the doorbell holds its interrupts and passes each one
// on to the other processes that open it (see share.go: an abstract unix
// socket named after the device, an eventfd per process), so that every
// reader of the device's queues sleeps. When that process closes the
// doorbell or exits, one of the others takes the interrupts over. A
// process that gets its interrupts from another sees every interrupt as
// vector 0.
//
// Ring, IVPosition and Wait are safe for concurrent use; Ring and
// IVPosition allocate nothing.
type Doorbell struct {
	dev    Device
	regs   []byte // BAR0, one page
	devDir string // where the VFIO nodes are, for a takeover

	noIntr error                 // why Wait cannot work; nil when it can
	lost   atomic.Pointer[error] // the interrupts were lost later (no takeover)

	mu       sync.Mutex // guards what follows
	v        *vfio      // this process holds the interrupts ...
	share    *bellShare // ... and passes them on (nil if it could not)
	sub      *net.UnixConn
	subEv    *os.File // or another process passes them on through these,
	held     *vfio    // with its VFIO descriptors, kept for a takeover
	isClosed bool

	pending  atomic.Uint64 // vectors that fired since the last Wait
	sig      chan struct{} // a vector fired (capacity 1)
	gone     chan struct{} // closed when the device went away
	goneOnce sync.Once
	readers  sync.WaitGroup // one goroutine per eventfd

	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error
}

// OpenDoorbell maps d's BAR0 and arms its interrupts where it can (see
// [Doorbell]). It fails only when BAR0 cannot be mapped; a guest that
// cannot take interrupts gets a Doorbell whose [Doorbell.Interrupts] says
// why.
func OpenDoorbell(d Device, opts DoorbellOptions) (*Doorbell, error) {
	b, err := openDoorbell(d, opts)
	if err != nil {
		return nil, fmt.Errorf("zc: open doorbell %s: %w", d.Addr, err)
	}
	return b, nil
}

func openDoorbell(d Device, opts DoorbellOptions) (*Doorbell, error) {
	regs, err := mapBAR0(d)
	if err != nil {
		return nil, err
	}
	b := &Doorbell{dev: d, regs: regs, devDir: opts.DevDir, sig: make(chan struct{}, 1), gone: make(chan struct{}), closed: make(chan struct{})}
	if b.devDir == "" {
		b.devDir = "/dev"
	}
	if b.subscribe() {
		return b, nil // another process of the guest holds the interrupts
	}
	if owns, _ := b.adopt(); owns {
		return b, nil // a reader without the interrupts handed the device over
	}
	v, err := openVFIO(d, b.devDir, !opts.NoBind)
	if err != nil && errors.Is(err, unix.EBUSY) {
		// Another process holds the device but does not share it (yet:
		// it listens just after it opened the device).
		terr := b.takeOver(time.Now().Add(time.Second))
		if terr == nil {
			return b, nil
		}
		err = fmt.Errorf("another process of this guest holds the device and does not share its interrupts: %w", terr)
	}
	if err != nil {
		if !errors.Is(err, ErrNoInterrupts) {
			// Whatever failed, the caller's answer is the same: poll.
			err = fmt.Errorf("%w: %w", ErrNoInterrupts, err)
		}
		b.noIntr = err
		return b, nil
	}
	b.ownOpened(v)
	return b, nil
}

// ownOpened takes the interrupts of v, a device this process opened, and
// shares them (without a share, this process alone sleeps).
func (b *Doorbell) ownOpened(v *vfio) {
	share, _ := listenShare(b.dev, v)
	b.own(v, share)
}

// own takes the interrupts of v (this process holds the device) and
// shares them with the guest's other processes through share (nil: it
// could not). It releases both when the doorbell was closed meanwhile.
func (b *Doorbell) own(v *vfio, share *bellShare) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.isClosed {
		if share != nil {
			share.close(false)
		}
		v.close()
		return
	}
	b.v, b.share = v, share
	for i, f := range v.irqs {
		b.readers.Add(1)
		go b.readIRQ(f, uint64(1)<<uint(i), share)
	}
	b.readers.Add(1)
	go b.readReq(v, share)
}

// subscribe gets the interrupts from the process of the guest that holds
// the device, if one shares them; it reports whether it did.
func (b *Doorbell) subscribe() bool {
	c, ev, held, err := dialShare(b.dev)
	if errors.Is(err, errHandedOver) {
		// Handed the device: keep the descriptors, for adopt.
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.isClosed {
			held.close()
		} else {
			b.keepHeld(held)
		}
		return false
	}
	if err != nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.isClosed {
		c.Close()
		ev.Close()
		if held != nil {
			held.close()
		}
		return true // nothing more to do
	}
	if held != nil {
		b.keepHeld(held)
	}
	b.sub, b.subEv = c, ev
	b.readers.Add(2)
	go b.readIRQ(ev, 1, nil)
	go b.watchOwner(c, ev)
	return true
}

// takeOverWait bounds a takeover (a variable for tests).
var takeOverWait = 2 * time.Second

// watchOwner waits for the end of a subscription: an unplug (the owner
// says so), or the owner stopped, in which case this process takes the
// interrupts over or subscribes to whoever did.
func (b *Doorbell) watchOwner(c *net.UnixConn, ev *os.File) {
	defer b.readers.Done()
	var m [1]byte
	n, _ := c.Read(m[:])
	b.mu.Lock()
	closing := b.isClosed
	if b.sub == c {
		b.sub, b.subEv = nil, nil
	}
	b.mu.Unlock()
	c.Close()
	ev.Close() // ends its readIRQ
	switch {
	case closing:
	case n == 1 && m[0] == shareGone:
		b.dropHeld() // let the unplug complete
		b.goneOnce.Do(func() { close(b.gone) })
	default:
		// An interrupt may have come while nobody passed it on: wake Wait
		// so that the caller looks at its queues.
		b.signal(1)
		if err := b.takeOver(time.Now().Add(takeOverWait)); err != nil {
			err = fmt.Errorf("%w: the process that shared the interrupts of %s stopped, and none could be taken over: %w", ErrNoInterrupts, b.dev.Addr, err)
			b.lost.Store(&err)
			b.signal(1)
		}
	}
}

// keepHeld keeps held, VFIO descriptors passed by an owner or a lender, in
// place of those kept before: the same open device, so closing those
// releases nothing (under b.mu).
func (b *Doorbell) keepHeld(held *vfio) {
	if b.held != nil {
		b.held.close()
	}
	b.held = held
}

// dropHeld closes the VFIO descriptors kept from the owner.
func (b *Doorbell) dropHeld() {
	b.mu.Lock()
	held := b.held
	b.held = nil
	b.mu.Unlock()
	if held != nil {
		held.close()
	}
}

// adopt makes this process the owner with the VFIO descriptors it kept
// from the owner before (the device stays open throughout): it listens
// first, which only one process of the guest can, then routes the
// vectors to eventfds of its own. It reports whether it holds the
// interrupts now; false with a nil error when another process listens
// (subscribe to it).
func (b *Doorbell) adopt() (bool, error) {
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	if held == nil {
		return false, nil
	}
	share, err := listenShare(b.dev, held)
	if err != nil {
		return false, nil // another process took them over: subscribe
	}
	b.mu.Lock()
	b.held = nil
	b.mu.Unlock()
	if err := held.arm(b.dev); err != nil {
		share.close(false)
		held.close()
		return false, err
	}
	b.own(held, share)
	return true, nil
}

// takeOver gets the interrupts of a device another process held (or
// holds): from whoever shares them now, with the descriptors the last
// owner passed, or by opening the device once the other process has
// released it. It retries until deadline or Close.
func (b *Doorbell) takeOver(deadline time.Time) error {
	for {
		if b.subscribe() {
			return nil
		}
		owns, err := b.adopt()
		if owns {
			return nil
		}
		if err == nil {
			var v *vfio
			if v, err = openVFIO(b.dev, b.devDir, false); err == nil {
				b.ownOpened(v)
				return nil
			}
		}
		if !errors.Is(err, unix.EBUSY) {
			return err // the device is gone, or no longer vfio-pci's
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the device stayed busy and nobody shared it: %w", err)
		}
		select {
		case <-b.closed:
			return ErrDoorbellClosed
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// mapBAR0 maps the device's register BAR through sysfs.
func mapBAR0(d Device) ([]byte, error) {
	f, err := os.OpenFile(filepath.Join(d.Dir, "resource0"), os.O_RDWR|unix.O_SYNC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := unix.Mmap(int(f.Fd()), 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap resource0: %w", err)
	}
	return b, nil
}

// Device returns the doorbell's device.
func (b *Doorbell) Device() Device { return b.dev }

// IVPosition returns the device's peer id, as the ivshmem server assigned
// it (0 on a device without a server).
func (b *Doorbell) IVPosition() uint16 { return uint16(load32(b.regs, RegIVPosition)) }

// Ring interrupts peer on vector: one 4-byte write of peer<<16|vector to
// the Doorbell register. QEMU turns it into a write on the peer's eventfd
// (the host's is package host/doorbell's HostID). A ring to a peer or
// vector that does not exist is dropped by QEMU.
func (b *Doorbell) Ring(peer, vector uint16) {
	store32(b.regs, RegDoorbell, uint32(peer)<<16|uint32(vector))
}

// Interrupts returns nil when Wait can block for interrupts, else an error
// wrapping [ErrNoInterrupts] that says why.
func (b *Doorbell) Interrupts() error {
	if p := b.lost.Load(); p != nil {
		return *p
	}
	return b.noIntr
}

// Wait blocks until the device interrupts this guest, and returns the set
// of vectors that fired since the last Wait (bit v for vector v; rings on
// one vector coalesce). It returns an error wrapping [ErrNoInterrupts] at
// once when the guest cannot take interrupts, [ErrDoorbellGone] when the
// device is unplugged (the kernel asked for it back: the doorbell has
// released it so that the unplug completes; the region's mapping reads
// zeros from then on), [ErrDoorbellClosed] after Close, or ctx's error.
//
// Interrupts sent before the doorbell was armed are lost (QEMU drops them
// while MSI-X is off): after OpenDoorbell, look at the queue once before
// the first Wait.
func (b *Doorbell) Wait(ctx context.Context) (uint64, error) {
	if b.noIntr != nil {
		return 0, b.noIntr
	}
	for {
		if p := b.pending.Swap(0); p != 0 {
			return p, nil
		}
		if p := b.lost.Load(); p != nil {
			return 0, *p
		}
		select {
		case <-b.sig:
		case <-b.gone:
			if p := b.pending.Swap(0); p != 0 {
				return p, nil
			}
			return 0, fmt.Errorf("zc: doorbell %s: %w", b.dev.Addr, ErrDoorbellGone)
		case <-b.closed:
			return 0, fmt.Errorf("zc: doorbell %s: %w", b.dev.Addr, ErrDoorbellClosed)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// readIRQ hands one vector's interrupts to Wait. The eventfd is read
// through the runtime poller: the goroutine parks without holding a thread,
// and Wait's goroutine runs as soon as it is readied (a reader blocked in a
// plain read(2) would hold the only P of a one-vCPU guest until sysmon
// takes it back, up to 10 ms later).
// With share, it passes each interrupt on to the guest's other processes.
func (b *Doorbell) readIRQ(f *os.File, bit uint64, share *bellShare) {
	defer b.readers.Done()
	var buf [8]byte
	for {
		if _, err := f.Read(buf[:]); err != nil {
			return
		}
		b.signal(bit)
		if share != nil {
			share.notify()
		}
	}
}

// signal records that the vectors in bits fired and wakes Wait.
func (b *Doorbell) signal(bits uint64) {
	b.pending.Or(bits)
	select {
	case b.sig <- struct{}{}:
	default:
	}
}

// readReq waits for the kernel's device request (an unplug): it releases
// the device at once, so the unplug never waits for the application, tells
// the processes it shares the interrupts with, and wakes Wait with
// ErrDoorbellGone.
func (b *Doorbell) readReq(v *vfio, share *bellShare) {
	defer b.readers.Done()
	var buf [8]byte
	if _, err := v.req.Read(buf[:]); err != nil {
		return // closed
	}
	v.close()
	if share != nil {
		share.close(true)
	}
	b.goneOnce.Do(func() { close(b.gone) })
}

// Close stops waiting (a blocked Wait returns [ErrDoorbellClosed]),
// releases the VFIO device (another process of the guest that shared its
// interrupts then takes them over) or ends this process's share of them,
// and unmaps BAR0. The device stays bound to vfio-pci; BAR2 mappings are
// not affected. Safe to call more than once.
func (b *Doorbell) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.isClosed = true
		v, share, sub, ev, held := b.v, b.share, b.sub, b.subEv, b.held
		b.held = nil
		b.mu.Unlock()
		close(b.closed)
		if share != nil {
			share.close(false) // the others take the interrupts over
		}
		if v != nil {
			v.close()
		}
		if sub != nil {
			sub.Close()
			ev.Close()
		}
		if held != nil {
			held.close()
		}
		b.readers.Wait()
		if err := unix.Munmap(b.regs); err != nil {
			b.closeErr = fmt.Errorf("zc: close doorbell %s: %w", b.dev.Addr, err)
		}
	})
	return b.closeErr
}

// sysfsRoot returns the sysfs root of a device directory
// <root>/bus/pci/devices/<addr>.
func sysfsRoot(dir string) string {
	return filepath.Dir(filepath.Dir(filepath.Dir(filepath.Dir(dir))))
}

// driverOf returns the name of the driver bound to the device, "" if none.
func driverOf(dir string) string {
	l, err := os.Readlink(filepath.Join(dir, "driver"))
	if err != nil {
		return ""
	}
	return filepath.Base(l)
}

// writeAttr writes s to a sysfs attribute.
func writeAttr(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", s, path, err)
	}
	return nil
}

// noIOMMUMode is the vfio module parameter that lets vfio-pci take devices
// without an IOMMU group (CONFIG_VFIO_NOIOMMU; not in Debian's kernels).
const noIOMMUMode = "module/vfio/parameters/enable_unsafe_noiommu_mode"

// bindVFIO binds the device to vfio-pci unless it is already: it sets
// driver_override, unbinds the current driver and asks the PCI core to
// probe the device again. When vfio-pci cannot take the device (it is not
// loaded, or the device has no IOMMU group and no-IOMMU mode is off) it
// changes nothing and returns an error wrapping ErrNoInterrupts; if the
// probe fails anyway, it gives the device back to its driver.
func bindVFIO(d Device) error {
	cur := driverOf(d.Dir)
	if cur == DriverVFIO {
		return nil
	}
	root := sysfsRoot(d.Dir)
	if _, err := os.Stat(filepath.Join(root, "bus", "pci", "drivers", DriverVFIO)); err != nil {
		return fmt.Errorf("%w: driver %s is not loaded (modprobe vfio-pci)", ErrNoInterrupts, DriverVFIO)
	}
	if _, err := os.Lstat(filepath.Join(d.Dir, "iommu_group")); err != nil {
		if b, _ := os.ReadFile(filepath.Join(root, noIOMMUMode)); strings.TrimSpace(string(b)) != "Y" {
			return fmt.Errorf("%w: the device has no IOMMU group, which %s needs: give the VM an IOMMU (q35 with -device intel-iommu,intremap=on), or load vfio with enable_unsafe_noiommu_mode=1 where the kernel has it",
				ErrNoInterrupts, DriverVFIO)
		}
	}
	override := filepath.Join(d.Dir, "driver_override")
	probe := filepath.Join(root, "bus", "pci", "drivers_probe")
	if err := writeAttr(override, DriverVFIO); err != nil {
		return err
	}
	if cur != "" {
		if err := writeAttr(filepath.Join(d.Dir, "driver", "unbind"), d.Addr); err != nil {
			return err
		}
	}
	perr := writeAttr(probe, d.Addr)
	if got := driverOf(d.Dir); got != DriverVFIO {
		err := fmt.Errorf("%w: %s did not take the device (driver now %q)", ErrNoInterrupts, DriverVFIO, got)
		if perr != nil {
			err = fmt.Errorf("%w: %v", err, perr)
		}
		// Give the device back: clear the override, probe again.
		_ = writeAttr(override, "\n")
		if cur != "" {
			_ = writeAttr(probe, d.Addr)
		}
		return err
	}
	return nil
}

// pciCommandMaster is the Bus Master bit of the PCI command register
// (config offset 4).
const pciCommandMaster = 1 << 2

// setBusMaster sets the device's Bus Master bit through sysfs's config
// file. An MSI-X interrupt is a memory write by the device: QEMU drops it
// while bus mastering is off, and vfio-pci leaves that bit to its user.
func setBusMaster(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "config"), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var cmd [2]byte
	if _, err := f.ReadAt(cmd[:], 4); err != nil {
		return fmt.Errorf("read PCI command: %w", err)
	}
	if cmd[0]&pciCommandMaster != 0 {
		return nil
	}
	cmd[0] |= pciCommandMaster
	if _, err := f.WriteAt(cmd[:], 4); err != nil {
		return fmt.Errorf("set Bus Master: %w", err)
	}
	return nil
}

// ensureNode creates the character device node path from the "MAJ:MIN" in
// the sysfs file devAttr, unless path exists.
func ensureNode(path, devAttr string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	b, err := os.ReadFile(devAttr)
	if err != nil {
		return fmt.Errorf("no %s and no %s: %w", path, devAttr, err)
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err != nil {
		return fmt.Errorf("parse %s: %w", devAttr, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(maj, min))); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mknod %s: %w", path, err)
	}
	return nil
}
