package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// daemonRig is a zchost daemon process started from a configuration
// file in a temporary state directory, with regions in a fresh ZC_DIR.
type daemonRig struct {
	t       *testing.T
	bin     string
	env     []string
	conf    string
	state   string
	control string
	metrics string
	cmd     *exec.Cmd
	log     *lockedBuffer
	done    chan error
}

// lockedBuffer is a bytes.Buffer the exec copier writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newDaemonRig(t *testing.T, clusters string) *daemonRig {
	dir := t.TempDir()
	r := &daemonRig{t: t, bin: binaries(t), env: shmEnv(t), state: filepath.Join(dir, "state"), metrics: freePort(t)}
	r.control = filepath.Join(r.state, "zchost.sock")
	r.conf = filepath.Join(dir, "zchost.toml")
	conf := fmt.Sprintf("state_dir = %q\nmetrics = %q\nlog_level = \"debug\"\n%s", r.state, r.metrics, clusters)
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

// start starts the daemon and waits until its control socket answers.
func (r *daemonRig) start() {
	t := r.t
	r.cmd = exec.Command(filepath.Join(r.bin, "zchost"), "daemon", "--config", r.conf)
	r.cmd.Env = r.env
	r.log = &lockedBuffer{}
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := r.cmd
	t.Cleanup(func() { cmd.Process.Kill() })
	r.done = make(chan error, 1)
	done := r.done
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := ask(r.control, controlRequest{Op: "status"}, 2*time.Second); err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited: %v\n%s", err, r.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not answering on %s\n%s", r.control, r.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *daemonRig) kill() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

func (r *daemonRig) ask(req controlRequest) controlReply {
	r.t.Helper()
	rep, err := ask(r.control, req, 30*time.Second)
	if err != nil {
		r.t.Fatalf("%s: %v\n%s", req.Op, err, r.log)
	}
	return rep
}

// TestDaemonRestartHostConsumer is the service's headline on the host:
// a zcount reading the daemon's queue keeps running across a SIGKILL of
// the daemon and a restart, and reads what the new daemon sends (it
// adopts the region: same file, same generation; its generator resumes
// where the killed one's marks say it got, so no frame is lost and at
// most the last burst before the kill is sent twice). Then
// the metrics endpoint is scraped and parsed with the Prometheus text
// parser: its counters match the control socket's stats. SIGTERM removes
// everything.
func TestDaemonRestartHostConsumer(t *testing.T) {
	const after = 20000
	r := newDaemonRig(t, `
[[cluster]]
id = 62
queues = 1
backing = "shm"
queue_len = 1024
sources = ["gen:len=64,count=20000,rate=10000"]
`)
	r.start()
	dir := strings.TrimPrefix(r.env[len(r.env)-1], "ZC_DIR=")
	region := filepath.Join(dir, "zc-62")
	before, err := os.Stat(region)
	if err != nil {
		t.Fatal(err)
	}
	zc := exec.Command(filepath.Join(r.bin, "zcount"), "-i", "zc:62@0", "--json", "--interval", "0", "--wait", "10s")
	zc.Env = r.env
	var zout, zerr bytes.Buffer
	zc.Stdout, zc.Stderr = &zout, &zerr
	if err := zc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { zc.Process.Kill() })
	zdone := make(chan error, 1)
	go func() { zdone <- zc.Wait() }()
	time.Sleep(1200 * time.Millisecond) // mid-way: 20000 at 10000/s
	r.kill()
	select {
	case err := <-zdone:
		t.Fatalf("zcount exited when the daemon was killed: %v\n%s%s", err, zout.String(), zerr.String())
	case <-time.After(300 * time.Millisecond):
	}
	r.start()
	st := r.ask(controlRequest{Op: "status"})
	if len(st.Clusters) != 1 || !st.Clusters[0].Adopted {
		t.Fatalf("status after restart: %+v, want cluster 62 adopted\n%s", st, r.log)
	}
	now, err := os.Stat(region)
	if err != nil || !os.SameFile(before, now) {
		t.Fatalf("region file replaced across the restart (%v)", err)
	}
	m := regexp.MustCompile(`finite source resumed[^\n]*?position"?[=:](\d+)`).FindStringSubmatch(r.log.String())
	if m == nil {
		t.Fatalf("the new daemon did not say where it resumed its generator:\n%s", r.log)
	}
	resumed, _ := strconv.ParseUint(m[1], 10, 64)
	if resumed == 0 || resumed >= after {
		t.Fatalf("the generator resumed at %d of %d, want mid-way (killed after 1.2 s at 10000/s)\n%s", resumed, after, r.log)
	}
	// The new daemon's generator sends the rest at 10000/s; then the
	// counters stand still.
	var sent uint64
	var mf map[string]*dto.MetricFamily
	deadline := time.Now().Add(60 * time.Second)
	for {
		mf = scrape(t, "http://"+r.metrics+"/metrics")
		s := r.ask(controlRequest{Op: "stats"}).Stats[62]
		src := metricValue(t, mf, "zcfabric_source_packets_total", map[string]string{"cluster": "62"})
		if len(s) == 1 && s[0].Depth == 0 && src == float64(after-resumed) && s[0].Received == s[0].Sent {
			sent = s[0].Sent
			mf = scrape(t, "http://"+r.metrics+"/metrics")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, source packets %v\n%s", s, src, r.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := metricValue(t, mf, "zcfabric_queue_packets_total", map[string]string{"cluster": "62", "queue": "0", "direction": "out"})
	if sent < after {
		t.Errorf("the queue was sent %d over both daemons, fewer than the generator's %d: frames lost across the restart", sent, after)
	}
	t.Logf("killed daemon's generator got to %d; the queue carried %d over both daemons (%d sent twice)", resumed, sent, sent-after)
	if sent > after+32 {
		// The marks are written after every burst (at most 32 frames).
		t.Errorf("the queue was sent %d over both daemons for the generator's %d: %d sent twice, more than the last burst before the kill", sent, after, sent-after)
	}
	if uint64(out) != sent {
		t.Errorf("metrics say %v packets out, stats %d", out, sent)
	}
	if got := metricValue(t, mf, "zcfabric_regions_adopted", map[string]string{"cluster": "62"}); got != 1 {
		t.Errorf("zcfabric_regions_adopted = %v, want 1", got)
	}
	// The daemon was down about 300 ms; its status file is written or
	// touched every second, so the gap seen is between that and a bit
	// over a second.
	if gap := metricValue(t, mf, "zcfabric_restart_gap_seconds", map[string]string{"cluster": "62"}); gap <= 0 || gap > 30 {
		t.Errorf("zcfabric_restart_gap_seconds = %v, want the time the daemon was down", gap)
	}
	if got := metricValue(t, mf, "zcfabric_source_packets_total", map[string]string{"cluster": "62"}); got != float64(after-resumed) {
		t.Errorf("source packets = %v, want the %d left after %d", got, after-resumed, resumed)
	}
	for _, name := range []string{"zcfabric_source_filtered_total", "zcfabric_source_truncated_total"} {
		if got := metricValue(t, mf, name, map[string]string{"cluster": "62"}); got != 0 {
			t.Errorf("%s = %v, want 0 (nothing filtered or cut)", name, got)
		}
	}

	r.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-r.done; err != nil {
		t.Fatalf("daemon on SIGTERM: %v\n%s", err, r.log)
	}
	if err := <-zdone; err != nil {
		t.Fatalf("zcount: %v\n%s", err, zerr.String())
	}
	var res countResult
	if err := json.Unmarshal(zout.Bytes(), &res); err != nil {
		t.Fatalf("zcount said %q: %v", zout.String(), err)
	}
	// Everything the queue carried reached the one reader, both daemons'.
	if res.Packets != sent {
		t.Fatalf("zcount read %d packets (drops %d), the queue carried %d", res.Packets, res.Drops, sent)
	}
	if res.Packets < after {
		t.Fatalf("zcount read %d, fewer than the generator's %d", res.Packets, after)
	}
	if _, err := os.Stat(region); !os.IsNotExist(err) {
		t.Fatalf("region left after SIGTERM: %v", err)
	}
	if _, err := os.Stat(region + ".marks"); !os.IsNotExist(err) {
		t.Fatalf("marks file left after SIGTERM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.state, "cluster-62.json")); !os.IsNotExist(err) {
		t.Fatalf("state file left after SIGTERM: %v", err)
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	return mf
}

func metricValue(t *testing.T, mf map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f := mf[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
	var sum float64
	found := false
	for _, m := range f.GetMetric() {
		ok := true
		for k, v := range labels {
			match := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					match = true
				}
			}
			ok = ok && match
		}
		if !ok {
			continue
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	if !found {
		t.Fatalf("no %s%v", name, labels)
	}
	return sum
}

// TestDaemonControlSocket: garbage, an oversized request, an unknown op
// and a client that is not root get error replies (or no connection),
// and the daemon goes on answering.
func TestDaemonControlSocket(t *testing.T) {
	r := newDaemonRig(t, `
[[cluster]]
id = 63
backing = "shm"
queue_len = 64
`)
	r.start()
	raw := func(payload []byte) controlReply {
		c, err := net.Dial("unix", r.control)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(payload)
		if cw, ok := c.(*net.UnixConn); ok {
			cw.CloseWrite()
		}
		var rep controlReply
		if err := json.NewDecoder(c).Decode(&rep); err != nil {
			t.Fatalf("no reply to %.40q: %v", payload, err)
		}
		return rep
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		want    string
	}{
		{"garbage", []byte("\x00\xffnot json\n"), "bad request"},
		{"huge", bytes.Repeat([]byte("a"), 200<<10), "longer than"},
		{"unknown op", []byte(`{"op":"format-disk"}` + "\n"), "unknown op"},
		{"unknown field", []byte(`{"op":"status","evil":1}` + "\n"), "bad request"},
		{"attach to a cluster it does not run", []byte(`{"op":"attach","cluster":7,"vm":"/x"}` + "\n"), "not run by this daemon"},
		{"empty", nil, "no request"},
	} {
		rep := raw(tc.payload)
		if rep.OK || !strings.Contains(rep.Error, tc.want) {
			t.Errorf("%s: reply %+v, want an error with %q", tc.name, rep, tc.want)
		}
	}
	// Not root: refused (the socket is 0660 root's; connecting fails, or
	// the daemon says no).
	os.Chmod(r.bin, 0o755) // nobody runs the binary; the socket is what refuses it
	cmd := exec.Command(filepath.Join(r.bin, "zchost"), "status", "--control", r.control)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("zchost status as nobody succeeded:\n%s", out)
	} else if !strings.Contains(string(out), "permission denied") {
		t.Errorf("zchost status as nobody: %v\n%s", err, out)
	}
	if st := r.ask(controlRequest{Op: "status"}); len(st.Clusters) != 1 || st.Clusters[0].Cluster != 63 {
		t.Fatalf("status after the bad requests: %+v", st)
	}
	fi, err := os.Stat(r.control)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("control socket mode %v (%v), want 0660", fi.Mode(), err)
	}
}

// TestDaemonVMNotThere: an export whose VM is not running does not stop
// the daemon: it waits for the VM (its QMP socket) and says so.
func TestDaemonVMNotThere(t *testing.T) {
	qmp := filepath.Join(t.TempDir(), "vm.qmp")
	r := newDaemonRig(t, fmt.Sprintf(`
[[cluster]]
id = 65
queues = 2
backing = "shm"
queue_len = 64
sources = ["gen:len=64,rate=100"]
[[cluster.export]]
vm = %q
queues = [1]
`, qmp))
	r.start()
	st := r.ask(controlRequest{Op: "status"})
	if len(st.Clusters) != 1 || len(st.Clusters[0].VMs) != 1 || !st.Clusters[0].VMs[0].Waiting {
		t.Fatalf("status %+v, want vm %s waiting\n%s", st, qmp, r.log)
	}
	if _, err := os.Stat(filepath.Join(strings.TrimPrefix(r.env[len(r.env)-1], "ZC_DIR="), "zc-65.vm1")); !os.IsNotExist(err) {
		t.Fatalf("a region left for the absent VM: %v", err)
	}
	out, err := exec.Command(filepath.Join(r.bin, "zchost"), "status", "--control", r.control).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "waiting for the VM") {
		t.Fatalf("zchost status: %v\n%s", err, out)
	}
	// zchost attach for a cluster the daemon runs goes to the daemon
	// (which refuses a second export of the VM, and fails on a VM that is
	// not there).
	att := exec.Command(filepath.Join(r.bin, "zchost"), "attach", "--control", r.control, "--qmp", qmp, "-c", "65", "--queues", "0")
	att.Env = r.env
	if out, err := att.CombinedOutput(); err == nil || !strings.Contains(string(out), "zchost daemon:") || !strings.Contains(string(out), "already exported") {
		t.Fatalf("zchost attach through the daemon: %v\n%s", err, out)
	}
	other := filepath.Join(t.TempDir(), "other.qmp")
	att = exec.Command(filepath.Join(r.bin, "zchost"), "attach", "--control", r.control, "--qmp", other, "-c", "65", "--queues", "0")
	att.Env = r.env
	if out, err := att.CombinedOutput(); err == nil || !strings.Contains(string(out), "zchost daemon:") || !strings.Contains(string(out), other) {
		t.Fatalf("zchost attach of an absent VM through the daemon: %v\n%s", err, out)
	}
}

// TestDaemonBadConfig: a wrong file stops the daemon before it makes
// anything, naming file, line and key.
func TestDaemonBadConfig(t *testing.T) {
	r := newDaemonRig(t, `
[[cluster]]
id = 64
mode = "ipx"
`)
	out, err := exec.Command(filepath.Join(r.bin, "zchost"), "daemon", "--config", r.conf).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "zchost.toml:7: cluster[0].mode") {
		t.Fatalf("daemon with a bad mode: %v\n%s", err, out)
	}
	if _, err := os.Stat(r.state); !os.IsNotExist(err) {
		t.Fatalf("state directory made for a bad file: %v", err)
	}
}

// TestDaemonReloadHost: a reload (zchost reload, and SIGHUP) starts an
// added cluster, stops a removed one, moves the metrics endpoint, and
// refuses a changed cluster definition naming file:line:key, changing
// nothing.
func TestDaemonReloadHost(t *testing.T) {
	r := newDaemonRig(t, `
[[cluster]]
id = 66
backing = "shm"
queue_len = 64
`)
	r.start()
	dir := strings.TrimPrefix(r.env[len(r.env)-1], "ZC_DIR=")
	write := func(metrics, clusters string) {
		conf := fmt.Sprintf("state_dir = %q\nmetrics = %q\nlog_level = \"info\"\n%s", r.state, metrics, clusters)
		if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() (string, error) {
		c := exec.Command(filepath.Join(r.bin, "zchost"), "reload", "--control", r.control)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	moved := freePort(t)
	write(moved, `
[[cluster]]
id = 67
backing = "shm"
queue_len = 64
`)
	if out, err := reload(); err != nil || !strings.Contains(out, "cluster 66 removed") || !strings.Contains(out, "cluster 67 started") || !strings.Contains(out, "metrics changed") {
		t.Fatalf("reload: %v\n%s\n%s", err, out, r.log)
	}
	if _, err := os.Stat(filepath.Join(dir, "zc-66")); !os.IsNotExist(err) {
		t.Fatalf("removed cluster's region left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "zc-67")); err != nil {
		t.Fatalf("added cluster's region: %v", err)
	}
	mf := scrape(t, "http://"+moved+"/metrics")
	if _, ok := mf["zcfabric_daemon_ready_seconds"]; !ok {
		t.Fatal("metrics not served on the new address")
	}
	if _, err := http.Get("http://" + r.metrics + "/metrics"); err == nil {
		t.Error("metrics still served on the old address")
	}
	// A changed definition: refused, nothing changes.
	write(moved, `
[[cluster]]
id = 67
backing = "shm"
queue_len = 128
`)
	out, err := reload()
	if err == nil || !strings.Contains(out, "zchost.toml:8: cluster[0].queue_len") {
		t.Fatalf("reload of a changed cluster: %v\n%s", err, out)
	}
	// SIGHUP reloads the same way (here: refused again, logged).
	r.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.log.String(), "reload refused") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(r.log.String(), "reload refused") {
		t.Fatalf("SIGHUP: no reload in the log\n%s", r.log)
	}
	if st := r.ask(controlRequest{Op: "status"}); len(st.Clusters) != 1 || st.Clusters[0].Cluster != 67 {
		t.Fatalf("status after the refused reload: %+v", st)
	}
	// A reload of which one step fails (an export to a VM that is not
	// there) applies the rest, says both (exit status 1), and the next
	// reload tries the failed step again.
	absent := filepath.Join(t.TempDir(), "absent.qmp")
	write(moved, fmt.Sprintf(`
[[cluster]]
id = 67
backing = "shm"
queue_len = 64
[[cluster.export]]
vm = %q

[[cluster]]
id = 68
backing = "shm"
queue_len = 64
sources = ["gen:len=64,rate=2000"]
`, absent))
	out, err = reload()
	if err == nil || !strings.Contains(out, "reloaded: cluster 68 started") || !strings.Contains(out, "export to vm "+absent) {
		t.Fatalf("reload with a failing export: %v\n%s", err, out)
	}
	if st := r.ask(controlRequest{Op: "status"}); len(st.Clusters) != 2 {
		t.Fatalf("status after the partly failed reload: %+v", st)
	}
	// Cluster 67 has no sources (producers that attach feed it): its
	// queue is up, not down.
	if up := metricValue(t, scrape(t, "http://"+moved+"/metrics"), "zcfabric_queue_up", map[string]string{"cluster": "67"}); up != 1 {
		t.Errorf("zcfabric_queue_up of a producer-fed queue = %v, want 1", up)
	}
	// The cluster a reload started keeps running after the reply (it ran
	// under the request's context, and its generator stopped there).
	fed := func() uint64 {
		st := r.ask(controlRequest{Op: "stats"})
		var n uint64
		for _, q := range st.Stats[68] {
			n += q.Sent + q.Drops
		}
		return n
	}
	before := fed()
	for deadline := time.Now().Add(20 * time.Second); fed() <= before; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("cluster 68, started by a reload, stopped after it: %d packets and no more\n%s", before, r.log)
		}
	}
	out, err = reload()
	if err == nil || !strings.Contains(out, "export to vm "+absent) || strings.Contains(out, "cluster 68") {
		t.Fatalf("second reload: the failed export is not tried again: %v\n%s", err, out)
	}
	if !strings.Contains(r.log.String(), "reload partly failed; the rest is applied, and the next reload tries what failed again: by=\"zchost reload\"") {
		t.Errorf("a reload by zchost reload left nothing in the daemon's log:\n%s", r.log)
	}
	r.cmd.Process.Signal(syscall.SIGHUP)
	for !strings.Contains(r.log.String(), "reload partly failed") && time.Now().Before(deadline.Add(10*time.Second)) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(r.log.String(), "reload partly failed") {
		t.Fatalf("SIGHUP: no partly failed reload in the log\n%s", r.log)
	}
}
