package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/zcfabric/zc/host/agent"
)

// Metric descriptions, node_exporter style: zcfabric_<what>_<unit>.
var (
	descQueuePackets = prometheus.NewDesc("zcfabric_queue_packets_total",
		"Packets through a queue: direction=\"out\" the agent enqueued, \"in\" the consumer reported reading (the consumer writes it; a guest may write anything).",
		[]string{"cluster", "queue", "vm", "direction"}, nil)
	descQueueBytes = prometheus.NewDesc("zcfabric_queue_bytes_total", "Bytes the agent enqueued on a queue.",
		[]string{"cluster", "queue", "vm"}, nil)
	descQueueDrops = prometheus.NewDesc("zcfabric_queue_drops_total", "Packets dropped because a queue was full (or failed), counted by the agent.",
		[]string{"cluster", "queue", "vm"}, nil)
	descBadReturns = prometheus.NewDesc("zcfabric_queue_bad_returns_total", "Buffer handles a consumer returned that it was never lent (refused).",
		[]string{"cluster", "queue", "vm"}, nil)
	descQueueDepth = prometheus.NewDesc("zcfabric_queue_depth_packets", "Packets waiting in a queue.",
		[]string{"cluster", "queue", "vm"}, nil)
	descQueueUp = prometheus.NewDesc("zcfabric_queue_up", "1 while a queue works, 0 once it failed (its packets are dropped and counted); a queue fed by producers that attach is up unless the agent saw it fail.",
		[]string{"cluster", "queue", "vm"}, nil)
	descSourcePackets = prometheus.NewDesc("zcfabric_source_packets_total", "Packets a source delivered.",
		[]string{"cluster", "source"}, nil)
	descSourceKernelDrops = prometheus.NewDesc("zcfabric_source_kernel_drops_total", "Packets the kernel dropped before a source read them (AF_PACKET, AF_XDP).",
		[]string{"cluster", "source"}, nil)
	descSourceFiltered = prometheus.NewDesc("zcfabric_source_filtered_total", "Packets a source read and its BPF filter (bpf) rejected.",
		[]string{"cluster", "source"}, nil)
	descSourceTruncated = prometheus.NewDesc("zcfabric_source_truncated_total", "Frames longer than a buffer that a source delivered cut to the buffer size.",
		[]string{"cluster", "source"}, nil)
	descExportPlugged = prometheus.NewDesc("zcfabric_export_plugged", "1 while a VM's region is plugged into it.",
		[]string{"cluster", "vm"}, nil)
	descAdopted = prometheus.NewDesc("zcfabric_regions_adopted", "Regions this daemon took over from its predecessor at start (restart without re-plug).",
		[]string{"cluster"}, nil)
	descReady = prometheus.NewDesc("zcfabric_daemon_ready_seconds", "Time from the daemon's start to every cluster set up (re-adoption included).", nil, nil)
	descGap   = prometheus.NewDesc("zcfabric_restart_gap_seconds", "For a cluster adopted from a killed daemon: how long it had been gone (its sources captured nothing meanwhile; readers kept their queues).",
		[]string{"cluster"}, nil)
)

// hotplugSeconds is the hot-plug duration histogram (agent.OnHotplug).
var hotplugSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "zcfabric_hotplug_duration_seconds",
	Help:    "Time to hot-plug a region into a VM (object-add and device_add, or the libvirt or doorbell equivalent).",
	Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
}, []string{"vm"})

// collector reads the daemon's agents at each scrape: only counters the
// agents keep for concurrent readers (their own records, not values read
// from guest memory, except the consumer-reported "in" direction).
type collector struct{ d *daemon }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueuePackets, descQueueBytes, descQueueDrops, descBadReturns, descQueueDepth, descQueueUp,
		descSourcePackets, descSourceKernelDrops, descSourceFiltered, descSourceTruncated, descExportPlugged, descAdopted, descReady, descGap} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descReady, c.d.ready.Seconds())
	for _, a := range c.d.sortedAgents() {
		st := a.State()
		id := strconv.FormatUint(uint64(st.Cluster), 10)
		vmOf := map[int]string{}
		for _, v := range st.VMs {
			gauge(descExportPlugged, b2f(v.Plugged), id, v.VM)
			for _, q := range v.Queues {
				if vmOf[q] == "" {
					vmOf[q] = v.VM
				}
			}
		}
		n := 0
		if st.Adopted {
			n++
		}
		for _, v := range st.VMs {
			if v.Adopted {
				n++
			}
		}
		gauge(descAdopted, float64(n), id)
		gauge(descGap, st.GapSeconds, id)
		for i, s := range a.Stats() {
			q, vm := strconv.Itoa(i), vmOf[i]
			counter(descQueuePackets, s.Sent, id, q, vm, "out")
			counter(descQueuePackets, s.Received, id, q, vm, "in")
			counter(descQueueBytes, s.SentBytes, id, q, vm)
			counter(descQueueDrops, s.Drops, id, q, vm)
			counter(descBadReturns, s.BadReturns, id, q, vm)
			gauge(descQueueDepth, float64(max(s.Depth, 0)), id, q, vm)
			// "": a queue producers that attach feed (no sources), whose
			// state the agent does not hold: up unless it failed.
			gauge(descQueueUp, b2f(s.State == "ok" || s.State == ""), id, q, vm)
		}
		srcs := a.Sources()
		for i, ss := range a.SourceStats() {
			name := strconv.Itoa(i)
			if i < len(srcs) {
				name = srcs[i].Name()
			}
			counter(descSourcePackets, ss.Packets, id, name)
			counter(descSourceKernelDrops, ss.KernelDrops, id, name)
			counter(descSourceFiltered, ss.Filtered, id, name)
			counter(descSourceTruncated, ss.Truncated, id, name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var hotplugHooked atomic.Bool

// serveMetrics serves the Prometheus endpoint on addr (host:port).
func (d *daemon) serveMetrics(addr string) (io.Closer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d}, hotplugSeconds, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if hotplugHooked.CompareAndSwap(false, true) {
		agent.OnHotplug(func(vm string, took time.Duration) { hotplugSeconds.WithLabelValues(vm).Observe(took.Seconds()) })
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("daemon: metrics endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics endpoint", "error", err)
		}
	}()
	d.log.Info("metrics", "url", "http://"+l.Addr().String()+"/metrics")
	return srv, nil
}
