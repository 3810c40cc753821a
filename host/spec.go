package host

import (
	"fmt"
	"strings"

	"github.com/zcfabric/zc"
)

// SourceOptions carry what sources need besides their spec.
type SourceOptions struct {
	// Cluster is the cluster the source writes into.
	Cluster *zc.Cluster
	// BPF is a classic BPF program (tcpdump -ddd output) every packet
	// must pass; "" for none.
	BPF string
}

// ParseSource turns a -i spec into sources:
//
//	gen:len=64,count=1000000,rate=1e6,flows=64   synthetic frames
//	pcap:FILE                                   pcap or pcapng replay
func ParseSource(spec string, opts SourceOptions) ([]Source, error) {
	kind, rest, _ := strings.Cut(spec, ":")
	switch kind {
	case "gen":
		cfg, err := ParseGen(rest)
		if err != nil {
			return nil, fmt.Errorf("zchost: source %q: %w", spec, err)
		}
		return []Source{NewGen(spec, cfg)}, nil
	case "pcap":
		p, err := OpenPcap(rest, PcapConfig{})
		if err != nil {
			return nil, fmt.Errorf("zchost: source %q: %w", spec, err)
		}
		return []Source{p}, nil
	}
	return nil, fmt.Errorf("zchost: source %q: unknown kind (want gen:, pcap:, zc:IF, afxdp:IF, afpacket:IF)", spec)
}
