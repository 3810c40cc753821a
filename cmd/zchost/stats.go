package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/zcfabric/zc"
)

func init() {
	register("stats", "print the queue table and counters of a live cluster", statsCmd)
}

func statsCmd(args []string) error {
	fs := newFlags("stats", "-c ID [--json] [--watch 1s]")
	var id uint
	var asJSON bool
	var watch time.Duration
	for _, n := range []string{"c", "cluster"} {
		fs.UintVar(&id, n, 99, "cluster `id`")
	}
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	fs.DurationVar(&watch, "watch", 0, "repeat every `interval` until interrupted")
	if err := fs.Parse(args); err != nil {
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
		if asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(struct {
				zc.ClusterInfo
				VMRegions []zc.ClusterInfo `json:"vm_regions,omitempty"`
			}{info, vms}); err != nil {
				return err
			}
		} else {
			printInfo(info)
			for _, v := range vms {
				fmt.Println()
				printInfo(v)
			}
		}
		if watch <= 0 {
			return nil
		}
		time.Sleep(watch)
	}
}

func printInfo(info zc.ClusterInfo) {
	fmt.Printf("cluster %d  gen %d  creator pid %d  %s (%s)  %d bytes  %d buffers x %d bytes  hugepages=%v shared=%v\n",
		info.ID, info.Generation, info.CreatorPID, info.Path, info.File, info.Size, info.Buffers, info.BufferSize, info.Hugepages, info.Shared)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "queue\tslots\tdepth\tsent\tsent bytes\tdrops\treceived\trecv bytes\tbad\treturned\tbad returns\trecovered\tproducer\tconsumer\t")
	for _, q := range info.Queues {
		fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", q.Queue, q.Slots, q.Depth, q.Sent, q.SentBytes,
			q.Drops, q.Received, q.ReceivedBytes, q.Bad, q.Returned, q.BadReturns, q.Recovered, owner(q.Producer, q.ProducerGuest), owner(q.Consumer, q.ConsumerGuest))
	}
	w.Flush()
}

func owner(pid uint32, guest bool) string {
	switch {
	case pid == 0:
		return "-"
	case guest:
		return fmt.Sprintf("guest:%d", pid)
	}
	return fmt.Sprint(pid)
}
