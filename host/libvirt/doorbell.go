package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// DoorbellSpec says which ivshmem server to hot-plug an ivshmem-doorbell
// <shmem> for.
type DoorbellSpec struct {
	// Socket is the unix socket of the ivshmem server (host/doorbell). QEMU
	// connects to it as a client: AttachDoorbell gives the socket file to
	// QEMU's DAC user; its directory must let that user through (see
	// [Domain.QEMUOwner]).
	Socket string
	// Region is the region file the server shares. Its base name becomes
	// the <shmem name>, which only labels the device (the memory is the
	// descriptor the server sends, wherever the file is).
	Region string
	// Size is the region size, a power of two. libvirt 9.0 refuses a
	// <size> on a doorbell device ("does not support size setting"): QEMU
	// takes the size from the descriptor. It is checked here and returned
	// in the Attachment, but [Domain.Regions] reports 0.
	Size uint64
	// Vectors is the device's number of MSI-X vectors (0 means 1).
	Vectors int
	// Name labels the device alias (e.g. "c99"); optional.
	Name string
}

// DoorbellXML returns the device XML that hot-plugs an ivshmem-doorbell
// device named name (a label) whose memory and interrupts come from the
// ivshmem server at socket:
//
//	<shmem name='NAME'><model type='ivshmem-doorbell'/>
//	  <server path='SOCKET'/><msi vectors='N' ioeventfd='on'/><alias name='ALIAS'/>
//	  [<address type='pci' domain='0x0000' bus='0xBB' slot='0x00' function='0x0'/>]</shmem>
//
// bus >= 0 places the device on the PCI bus of that controller index
// (a pcie-root-port on q35); -1 lets libvirt pick.
func DoorbellXML(name string, socket string, vectors int, alias string, bus int) (string, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("shmem name %q: must be a non-empty file name", name)
	}
	if !validAlias(alias) {
		return "", fmt.Errorf("alias %q: want ua- followed by letters, digits, '-' or '_'", alias)
	}
	if !filepath.IsAbs(socket) {
		return "", fmt.Errorf("server socket %q: want an absolute path", socket)
	}
	if vectors <= 0 {
		vectors = 1
	}
	var b strings.Builder
	b.WriteString("<shmem name='")
	if err := xml.EscapeText(&b, []byte(name)); err != nil {
		return "", err
	}
	b.WriteString("'><model type='ivshmem-doorbell'/><server path='")
	if err := xml.EscapeText(&b, []byte(socket)); err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "'/><msi vectors='%d' ioeventfd='on'/><alias name='%s'/>", vectors, alias)
	if bus >= 0 {
		fmt.Fprintf(&b, "<address type='pci' domain='0x0000' bus='%#02x' slot='0x00' function='0x0'/>", bus)
	}
	b.WriteString("</shmem>")
	return b.String(), nil
}

// AttachDoorbell hot-plugs an ivshmem-doorbell <shmem> device served by
// the ivshmem server at spec.Socket (virDomainAttachDeviceFlags, live).
// libvirt 9.0 adds the socket chardev "char"+ALIAS (chardev-add, QEMU
// connects as a client) and then device_add ivshmem-doorbell
// chardev=charALIAS vectors=N ioeventfd=on, so the server must be serving
// (QEMU reads its setup messages inside device_add). On detach, libvirt
// removes the chardev after DEVICE_DELETED, which closes QEMU's
// connection to the server.
//
// libvirt gives a <shmem> the connection type of a conventional PCI
// device, and on q35 found no hot-pluggable slot for one ("No more
// available PCI slots"). So on a domain with a pcie-root, the device goes to
// the first pcie-root-port that has no device (an explicit address, which
// libvirt allows for either kind of device); a domain with no free port
// gets libvirt's own choice (and its error). The region's size must fit
// the port's prefetchable window (QEMU's pref64-reserve).
//
// The socket file is given to QEMU's DAC user and group, as
// [Domain.AttachRegion] does with region files: libvirt 9.0 does not
// relabel a shmem server's socket on hot-plug (chardev-add failed with
// "Permission denied" on a root-owned 0600 socket).
func (d *Domain) AttachDoorbell(ctx context.Context, spec DoorbellSpec) (Attachment, error) {
	a, err := d.attachDoorbell(ctx, spec)
	if err != nil {
		return Attachment{}, fmt.Errorf("zc: attach doorbell %s to libvirt domain %s: %w", spec.Socket, d.spec.Domain, err)
	}
	return a, nil
}

func (d *Domain) attachDoorbell(ctx context.Context, spec DoorbellSpec) (Attachment, error) {
	if spec.Size == 0 || bits.OnesCount64(spec.Size) != 1 {
		return Attachment{}, fmt.Errorf("%w: %d bytes (want a power of two)", ErrBadSize, spec.Size)
	}
	fi, err := os.Lstat(spec.Socket)
	if err != nil {
		return Attachment{}, fmt.Errorf("server socket: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return Attachment{}, fmt.Errorf("server socket %s is not a socket", spec.Socket)
	}
	doc, err := d.xml(ctx)
	if err != nil {
		return Attachment{}, err
	}
	_, dac, err := parseDomain(doc)
	if err != nil {
		return Attachment{}, err
	}
	bus, err := freeRootPort(doc)
	if err != nil {
		return Attachment{}, err
	}
	if err := grant(spec.Socket, fi, dac); err != nil {
		return Attachment{}, err
	}
	vectors := max(spec.Vectors, 1)
	name := filepath.Base(spec.Region)
	a := Attachment{Alias: newAlias(spec.Name), Name: name, Path: filepath.Join(ShmDir, name), Size: spec.Size, Server: spec.Socket, Vectors: vectors}
	dev, err := DoorbellXML(a.Name, a.Server, vectors, a.Alias, bus)
	if err != nil {
		return Attachment{}, err
	}
	if err := call(ctx, func() error {
		return d.l.DomainAttachDeviceFlags(d.dom, dev, uint32(golibvirt.DomainAffectLive))
	}); err != nil {
		return Attachment{}, fmt.Errorf("attach device %s: %w", a.Alias, err)
	}
	return a, nil
}

// QEMUOwner returns the user and group libvirt's DAC driver runs the
// domain's QEMU as (its live <seclabel model='dac'>); ok is false when the
// domain has no DAC label. A caller that makes a directory for a doorbell
// socket gives it to this user when it is not root.
func (d *Domain) QEMUOwner(ctx context.Context) (uid, gid int, ok bool, err error) {
	_, dac, err := d.live(ctx)
	if err != nil {
		return 0, 0, false, fmt.Errorf("zc: QEMU user of libvirt domain %s: %w", d.spec.Domain, err)
	}
	return dac.uid, dac.gid, dac.set, nil
}

// xml reads the domain's live XML.
func (d *Domain) xml(ctx context.Context) (string, error) {
	var doc string
	if err := call(ctx, func() (err error) { doc, err = d.l.DomainGetXMLDesc(d.dom, 0); return err }); err != nil {
		return "", fmt.Errorf("read domain XML: %w", err)
	}
	return doc, nil
}

// freeRootPort returns the controller index of the first pcie-root-port
// in the live domain XML doc on whose bus no device sits, or -1 when the
// domain has no pcie-root (pc machine: libvirt picks a slot on pci.0) or
// no free port (libvirt picks, or fails).
func freeRootPort(doc string) (int, error) {
	dec := xml.NewDecoder(strings.NewReader(doc))
	var (
		pcie  bool
		ports []int
		used  = map[int]bool{}
		depth int
	)
	attr := func(e xml.StartElement, name string) string {
		for _, a := range e.Attr {
			if a.Name.Local == name {
				return a.Value
			}
		}
		return ""
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return -1, fmt.Errorf("parse domain XML: %w", err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			depth++
			switch e.Name.Local {
			case "controller":
				if attr(e, "type") != "pci" {
					continue
				}
				switch attr(e, "model") {
				case "pcie-root":
					pcie = true
				case "pcie-root-port":
					if i, err := strconv.Atoi(attr(e, "index")); err == nil {
						ports = append(ports, i)
					}
				}
			case "address":
				if attr(e, "type") != "pci" || depth != 4 { // domain > devices > device > address (not a hostdev's <source><address>)
					continue
				}
				if b, err := strconv.ParseInt(attr(e, "bus"), 0, 32); err == nil {
					used[int(b)] = true
				}
			}
		case xml.EndElement:
			depth--
		}
	}
	if !pcie {
		return -1, nil
	}
	sort.Ints(ports)
	for _, p := range ports {
		if !used[p] {
			return p, nil
		}
	}
	return -1, nil
}
