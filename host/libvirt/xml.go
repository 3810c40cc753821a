package libvirt

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
)

// ShmDir is where libvirt's <shmem name='N'> device maps its memory from:
// the QEMU memory backend's mem-path is always ShmDir/N.
const ShmDir = "/dev/shm"

// Attachment is an ivshmem-plain or ivshmem-doorbell <shmem> device in a
// running domain: what [Domain.Detach] needs to remove it.
type Attachment struct {
	// Alias is the device's alias in the domain XML, which is also QEMU's
	// device id ("ua-zc-..." for the devices AttachRegion adds, "shmem0"
	// for those libvirt named).
	Alias string
	// Name is the shmem name: the region file is ShmDir/Name.
	Name string
	// Path is ShmDir/Name.
	Path string
	// Size is the region size in bytes (0 for a doorbell device listed
	// by [Domain.Regions]: its XML has no size).
	Size uint64
	// Server is, for an ivshmem-doorbell device only, the socket path of
	// its ivshmem server (<server path>); "" for ivshmem-plain. The memory
	// of a doorbell device is what the server sends, and Name only labels
	// it.
	Server string
	// Vectors is a doorbell device's number of MSI-X vectors (<msi
	// vectors>), 0 when the XML does not say.
	Vectors int
}

// ChardevID returns the id of the socket chardev libvirt gives QEMU for a
// doorbell device ("char" + alias, measured on libvirt 9.0), or "" for an
// ivshmem-plain device.
func (a Attachment) ChardevID() string {
	if a.Server == "" {
		return ""
	}
	return "char" + a.Alias
}

// MemID returns the id of the memory-backend-file object libvirt gives
// QEMU for the device ("shmmem-" + alias, measured on libvirt 9.0).
func (a Attachment) MemID() string { return "shmmem-" + a.Alias }

// shmemXML is libvirt's <shmem> device element.
type shmemXML struct {
	XMLName xml.Name `xml:"shmem"`
	Name    string   `xml:"name,attr"`
	Model   *struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
	Size *struct {
		Unit  string `xml:"unit,attr,omitempty"`
		Value string `xml:",chardata"`
	} `xml:"size"`
	Alias *struct {
		Name string `xml:"name,attr"`
	} `xml:"alias"`
	Server *struct {
		Path string `xml:"path,attr"`
	} `xml:"server"`
	MSI *struct {
		Vectors string `xml:"vectors,attr"`
	} `xml:"msi"`
}

// ShmemXML returns the device XML that hot-plugs the region ShmDir/name
// of size bytes as an ivshmem-plain device with the given user alias
// (libvirt wants user aliases to start with "ua-").
func ShmemXML(name string, size uint64, alias string) (string, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return "", fmt.Errorf("shmem name %q: must be a non-empty file name", name)
	}
	if !validAlias(alias) {
		return "", fmt.Errorf("alias %q: want ua- followed by letters, digits, '-' or '_'", alias)
	}
	var b strings.Builder
	b.WriteString("<shmem name='")
	if err := xml.EscapeText(&b, []byte(name)); err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "'><model type='ivshmem-plain'/><size unit='B'>%d</size><alias name='%s'/></shmem>", size, alias)
	return b.String(), nil
}

// validAlias reports whether s is a libvirt user alias: "ua-" then
// letters, digits, '-' and '_'.
func validAlias(s string) bool {
	rest, ok := strings.CutPrefix(s, "ua-")
	if !ok || rest == "" {
		return false
	}
	for _, r := range rest {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
		default:
			return false
		}
	}
	return true
}

// aliasCounter numbers the attachments this process makes.
var aliasCounter atomic.Uint64

// newAlias returns a fresh user alias. libvirt names the QEMU memory
// backend after the alias, and QEMU 7.2 may abort when an object id freed
// by object-del is used again (libvirt's own aliases, shmem0, shmem1, ...
// are reused), so aliases combine the process id, a counter and 32 random
// bits. label, sanitised, makes them readable.
func newAlias(label string) string {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	var l strings.Builder
	for _, r := range label {
		if l.Len() == 24 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			l.WriteRune(r)
		}
	}
	s := "ua-zc-"
	if l.Len() > 0 {
		s += l.String() + "-"
	}
	return fmt.Sprintf("%s%d-%d-%s", s, os.Getpid(), aliasCounter.Add(1), hex.EncodeToString(rnd[:]))
}

// domainXML is the part of a live domain XML this package reads.
type domainXML struct {
	Shmems    []shmemXML `xml:"devices>shmem"`
	SecLabels []struct {
		Model   string `xml:"model,attr"`
		Relabel string `xml:"relabel,attr"`
		Label   string `xml:"label"`
	} `xml:"seclabel"`
}

// dacLabel is the user and group libvirt's DAC security driver runs QEMU
// as, from <seclabel model='dac'><label>+UID:+GID</label>.
type dacLabel struct {
	set      bool
	uid, gid int
}

// parseDomain reads the ivshmem-plain and ivshmem-doorbell shmem devices
// (sorted by alias) and the DAC label from a live domain XML.
func parseDomain(doc string) ([]Attachment, dacLabel, error) {
	var d domainXML
	if err := xml.Unmarshal([]byte(doc), &d); err != nil {
		return nil, dacLabel{}, fmt.Errorf("parse domain XML: %w", err)
	}
	var out []Attachment
	for _, s := range d.Shmems {
		model := "ivshmem-plain" // libvirt's default for a new device
		if s.Model != nil {
			model = s.Model.Type
		}
		if model != "ivshmem-plain" && model != "ivshmem-doorbell" {
			continue
		}
		a := Attachment{Name: s.Name, Path: path.Join(ShmDir, s.Name)}
		if model == "ivshmem-doorbell" {
			// libvirt's default server path when <server> has none.
			a.Server = "/var/lib/libvirt/shmem-" + s.Name + "-sock"
			if s.Server != nil && s.Server.Path != "" {
				a.Server = s.Server.Path
			}
			if s.MSI != nil {
				a.Vectors, _ = strconv.Atoi(s.MSI.Vectors)
			}
		}
		if s.Alias != nil {
			a.Alias = s.Alias.Name
		}
		if s.Size != nil {
			n, err := scaled(s.Size.Value, s.Size.Unit)
			if err != nil {
				return nil, dacLabel{}, fmt.Errorf("shmem %s size: %w", s.Name, err)
			}
			a.Size = n
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Alias < out[j].Alias })
	var dac dacLabel
	for _, l := range d.SecLabels {
		if l.Model != "dac" || l.Relabel == "no" || l.Label == "" {
			continue
		}
		uid, gid, err := parseDAC(l.Label)
		if err != nil {
			return nil, dacLabel{}, err
		}
		dac = dacLabel{set: true, uid: uid, gid: gid}
	}
	return out, dac, nil
}

// parseDAC reads libvirt's DAC label "+UID:+GID" (numeric, as libvirt
// reports a running domain's label).
func parseDAC(s string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(strings.TrimSpace(s), ":")
	if ok {
		uid, err = strconv.Atoi(strings.TrimPrefix(u, "+"))
		if err == nil {
			gid, err = strconv.Atoi(strings.TrimPrefix(g, "+"))
		}
	}
	if !ok || err != nil || uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("DAC label %q: want +UID:+GID", s)
	}
	return uid, gid, nil
}

// units are libvirt's scaled-integer units.
var units = map[string]uint64{
	"": 1, "b": 1, "bytes": 1,
	"kb": 1000, "k": 1 << 10, "kib": 1 << 10,
	"mb": 1000 * 1000, "m": 1 << 20, "mib": 1 << 20,
	"gb": 1000 * 1000 * 1000, "g": 1 << 30, "gib": 1 << 30,
	"tb": 1000 * 1000 * 1000 * 1000, "t": 1 << 40, "tib": 1 << 40,
}

// scaled parses a libvirt scaled integer; a shmem size without a unit is
// in bytes.
func scaled(v, unit string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, err
	}
	m, ok := units[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	if n > ^uint64(0)/m {
		return 0, fmt.Errorf("%s %s overflows", v, unit)
	}
	return n * m, nil
}
