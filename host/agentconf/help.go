package agentconf

// Help documents the configuration file, for `zchost daemon --help`.
// TestHelpNamesEveryKey keeps it in step with the schema.
const Help = `The configuration file is TOML (https://toml.io). Unknown keys, values of the
wrong type and bad values are errors naming the file, the line and the key;
nothing is created when the file is wrong. A full example: dist/zchost.toml.

Top level
  state_dir = "/run/zcfabric"   where the daemon records what it made (regions,
                                their generation, which VM holds which device),
                                so that a restarted daemon re-adopts them
  control = "..."               the control socket (zchost status, stats, attach,
                                detach, reload); default state_dir/zchost.sock
  metrics = "127.0.0.1:9477"    Prometheus endpoint, host:port; "" or absent: off
  keep_plugged = false          on SIGTERM leave the regions plugged and their
                                files in place (for an upgrade: the next daemon
                                re-adopts them); false unplugs and removes all
  log_level = "info"            trace, debug, info, warn, error or off

[[cluster]]  one table per cluster, as "zchost run" makes it
  id = 99                       cluster id consumers attach by, zc:ID@QUEUE
                                (required; distinct across clusters)
  queues = 1                    number of egress queues
  mode = "round-robin"          balancing: round-robin, ip-pair, fan-out (every
                                packet to every queue), 5-tuple (symmetric),
                                gtp (GTP-U inner IP pair); or 0..4, as an
                                integer or a string
  lossless = false              back-pressure: wait for room instead of dropping
                                when a queue is full
  sources = []                  packet sources, as "zchost run -i" takes them:
                                gen:len=64,count=N,rate=PPS,flows=N,after=5s;
                                pcap:FILE[?timing=1&loops=N]; zc:IF[@Q] (best of
                                AF_XDP and AF_PACKET);
                                afxdp:IF[@Q][?mode=copy|zerocopy&xdp=native|generic&ring=N];
                                afpacket:IF. None: the queues are fed by
                                producers that attach (zsend -o zc:ID@Q, a guest)
  queue_len = 4096              queue capacity in packets (a power of two)
  buffers = 0                   engine pool buffers; 0: queues*queue_len+1024,
                                plus the fill ring of each AF_XDP socket
  buffer_size = 2048            buffer size in bytes (a power of two; 2048 or
                                4096 for AF_XDP)
  queue_buffers = 0             buffers each queue owns for an outside producer
  backing = "auto"              region memory: auto (hugetlbfs if mounted with
                                free pages, else /dev/shm), shm, hugetlbfs, memfd
  hugetlbfs = ""                hugetlbfs mount (default: found in /proc/mounts)
  group = ""                    let this group (name or id) open the region file
                                too (mode 0660; default 0600)
  shared = false                put every VM on the cluster's own region (zero
                                copy; only for guests you trust). Also the case
                                when there are no sources
  ctl = false                   offer the regions over each VM's zc.ctl channel
                                and plug them when the guest asks (QMP VMs only)
  doorbell = false              plug each VM's region as an ivshmem-doorbell
                                device so guest readers sleep on an interrupt
                                (QMP VMs only; q35 with intel-iommu in the guest)
  bpf = ""                      classic BPF program applied to every source
                                (tcpdump -ddd output)
  vm_recover = "10s"            a VM whose region fails gets a fresh one after
                                this long, doubling per failure up to 10m;
                                a Go duration, "0": never

[[cluster.export]]  one table per VM the cluster's queues are exported to
  vm = "/run/vm1.qmp"           the VM: its QMP socket path, or
                                "libvirt:DOMAIN[@SOCKET|URI]" for a libvirt domain
                                (required; one export per VM in a cluster)
  queues = [0]                  the queues the VM reads; absent: all. Unless the
                                cluster is shared, each VM gets a region of its
                                own and a queue goes to one VM only

On reload (zchost reload, SIGHUP) exports are added and removed as the file
says, unchanged ones untouched; clusters may be added or removed; any other
change to a running cluster, or to state_dir or control, is refused.
`
