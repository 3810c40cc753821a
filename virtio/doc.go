// Package virtio is the host⇄guest control channel of zcfabric: a small,
// versioned message protocol over a virtio-serial port named [PortName]
// ("zc.ctl").
//
// On the host the port is the unix socket of a QEMU chardev
//
//	-device virtio-serial-pci
//	-chardev socket,path=P,server=on,wait=off,id=zcctl
//	-device virtserialport,chardev=zcctl,name=zc.ctl
//
// which the agent connects to as a client and serves with a [Server]. In
// the guest the port is a character device /dev/vportNpM whose
// /sys/class/virtio-ports/vportNpM/name reads "zc.ctl"; [OpenPort] finds
// and opens it (no udev needed) and a [Client] speaks the protocol.
//
// # Wire format
//
// Every message is one line of JSON, at most [MaxLine] bytes including the
// newline, with the protocol version "v" (currently [Version]) and a
// "type":
//
//	guest → host                          host → guest
//	hello{id, version, side, session}     hello{id, version, side}
//	list{id}                              offers{id, clusters: [{id, queues, size, shared, plugged}]}
//	plug{id, cluster, queues}             ack{id} | error{id, class, msg}
//	ready{cluster, session}               unplug-notice{cluster, deadline_ms, session}
//	bye{}                                 error{id, class, msg}
//
// The guest speaks first. Data the host writes while no guest process holds
// the port open is discarded by the guest kernel (or held back by QEMU), so
// the host sends nothing until a hello, and the guest repeats its hello until
// answered. A reply carries the id of its request; a client ignores replies
// it is not waiting for (stale ones from an earlier process). unplug-notice
// carries the session of the hello that opened the listening client, so a
// stale notice is ignored too; the guest stops its readers of the cluster
// and answers ready before deadline_ms.
//
// A reader ignores fields it does not know, so a version may gain
// optional fields; a change an older reader cannot ignore takes a new
// version.
//
// # Error replies
//
// An error reply carries a class, one fixed word a guest may branch on
// ([ClassBadRequest], [ClassUnsupported], [ClassNotOffered], [ClassGone],
// [ClassBusy], [ClassTimeout], [ClassInternal]), and in msg a short reason
// of at most [MaxReason] bytes. The class is an optional field of version
// 1: a client that predates it reads msg, which holds the reason alone.
// The reason never holds host paths or other host details: a [Handler]
// says why it refused by wrapping a sentinel ([ErrNotOffered], [ErrGone],
// [ErrBusy], [ErrUnsupported]), and the guest gets that sentinel's text;
// an error that wraps none (and that Server.Classify does not map) is
// "internal" with a generic reason, and the host logs it in full. A
// [Client] returns replies as a [*RemoteError] reading "CLASS: REASON".
//
// # Trust
//
// The host never trusts the guest: a line longer than [MaxLine] closes the
// connection after an error reply; bad JSON, an unknown version or type get
// an error reply, and too many of those in a row close the connection; a
// line that starts but does not end within the read timeout closes it. No
// input makes the host panic or buffer more than MaxLine bytes. The guest
// applies the same bounds to what the host sends.
package virtio
