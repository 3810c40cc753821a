package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zcfabric/zc/host/agent"
	"github.com/zcfabric/zc/host/agentconf"
	"github.com/zcfabric/zc/host/sdnotify"
	"github.com/zcfabric/zc/internal/ticker"
	"golang.org/x/sys/unix"
)

func init() {
	register("daemon", "run the clusters of a configuration file as a service (re-adopts what a killed daemon left)", daemonCmd)
}

// daemon runs the clusters of a configuration file, each an agent, and
// serves the control socket and the metrics endpoint.
type daemon struct {
	path string
	log  hclog.Logger

	mu      sync.Mutex
	file    *agentconf.File
	running map[uint32]*runningAgent
	ready   time.Duration // from start to every agent set up (re-adoption done)
	metrics io.Closer     // the Prometheus endpoint, nil when off
	// life is the daemon's run, until SIGTERM or SIGINT: every cluster's
	// agent runs under it, also one a reload started (under the
	// request's context, it stopped as soon as the reply was sent).
	life context.Context
}

// runningAgent is one cluster's agent and the goroutine running it.
type runningAgent struct {
	a      *agent.Agent
	cancel context.CancelFunc
	done   chan error
}

func daemonCmd(args []string) error {
	fs := newFlags("daemon", "[--config FILE]")
	path := fs.String("config", "/etc/zcfabric/zchost.toml", "the configuration `file` (TOML; see below and dist/zchost.toml)")
	check := fs.Bool("check", false, "only parse and check the file, then exit")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: zchost daemon [--config FILE] [--check]\n\n"+
			"Runs every [[cluster]] of FILE until SIGTERM or SIGINT, serving the control socket (zchost status,\n"+
			"stats, reload) and, when configured, a Prometheus endpoint. Killed (SIGKILL, a crash) and started\n"+
			"again, the daemon re-adopts the regions and the VM devices it left: guest and host readers keep\n"+
			"reading. SIGHUP or zchost reload applies a changed file: exports added or removed; a changed\n"+
			"cluster definition is refused. With systemd: dist/systemd/zchost.service (Type=notify).\n\n")
		printFlags(fs)
		fmt.Fprintf(w, "\nThe configuration file:\n\n%s\n", agentconf.Help)
	}
	if err := parseAll(fs, args); err != nil {
		return err
	}
	f, err := agentconf.Load(*path)
	if err != nil {
		return err
	}
	if *check {
		fmt.Printf("%s: %d clusters, ok\n", *path, len(f.Clusters))
		return nil
	}
	start := time.Now()
	log := hclog.New(&hclog.LoggerOptions{Name: "zchost", Level: f.LogLevel})
	if err := os.MkdirAll(f.StateDir, 0o750); err != nil {
		return fmt.Errorf("daemon: state directory: %w", err)
	}
	lock, err := lockState(f.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	d := &daemon{path: *path, log: log, file: f, running: map[uint32]*runningAgent{}}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d.life = ctx
	defer d.stopAll()
	for _, cl := range f.Clusters {
		if err := d.startCluster(cl); err != nil {
			return err
		}
	}
	srv, err := d.serveControl(f.Control)
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := d.restartMetrics(f.Metrics); err != nil {
		return err
	}
	defer d.restartMetrics("")
	d.ready = time.Since(start)
	log.Info("daemon ready", "clusters", len(f.Clusters), "control", f.Control, "metrics", f.Metrics, "took", d.ready)
	notifyReady(log)
	stopWatchdog := watchdog(log)
	defer stopWatchdog()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			notifyStopping()
			log.Info("stopping", "keep_plugged", d.file.KeepPlugged)
			return nil
		case <-hup:
			msg, err := d.reload(ctx)
			d.logReload("SIGHUP", msg, err)
		}
	}
}

// lockState takes the state directory's lock: one daemon per directory.
func lockState(dir string) (*os.File, error) {
	p := filepath.Join(dir, "zchost.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon: lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("daemon: another zchost daemon uses %s (lock %s: %w)", dir, p, err)
	}
	return f, nil
}

// agentConfig is the agent configuration of one cluster of the file.
func agentConfig(f *agentconf.File, cl agentconf.Cluster, log hclog.Logger) agent.Config {
	cfg := agent.Config{
		ID: cl.ID, Queues: cl.Queues, QueueLen: cl.QueueLen, Buffers: cl.Buffers, BufferSize: cl.BufferSize,
		QueueBuffers: cl.QueueBuffers, Backing: cl.Backing, HugetlbDir: cl.Hugetlbfs, Group: cl.Group,
		Sources: cl.Sources, BPF: cl.BPF, Mode: cl.Mode, Lossless: cl.Lossless,
		Shared: cl.Shared, Ctl: cl.Ctl, Doorbell: cl.Doorbell, VMRecover: cl.VMRecover,
		DrainTimeout: agent.DefaultDrainTimeout, StatsInterval: 0, Keep: true,
		Adopt: true, StateDir: f.StateDir, KeepPlugged: f.KeepPlugged,
		Log: log.Named(fmt.Sprintf("c%d", cl.ID)),
	}
	for _, e := range cl.Exports {
		cfg.Exports = append(cfg.Exports, agent.Export{VM: e.VM, Queues: e.Queues})
	}
	return cfg
}

// startCluster sets up cluster cl's agent (adopting what a predecessor
// left) and runs it, both for the daemon's life.
func (d *daemon) startCluster(cl agentconf.Cluster) error {
	a, err := agent.New(d.life, agentConfig(d.file, cl, d.log))
	if err != nil {
		return fmt.Errorf("daemon: cluster %d: %w", cl.ID, err)
	}
	rctx, cancel := context.WithCancel(d.life)
	r := &runningAgent{a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(rctx) }()
	d.mu.Lock()
	d.running[cl.ID] = r
	d.mu.Unlock()
	return nil
}

// stopCluster stops cluster id's agent and closes it (unplugging, or
// leaving everything for a successor with keep_plugged).
func (d *daemon) stopCluster(id uint32) {
	d.mu.Lock()
	r := d.running[id]
	delete(d.running, id)
	d.mu.Unlock()
	if r == nil {
		return
	}
	r.cancel()
	if err := <-r.done; err != nil {
		d.log.Error("cluster stopped with an error", "cluster", id, "error", err)
	}
	r.a.Close()
}

func (d *daemon) stopAll() {
	d.mu.Lock()
	var ids []uint32
	for id := range d.running {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	for _, id := range ids {
		d.stopCluster(id)
	}
}

// agents returns the running agents by cluster id.
func (d *daemon) agents() map[uint32]*agent.Agent {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := make(map[uint32]*agent.Agent, len(d.running))
	for id, r := range d.running {
		m[id] = r.a
	}
	return m
}

// notifyReady tells systemd (Type=notify) the daemon is ready: every
// cluster set up and what a predecessor left re-adopted.
func notifyReady(log hclog.Logger) {
	if err := sdnotify.Ready(); err != nil {
		log.Warn("systemd notification", "error", err)
	}
	sdnotify.Status("serving")
}

func notifyStopping() { sdnotify.Stopping() }

// watchdog pings systemd's watchdog at half its interval while the
// daemon runs (WatchdogSec=); no-op without one.
func watchdog(log hclog.Logger) func() {
	iv, ok := sdnotify.WatchdogInterval()
	if !ok {
		return func() {}
	}
	log.Info("systemd watchdog", "interval", iv)
	return ticker.Every(iv/2, func(time.Time) { sdnotify.Watchdog() })
}

// restartMetrics serves the Prometheus endpoint on addr instead of where
// it was ("" stops it).
func (d *daemon) restartMetrics(addr string) error {
	d.mu.Lock()
	old := d.metrics
	d.metrics = nil
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
	if addr == "" {
		return nil
	}
	m, err := d.serveMetrics(addr)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.metrics = m
	d.mu.Unlock()
	return nil
}
