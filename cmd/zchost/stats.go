package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zcfabric/zc"
	"github.com/zcfabric/zc/host/status"
	"github.com/zcfabric/zc/ivshmem"
	"golang.org/x/sys/unix"
)

func init() {
	register("stats", "print the queue table and counters of a live cluster", statsCmd)
}

func statsCmd(args []string) error {
	fs := newFlags("stats", "-c ID [--json] [--watch 1s]")
	id := clusterID(99)
	var asJSON bool
	var watch time.Duration
	for _, n := range []string{"c", "cluster"} {
		fs.Var(&id, n, "cluster `id`")
	}
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	fs.DurationVar(&watch, "watch", 0, "repeat every `interval` until interrupted (0: print once)")
	if err := parseAll(fs, args); err != nil {
		return err
	}
	if err := negative("--watch", watch); err != nil {
		return err
	}
	for {
		info, err := zc.Inspect(uint32(id))
		if err != nil {
			return err
		}
		vms, err := zc.InspectVMRegions(uint32(id))
		if err != nil {
			return err
		}
		agent, agentErr := status.Read(status.Path(uint32(id)))
		var rec *agentRecord
		if agentErr == nil {
			info = mergeAgent(info, &agent)
			for i := range vms {
				vms[i] = mergeAgent(vms[i], &agent)
			}
			now := time.Now()
			srcs, _ := agent.Positions(uint32(id)) // the marks when they are its own, else the record
			rec = &agentRecord{PID: agent.PID, Updated: agent.Updated, AgeSeconds: now.Sub(agent.Updated).Seconds(),
				Checked: agent.Checked, CheckedAgeSeconds: now.Sub(agent.Checked).Seconds(),
				Running: agent.PID > 0 && unix.Kill(agent.PID, 0) != unix.ESRCH,
				Sources: srcs}
		}
		if asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(struct {
				zc.ClusterInfo
				VMRegions []zc.ClusterInfo `json:"vm_regions,omitempty"`
				Agent     *agentRecord     `json:"agent,omitempty"`
			}{info, vms, rec}); err != nil {
				return err
			}
		} else {
			printInfo(info)
			for _, v := range vms {
				fmt.Println()
				printInfo(v)
			}
			if rec != nil {
				fmt.Println(rec)
			}
		}
		if watch <= 0 {
			return nil
		}
		time.Sleep(watch)
	}
}

// agentRecord says whose record zchost stats merged, and how old it is:
// the agent looks once a second (sooner just after it starts), rewrites
// the record when a counter moved and touches it when nothing did; a
// killed agent leaves its last.
type agentRecord struct {
	PID        int       `json:"pid"`
	Updated    time.Time `json:"updated"`     // last written: its counters changed then
	AgeSeconds float64   `json:"age_seconds"` // since Updated
	// Checked is when the agent last found the record current (at or
	// after Updated): its last sign of life.
	Checked           time.Time `json:"checked"`
	CheckedAgeSeconds float64   `json:"checked_age_seconds"`
	Running           bool      `json:"running"`
	// Sources are the agent's finite sources and how far each got: from
	// its marks (written after every burst) where they are its, else from
	// the record.
	Sources []status.Source `json:"sources,omitempty"`
}

func (r *agentRecord) String() string {
	round := func(s float64) time.Duration {
		return time.Duration(s * float64(time.Second)).Round(100 * time.Millisecond)
	}
	age, seen := round(r.AgeSeconds), round(r.CheckedAgeSeconds)
	var line string
	switch {
	case !r.Running:
		line = fmt.Sprintf("agent record: pid %d is gone (last seen %v ago); its last record shows where it stopped", r.PID, seen)
	case age-seen >= time.Second:
		line = fmt.Sprintf("agent record: pid %d, checked %v ago, unchanged for %v (the values read from the region are of now)", r.PID, seen, age)
	default:
		line = fmt.Sprintf("agent record: pid %d, written %v ago (once a second; the values read from the region are of now)", r.PID, age)
	}
	for _, src := range r.Sources {
		line += fmt.Sprintf("\nsource %s: at %d (frames generated or records read; a successor resumes there)", src.Name, src.Position)
	}
	return line
}

// mergeAgent puts the agent's own record (host/status) over what the
// region says: its producer counters (kept in its process memory, where
// no consumer or guest can write), the states of queues and regions it
// saw fail, and a header check: a region whose header checksum is not
// the one the agent wrote was rewritten, even if it parses.
func mergeAgent(info zc.ClusterInfo, agent *status.File) zc.ClusterInfo {
	rec, ok := agent.Find(info.Path)
	if !ok {
		return info
	}
	if info.State == "ok" && (info.Checksum != rec.Checksum || info.Generation != rec.Generation) {
		info.State = "corrupt"
		info.Failure = fmt.Sprintf("header rewritten: checksum %#x generation %d, the agent wrote %#x generation %d",
			info.Checksum, info.Generation, rec.Checksum, rec.Generation)
	}
	if info.State == "ok" && rec.State != "ok" {
		info.State, info.Failure = rec.State, rec.Failure
	}
	for _, a := range rec.Queues {
		for i := range info.Queues {
			q := &info.Queues[i]
			if q.Queue != a.Queue {
				continue
			}
			q.Sent, q.SentBytes, q.Drops = a.Sent, a.SentBytes, a.Drops
			q.Reclaimed, q.BadReturns, q.Recovered = a.Reclaimed, a.BadReturns, a.Recovered
			q.RecoveriesDeferred = a.RecoveriesDeferred
			q.State, q.Failure, q.View = a.State, a.Failure, "agent"
		}
	}
	return info
}

func printInfo(info zc.ClusterInfo) {
	if info.State != "ok" && info.State != "" {
		fmt.Printf("cluster %d  %s  %s: %s\n", info.ID, info.Path, strings.ToUpper(info.State), info.Failure)
		if len(info.Queues) == 0 {
			return
		}
	}
	fmt.Printf("cluster %d  gen %d  creator pid %d  %s (%s)  %d bytes  %d buffers x %d bytes  hugepages=%v shared=%v\n",
		info.ID, info.Generation, info.CreatorPID, info.Path, info.File, info.Size, info.Buffers, info.BufferSize, info.Hugepages, info.Shared)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "queue\tstate\tslots\tdepth*\tsent\tsent bytes\tdrops\treceived*\trecv bytes*\tbad*\treturned*\tbad returns\trecovered\tproducer*\tconsumer*\t")
	for _, q := range info.Queues {
		state := q.State
		if state == "" {
			state = "?"
		}
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", q.Queue, state, q.Slots, q.Depth, q.Sent, q.SentBytes,
			q.Drops, q.Received, q.ReceivedBytes, q.Bad, q.Returned, q.BadReturns, q.Recovered, q.Owner(ivshmem.EndProducer), q.Owner(ivshmem.EndConsumer))
	}
	w.Flush()
	for _, q := range info.Queues {
		if q.Failure != "" {
			fmt.Printf("queue %d failed: %s\n", q.Queue, q.Failure)
		}
	}
	if len(info.Queues) > 0 && info.Queues[0].View == "agent" {
		fmt.Println("* read from the region: the consumer's counters and the owners, as those processes or guests wrote them (the agent does not act on them); the rest is the agent's own record")
	} else {
		fmt.Println("* and every other counter: read from the region as its users wrote them (no agent record for it)")
	}
}
