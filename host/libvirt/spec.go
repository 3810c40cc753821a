package libvirt

import (
	"fmt"
	"net/url"
	"strings"
)

// Prefix starts every VM name that means a libvirt domain, where zchost
// otherwise takes a QMP socket path.
const Prefix = "libvirt:"

// DefaultSocket is the libvirtd socket used when a spec names none.
const DefaultSocket = "/var/run/libvirt/libvirt-sock"

// Spec names a libvirt domain and how to reach its daemon.
type Spec struct {
	// Domain is the domain's name.
	Domain string
	// Socket is the path of libvirtd's (or virtqemud's) unix socket; set
	// when the spec gave a path, or gave nothing ([DefaultSocket]).
	Socket string
	// URI is a libvirt connection URI (qemu:///system,
	// qemu+unix:///system?socket=PATH, qemu+tcp://host/system, ...); set
	// instead of Socket when the spec gave one.
	URI string
}

// IsSpec reports whether s names a libvirt domain (starts with [Prefix]).
func IsSpec(s string) bool { return strings.HasPrefix(s, Prefix) }

// ParseSpec parses "libvirt:DOMAIN", "libvirt:DOMAIN@/path/to/libvirt-sock"
// or "libvirt:DOMAIN@URI". The domain name ends at the first '@', so it
// cannot contain one (a URI may: qemu+ssh://user@host/system). Errors
// match [ErrBadSpec].
func ParseSpec(s string) (Spec, error) {
	rest, ok := strings.CutPrefix(s, Prefix)
	if !ok {
		return Spec{}, fmt.Errorf("%w: %q does not start with %q", ErrBadSpec, s, Prefix)
	}
	dom, target, hasTarget := strings.Cut(rest, "@")
	if dom == "" {
		return Spec{}, fmt.Errorf("%w: %q: empty domain name", ErrBadSpec, s)
	}
	if strings.ContainsAny(dom, "/\n") {
		return Spec{}, fmt.Errorf("%w: %q: domain name contains '/' or a newline", ErrBadSpec, s)
	}
	sp := Spec{Domain: dom, Socket: DefaultSocket}
	switch {
	case !hasTarget:
	case strings.HasPrefix(target, "/"):
		sp.Socket = target
	case strings.Contains(target, "://"):
		u, err := url.Parse(target)
		if err != nil {
			return Spec{}, fmt.Errorf("%w: %q: %v", ErrBadSpec, s, err)
		}
		if u.Scheme == "" {
			return Spec{}, fmt.Errorf("%w: %q: URI without a scheme", ErrBadSpec, s)
		}
		sp.Socket, sp.URI = "", target
	default:
		return Spec{}, fmt.Errorf("%w: %q: after '@' want a socket path (/...) or a URI (qemu:///system)", ErrBadSpec, s)
	}
	return sp, nil
}

// String returns the spec in the form ParseSpec reads.
func (s Spec) String() string {
	switch {
	case s.URI != "":
		return Prefix + s.Domain + "@" + s.URI
	case s.Socket != "" && s.Socket != DefaultSocket:
		return Prefix + s.Domain + "@" + s.Socket
	}
	return Prefix + s.Domain
}
