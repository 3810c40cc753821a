package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/agent"
	"github.com/zcfabric/zc/host/agentconf"
	"golang.org/x/sys/unix"
)

func init() {
	register("status", "what a running zchost daemon runs: clusters, regions, VMs (over its control socket)", statusCmd)
	register("reload", "make a running zchost daemon apply its changed configuration file (as SIGHUP does)", reloadCmd)
}

// The control protocol: a client connects to the daemon's unix socket,
// writes one request, a JSON object on one line of at most
// maxControlRequest bytes, and reads one reply line.
const maxControlRequest = 64 << 10

// controlRequest is a request to the daemon.
type controlRequest struct {
	Op      string `json:"op"` // status, stats, reload, attach, detach
	Cluster uint32 `json:"cluster,omitempty"`
	VM      string `json:"vm,omitempty"`
	Queues  []int  `json:"queues,omitempty"`
}

// controlReply is the daemon's answer: Error set, or the op's result.
type controlReply struct {
	OK           bool                       `json:"ok"`
	Error        string                     `json:"error,omitempty"`
	PID          int                        `json:"pid,omitempty"`
	Config       string                     `json:"config,omitempty"`
	ReadySeconds float64                    `json:"ready_seconds,omitempty"`
	Clusters     []agent.State              `json:"clusters,omitempty"`
	Stats        map[uint32][]zc.QueueStats `json:"stats,omitempty"`
	Changes      string                     `json:"changes,omitempty"`
}

// serveControl listens on the control socket (mode 0660; a stale socket
// left by a killed daemon is replaced) and answers requests until the
// listener is closed.
func (d *daemon) serveControl(path string) (io.Closer, error) {
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("daemon: control socket %s: another daemon answers on it", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("daemon: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("daemon: control socket: %w", err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go d.serveConn(c.(*net.UnixConn))
		}
	}()
	return l, nil
}

// serveConn answers one request. A client that is neither root nor the
// daemon's user, a request too long, malformed or unknown, gets an error
// reply; none of them can stop the daemon.
func (d *daemon) serveConn(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	reply := func(r controlReply) {
		b, _ := json.Marshal(r)
		c.Write(append(b, '\n'))
	}
	if uid, err := peerUID(c); err != nil || (uid != 0 && uid != os.Getuid()) {
		d.log.Warn("control client refused", "uid", uid, "error", err)
		reply(controlReply{Error: "permission denied: the control socket is for root"})
		return
	}
	line, err := bufio.NewReaderSize(io.LimitReader(c, maxControlRequest+1), 4096).ReadSlice('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxControlRequest {
			reply(controlReply{Error: fmt.Sprintf("request longer than %d bytes", maxControlRequest)})
			return
		}
		reply(controlReply{Error: "no request: " + err.Error()})
		return
	}
	var r controlRequest
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		reply(controlReply{Error: "bad request: " + err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reply(d.handle(ctx, r))
}

// handle carries out one control request.
func (d *daemon) handle(ctx context.Context, r controlRequest) controlReply {
	switch r.Op {
	case "status":
		rep := controlReply{OK: true, PID: os.Getpid(), Config: d.path, ReadySeconds: d.ready.Seconds()}
		for _, a := range d.sortedAgents() {
			rep.Clusters = append(rep.Clusters, a.State())
		}
		return rep
	case "stats":
		rep := controlReply{OK: true, Stats: map[uint32][]zc.QueueStats{}}
		for _, a := range d.sortedAgents() {
			rep.Stats[a.Cluster().ID()] = a.Stats()
		}
		return rep
	case "reload":
		msg, err := d.reload(ctx)
		d.logReload("zchost reload", msg, err)
		if err != nil {
			return controlReply{Error: err.Error(), Changes: msg}
		}
		return controlReply{OK: true, Changes: msg}
	case "attach", "detach":
		a := d.agents()[r.Cluster]
		if a == nil {
			return controlReply{Error: fmt.Sprintf("cluster %d: not run by this daemon", r.Cluster)}
		}
		var err error
		if r.Op == "attach" {
			err = a.AddExport(ctx, agent.Export{VM: r.VM, Queues: r.Queues})
		} else {
			err = a.RemoveExport(ctx, r.VM)
		}
		if err != nil {
			return controlReply{Error: err.Error()}
		}
		return controlReply{OK: true, Changes: fmt.Sprintf("%s cluster %d vm %s", r.Op, r.Cluster, r.VM)}
	}
	return controlReply{Error: fmt.Sprintf("unknown op %q (want status, stats, reload, attach or detach)", r.Op)}
}

// sortedAgents returns the running agents in cluster id order.
func (d *daemon) sortedAgents() []*agent.Agent {
	out := slices.Collect(maps.Values(d.agents()))
	slices.SortFunc(out, func(a, b *agent.Agent) int { return cmp.Compare(a.Cluster().ID(), b.Cluster().ID()) })
	return out
}

// errRefused: a reload changed nothing (the file does not parse, or it
// changes a running cluster's definition).
var errRefused = errors.New("reload refused; running as before")

// reload reads the configuration file again and applies the difference:
// clusters and exports added or removed; anything else that changed in a
// running cluster is refused (errRefused), and then nothing is applied.
// A step that fails (an export the VM refuses, a cluster that cannot
// start) does not stop the others: it returns what was applied and the
// failures, and records the file less what failed, so that the next
// reload tries that again.
func (d *daemon) reload(ctx context.Context) (string, error) {
	nf, err := agentconf.Load(d.path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errRefused, err)
	}
	d.mu.Lock()
	of := d.file
	d.mu.Unlock()
	ch, err := agentconf.Diff(of, nf)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errRefused, err)
	}
	if ch.Empty() {
		return "none", nil
	}
	var done []string
	var errs []error
	rec := recordOf(nf)
	for _, id := range ch.RemovedClusters {
		d.stopCluster(id)
		done = append(done, fmt.Sprintf("cluster %d removed", id))
	}
	for _, ec := range ch.Exports {
		a := d.agents()[ec.Cluster]
		if a == nil {
			continue
		}
		kept := map[string]bool{} // VMs whose old export stays (unexport failed)
		for _, e := range ec.Removed {
			if err := a.RemoveExport(ctx, e.VM); err != nil {
				errs = append(errs, fmt.Errorf("cluster %d: unexport vm %s: %w", ec.Cluster, e.VM, err))
				rec.setExport(ec.Cluster, e) // still exported as it was
				kept[e.VM] = true
				continue
			}
			done = append(done, fmt.Sprintf("cluster %d: vm %s unexported", ec.Cluster, e.VM))
		}
		for _, e := range ec.Added {
			if err := a.AddExport(ctx, agent.Export{VM: e.VM, Queues: e.Queues}); err != nil {
				errs = append(errs, fmt.Errorf("cluster %d: export to vm %s: %w", ec.Cluster, e.VM, err))
				if !kept[e.VM] {
					rec.dropExport(ec.Cluster, e.VM) // not exported: add it next time
				}
				continue
			}
			done = append(done, fmt.Sprintf("cluster %d: vm %s exported", ec.Cluster, e.VM))
		}
	}
	for _, id := range ch.AddedClusters {
		for _, cl := range nf.Clusters {
			if cl.ID == id {
				if err := d.startCluster(cl); err != nil {
					errs = append(errs, fmt.Errorf("cluster %d: start: %w", id, err))
					rec.dropCluster(id)
				} else {
					done = append(done, fmt.Sprintf("cluster %d started", id))
				}
			}
		}
	}
	for _, s := range ch.Settings {
		switch s {
		case "log_level":
			d.log.SetLevel(nf.LogLevel)
		case "keep_plugged":
			for _, a := range d.agents() {
				a.SetKeepPlugged(nf.KeepPlugged)
			}
		case "metrics":
			if err := d.restartMetrics(nf.Metrics); err != nil {
				errs = append(errs, fmt.Errorf("metrics %s: %w", nf.Metrics, err))
				rec.Metrics = of.Metrics
				continue
			}
		}
		done = append(done, s+" changed")
	}
	d.mu.Lock()
	d.file = rec.File
	d.mu.Unlock()
	if len(done) == 0 {
		done = append(done, "nothing")
	}
	return strings.Join(done, "; "), errors.Join(errs...)
}

// logReload logs a reload's outcome, by: SIGHUP, or zchost reload.
func (d *daemon) logReload(by, msg string, err error) {
	switch {
	case errors.Is(err, errRefused):
		d.log.Error("reload refused; running as before", "by", by, "error", err)
	case err != nil:
		d.log.Error("reload partly failed; the rest is applied, and the next reload tries what failed again", "by", by, "applied", msg, "error", err)
	default:
		d.log.Info("reloaded", "by", by, "changes", msg)
	}
}

// record is the configuration a reload records as running: the new file,
// less the steps that failed. It owns its slices.
type record struct{ *agentconf.File }

// recordOf copies f's clusters and their exports, to be edited.
func recordOf(f *agentconf.File) record {
	c := *f
	c.Clusters = slices.Clone(f.Clusters)
	for i := range c.Clusters {
		c.Clusters[i].Exports = slices.Clone(c.Clusters[i].Exports)
	}
	return record{&c}
}

func (r record) cluster(id uint32) *agentconf.Cluster {
	for i := range r.Clusters {
		if r.Clusters[i].ID == id {
			return &r.Clusters[i]
		}
	}
	return nil
}

func (r record) dropExport(id uint32, vm string) {
	if c := r.cluster(id); c != nil {
		c.Exports = slices.DeleteFunc(c.Exports, func(e agentconf.Export) bool { return e.VM == vm })
	}
}

// setExport records e as cluster id's export to e.VM, in place of the
// one the file has.
func (r record) setExport(id uint32, e agentconf.Export) {
	if c := r.cluster(id); c != nil {
		r.dropExport(id, e.VM)
		c.Exports = append(c.Exports, e)
	}
}

func (r record) dropCluster(id uint32) {
	r.Clusters = slices.DeleteFunc(r.Clusters, func(c agentconf.Cluster) bool { return c.ID == id })
}

// peerUID is the user id of the process at the other end of c.
func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// defaultControl is the control socket clients try: $ZCHOST_CONTROL, else
// the default of the configuration file.
func defaultControl() string {
	if p := os.Getenv("ZCHOST_CONTROL"); p != "" {
		return p
	}
	return agentconf.DefaultStateDir + "/" + agentconf.DefaultControl
}

// ask sends one request to the daemon at path and returns its reply.
func ask(path string, r controlRequest, timeout time.Duration) (controlReply, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return controlReply{}, fmt.Errorf("no zchost daemon answers on %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, _ := json.Marshal(r)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return controlReply{}, fmt.Errorf("control %s: %w", path, err)
	}
	var rep controlReply
	if err := json.NewDecoder(c).Decode(&rep); err != nil {
		return controlReply{}, fmt.Errorf("control %s: reply: %w", path, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("zchost daemon: %s", rep.Error)
	}
	return rep, nil
}

func controlFlag(fs *flag.FlagSet) *string {
	return fs.String("control", defaultControl(), "the daemon's control `socket` ($ZCHOST_CONTROL)")
}

func statusCmd(args []string) error {
	fs := newFlags("status", "[--control SOCKET] [--json]")
	path := controlFlag(fs)
	asJSON := fs.Bool("json", false, "print the daemon's reply as JSON")
	if err := parseAll(fs, args); err != nil {
		return err
	}
	rep, err := ask(*path, controlRequest{Op: "status"}, 10*time.Second)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(rep)
	}
	fmt.Printf("zchost daemon pid %d, config %s, ready in %.3fs\n", rep.PID, rep.Config, rep.ReadySeconds)
	for _, s := range rep.Clusters {
		adopted := ""
		if s.Adopted {
			adopted = fmt.Sprintf(" (adopted; its predecessor had been gone %.3fs)", s.GapSeconds)
		}
		fmt.Printf("cluster %d: region %s generation %d%s\n", s.Cluster, s.Region, s.Generation, adopted)
		for _, v := range s.VMs {
			if v.Waiting {
				fmt.Printf("  vm %s queues %v: waiting for the VM\n", v.VM, v.Queues)
				continue
			}
			fmt.Printf("  vm %s queues %v: region %s generation %d plugged %v%s\n", v.VM, v.Queues, v.Region, v.Generation, v.Plugged, map[bool]string{true: " (adopted)", false: ""}[v.Adopted])
		}
	}
	return nil
}

func reloadCmd(args []string) error {
	fs := newFlags("reload", "[--control SOCKET]")
	path := controlFlag(fs)
	if err := parseAll(fs, args); err != nil {
		return err
	}
	rep, err := ask(*path, controlRequest{Op: "reload"}, 5*time.Minute)
	if rep.Changes != "" {
		fmt.Println("reloaded:", rep.Changes)
	}
	return err
}
