package virtio

import (
	"context"
	"errors"
	"strings"
)

// Error classes an error reply carries in Message.Class: one fixed word a
// guest may branch on. The reply's Msg holds a short reason for people.
const (
	// ClassBadRequest: the message was malformed, too long or not one the
	// host expects from a guest.
	ClassBadRequest = "bad-request"
	// ClassUnsupported: a protocol version or request this host does not
	// serve.
	ClassUnsupported = "unsupported"
	// ClassNotOffered: a cluster or queue that is not offered to this VM.
	ClassNotOffered = "not-offered"
	// ClassGone: the cluster, its region or the VM's export went away.
	ClassGone = "gone"
	// ClassBusy: refused for now (in use, or rate-limited); try again
	// later.
	ClassBusy = "busy"
	// ClassTimeout: the host did not finish the request in time.
	ClassTimeout = "timeout"
	// ClassInternal: anything else. The reason is generic; the host logs
	// the details.
	ClassInternal = "internal"
)

// Sentinel errors a [Handler] wraps (with %w) to say why it refused a
// request; each maps to one error class, and the guest gets the sentinel's
// text as the reason, never the text that wraps it.
var (
	// ErrNotOffered: the cluster or queue is not offered to this VM.
	ErrNotOffered = errors.New("not offered to this vm")
	// ErrGone: the cluster or its region went away.
	ErrGone = errors.New("the cluster or its region went away")
	// ErrBusy: the request cannot be served now (in use, or
	// rate-limited); it may succeed later.
	ErrBusy = errors.New("busy, try again later")
	// ErrUnsupported: the host does not serve this request.
	ErrUnsupported = errors.New("not supported by this host")
)

// MaxReason bounds the reason of an error reply, in bytes.
const MaxReason = 200

// internalReason is all a guest learns of an unclassified error.
const internalReason = "internal error on the host (details in its log)"

// classes maps sentinels to error classes, first match wins.
var classes = []struct {
	err   error
	class string
}{
	{ErrNotOffered, ClassNotOffered},
	{ErrGone, ClassGone},
	{ErrBusy, ClassBusy},
	{ErrUnsupported, ClassUnsupported},
	{ErrVersion, ClassUnsupported},
	{ErrTooLong, ClassBadRequest},
	{ErrBadMessage, ClassBadRequest},
	{context.DeadlineExceeded, ClassTimeout},
}

// ClassOf returns the error class of err and the sentinel that decided
// it, or ClassInternal and nil when err wraps none of the sentinels above
// ([ErrNotOffered], [ErrGone], [ErrBusy], [ErrUnsupported], [ErrVersion],
// [ErrTooLong], [ErrBadMessage], context.DeadlineExceeded).
func ClassOf(err error) (class string, sentinel error) {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.class, c.err
		}
	}
	return ClassInternal, nil
}

// sentinelOf returns the sentinel a guest's errors.Is matches for class
// (none for timeout and internal).
func sentinelOf(class string) error {
	switch class {
	case ClassNotOffered:
		return ErrNotOffered
	case ClassGone:
		return ErrGone
	case ClassBusy:
		return ErrBusy
	case ClassUnsupported:
		return ErrUnsupported
	case ClassBadRequest:
		return ErrBadMessage
	}
	return nil
}

// cleanReason makes s fit a reply: printable ASCII only, at most
// MaxReason bytes.
func cleanReason(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= MaxReason {
			break
		}
		if r < ' ' || r > '~' {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// RemoteError is a request the other side refused with an error reply. It
// matches [ErrRemote] with errors.Is, and also the sentinel of its class
// ([ErrNotOffered] for "not-offered", and so on).
type RemoteError struct {
	// Class is the reply's error class (ClassNotOffered, ...); empty from
	// a host that predates error classes.
	Class string
	// Reason is the reply's short reason.
	Reason string
}

// Error returns "refused by the other side: CLASS: REASON".
func (e *RemoteError) Error() string {
	s := ErrRemote.Error() + ": "
	if e.Class != "" {
		s += cleanReason(e.Class) + ": "
	}
	return s + cleanReason(e.Reason)
}

// Is reports whether target is ErrRemote or the sentinel of e's class.
func (e *RemoteError) Is(target error) bool {
	if target == ErrRemote {
		return true
	}
	s := sentinelOf(e.Class)
	return s != nil && target == s
}
