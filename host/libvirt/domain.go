package libvirt

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// DefaultDetachTimeout bounds the wait for the device to leave the domain
// when Detach's context has no deadline.
const DefaultDetachTimeout = 10 * time.Second

// minSize is the smallest shmem libvirt accepts in a domain definition.
const minSize = 1 << 20

// pollInterval is how often Detach rereads the live XML while the guest
// acknowledges the unplug (~65 ms under TCG for an idle guest).
const pollInterval = 10 * time.Millisecond

// Domain is a connection to libvirt holding one running domain, used to
// hot-plug and unplug regions. Its methods may be called concurrently
// (go-libvirt multiplexes requests on the connection).
type Domain struct {
	l    *golibvirt.Libvirt
	dom  golibvirt.Domain
	spec Spec
}

// Dial connects to the libvirt daemon named by spec and looks the domain
// up. ctx bounds the connection and the lookup. A domain libvirt does not
// know is [ErrNoDomain].
func Dial(ctx context.Context, spec Spec) (*Domain, error) {
	d, err := dial(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("zc: connect to libvirt domain %s: %w", spec.Domain, err)
	}
	return d, nil
}

// connect opens a connection to the libvirt daemon spec names.
func connect(ctx context.Context, spec Spec) (*golibvirt.Libvirt, error) {
	timeout := 15 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	var l *golibvirt.Libvirt
	uri := golibvirt.QEMUSystem
	if spec.URI != "" {
		u, err := url.Parse(spec.URI)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadSpec, err)
		}
		if err := call(ctx, func() (err error) { l, err = golibvirt.ConnectToURI(u); return err }); err != nil {
			return nil, fmt.Errorf("libvirt %s: %w", spec.URI, err)
		}
	} else {
		sock := spec.Socket
		if sock == "" {
			sock = DefaultSocket
		}
		l = golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(timeout)))
		if err := call(ctx, func() error { return l.ConnectToURI(uri) }); err != nil {
			return nil, fmt.Errorf("libvirt at %s: %w", sock, err)
		}
	}
	return l, nil
}

// DialName connects to the domain a VM name names, libvirt:DOMAIN
// [@SOCKET|URI] (ParseSpec, then Dial).
func DialName(ctx context.Context, name string) (*Domain, Spec, error) {
	spec, err := ParseSpec(name)
	if err != nil {
		return nil, spec, err
	}
	d, err := Dial(ctx, spec)
	return d, spec, err
}

func dial(ctx context.Context, spec Spec) (*Domain, error) {
	l, err := connect(ctx, spec)
	if err != nil {
		return nil, err
	}
	d := &Domain{l: l, spec: spec}
	err = call(ctx, func() (err error) { d.dom, err = l.DomainLookupByName(spec.Domain); return err })
	if err != nil {
		_ = l.Disconnect()
		if isNoDomain(err) {
			return nil, fmt.Errorf("%w: %v", ErrNoDomain, err)
		}
		return nil, err
	}
	return d, nil
}

// call runs a blocking go-libvirt request and returns early with ctx's
// error when ctx ends first (the request may still complete).
func call(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Name returns how errors name the domain: its spec, e.g. libvirt:web1.
func (d *Domain) Name() string { return d.spec.String() }

// Close disconnects from libvirt. Attachments stay in the domain.
func (d *Domain) Close() error {
	if err := d.l.Disconnect(); err != nil {
		return fmt.Errorf("zc: disconnect from libvirt domain %s: %w", d.spec.Domain, err)
	}
	return nil
}

// AttachSpec says which region file to hot-plug.
type AttachSpec struct {
	// Path is the region's backing file; it must be directly in ShmDir
	// ([ErrNotDevShm]) and exist ([ErrNoRegion]).
	Path string
	// Size is the region size in bytes: a power of two, at least 1 MiB, and
	// the file's size. Zero means the file's size.
	Size uint64
	// Name labels the device alias (e.g. "c99"); optional.
	Name string
}

// AttachRegion hot-plugs the region as libvirt's own <shmem> device
// (model ivshmem-plain) with a fresh user alias, so that libvirt knows it:
// it shows in the domain's live XML. When the
// domain's DAC label runs QEMU as a user other than root and the file
// belongs to someone else, the file is first given to that user and group,
// as libvirt does for disk images (libvirt 9.0 does not relabel shmem
// files; QEMU's open fails with EACCES).
func (d *Domain) AttachRegion(ctx context.Context, spec AttachSpec) (Attachment, error) {
	a, err := d.attach(ctx, spec)
	if err != nil {
		return Attachment{}, fmt.Errorf("zc: attach region %s to libvirt domain %s: %w", spec.Path, d.spec.Domain, err)
	}
	return a, nil
}

func (d *Domain) attach(ctx context.Context, spec AttachSpec) (Attachment, error) {
	p := filepath.Clean(spec.Path)
	if !filepath.IsAbs(p) || filepath.Dir(p) != ShmDir {
		return Attachment{}, fmt.Errorf("%w (<shmem name> is a file name in %s; run zchost with ZC_DIR=%s, the default, and --backing shm)", ErrNotDevShm, ShmDir, ShmDir)
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return Attachment{}, fmt.Errorf("%w: %v", ErrNoRegion, err)
	}
	if err != nil {
		return Attachment{}, err
	}
	if !fi.Mode().IsRegular() {
		return Attachment{}, fmt.Errorf("%w: %s is not a regular file (a symlink to hugetlbfs or a memfd cannot be shared through libvirt)", ErrNotDevShm, p)
	}
	size := spec.Size
	if size == 0 {
		size = uint64(fi.Size())
	}
	switch {
	case size != uint64(fi.Size()):
		return Attachment{}, fmt.Errorf("%w: %d bytes asked, the file has %d", ErrBadSize, size, fi.Size())
	case size < minSize || bits.OnesCount64(size) != 1:
		return Attachment{}, fmt.Errorf("%w: %d bytes (want a power of two, at least 1 MiB)", ErrBadSize, size)
	}
	_, dac, err := d.live(ctx)
	if err != nil {
		return Attachment{}, err
	}
	if err := grant(p, fi, dac); err != nil {
		return Attachment{}, err
	}
	a := Attachment{Alias: newAlias(spec.Name), Name: filepath.Base(p), Path: p, Size: size}
	doc, err := ShmemXML(a.Name, a.Size, a.Alias)
	if err != nil {
		return Attachment{}, err
	}
	if err := call(ctx, func() error {
		return d.l.DomainAttachDeviceFlags(d.dom, doc, uint32(golibvirt.DomainAffectLive))
	}); err != nil {
		return Attachment{}, fmt.Errorf("attach device %s: %w", a.Alias, err)
	}
	return a, nil
}

// grant gives the region file to QEMU's DAC user and group when QEMU does
// not run as root and does not own it yet.
func grant(p string, fi os.FileInfo, dac dacLabel) error {
	if !dac.set || dac.uid == 0 {
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == dac.uid && int(st.Gid) == dac.gid {
		return nil
	}
	if err := os.Lchown(p, dac.uid, dac.gid); err != nil {
		return fmt.Errorf("give %s to QEMU's user %d:%d: %w", p, dac.uid, dac.gid, err)
	}
	return nil
}

// live reads the domain's live XML.
func (d *Domain) live(ctx context.Context) ([]Attachment, dacLabel, error) {
	var doc string
	if err := call(ctx, func() (err error) { doc, err = d.l.DomainGetXMLDesc(d.dom, 0); return err }); err != nil {
		return nil, dacLabel{}, fmt.Errorf("read domain XML: %w", err)
	}
	return parseDomain(doc)
}

// Regions lists the ivshmem-plain and ivshmem-doorbell <shmem> devices in
// the domain's live XML, whoever added them: the attachments
// [Domain.Detach] can remove. A doorbell device has Server set.
func (d *Domain) Regions(ctx context.Context) ([]Attachment, error) {
	as, _, err := d.live(ctx)
	if err != nil {
		return nil, fmt.Errorf("zc: list regions of libvirt domain %s: %w", d.spec.Domain, err)
	}
	return as, nil
}

// Detach unplugs the device with a's alias (virDomainDetachDeviceAlias,
// live) and waits until libvirt has removed it from the live XML, which it
// does on QEMU's DEVICE_DELETED after the guest acknowledged the ACPI eject
// (libvirt then deletes the memory backend itself, or for a doorbell
// device the chardev, which closes QEMU's connection to the server). The wait ends with
// [ErrDetachTimeout] at ctx's deadline, or after [DefaultDetachTimeout]
// when ctx has none. A device already gone counts as unplugged. The region
// file stays.
func (d *Domain) Detach(ctx context.Context, a Attachment) error {
	if err := d.detach(ctx, a); err != nil {
		return fmt.Errorf("zc: detach region %s (%s) from libvirt domain %s: %w", a.Path, a.Alias, d.spec.Domain, err)
	}
	return nil
}

func (d *Domain) detach(ctx context.Context, a Attachment) error {
	if a.Alias == "" {
		return errors.New("no device alias")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDetachTimeout)
		defer cancel()
	}
	present := func() (bool, error) {
		as, _, err := d.live(ctx)
		if err != nil {
			return false, err
		}
		for _, x := range as {
			if x.Alias == a.Alias {
				return true, nil
			}
		}
		return false, nil
	}
	there, err := present()
	if err != nil || !there {
		return err
	}
	if err := call(ctx, func() error {
		return d.l.DomainDetachDeviceAlias(d.dom, a.Alias, uint32(golibvirt.DomainAffectLive))
	}); err != nil {
		if there, perr := present(); perr == nil && !there {
			return nil // removed meanwhile
		}
		return fmt.Errorf("detach device %s: %w", a.Alias, err)
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		there, err := present()
		if err != nil && ctx.Err() == nil {
			return err
		}
		if err == nil && !there {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return ErrDetachTimeout
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}
