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
//	plug{id, cluster, queues}             ack{id} | error{id, msg}
//	ready{cluster, session}               unplug-notice{cluster, deadline_ms, session}
//	bye{}                                 error{id, msg}
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
// # Trust
//
// The host never trusts the guest: a line longer than [MaxLine] closes the
// connection after an error reply; bad JSON, an unknown version or type get
// an error reply, and too many of those in a row close the connection; a
// line that starts but does not end within the read timeout closes it. No
// input makes the host panic or buffer more than MaxLine bytes. The guest
// applies the same bounds to what the host sends.
package virtio
