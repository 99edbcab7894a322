package main

import "time"

// Variant names one way of reaching a backend, in the order the report
// shows them.
type Variant string

// The variants the harness compares. Direct is the physical limit every
// ratio is taken against.
const (
	Direct      Variant = "direct"
	DirectAfter Variant = "direct, nat removed"
	Sockmesh    Variant = "sockmesh"
	NftMap      Variant = "nftables DNAT map"
	IptLinear   Variant = "iptables DNAT linear"
	HAProxy     Variant = "haproxy"
	GoProxy     Variant = "Go io.Copy proxy"
)

// Ratio is one cell of the ratio table: a metric of one variant divided by
// the same metric of Direct, measured in the same run. Higher is better
// for rates; for latencies the ratio is inverted (direct/variant) so that
// higher is better everywhere.
type Ratio struct {
	Metric  string  // e.g. "TCP connect+close rate"
	Variant Variant // never Direct
	Value   float64 // the variant's own figure, in Unit
	Unit    string  // e.g. "conn/s", "µs"
	Ratio   float64 // to Direct, higher is better
	Target  float64 // the ratio the issue asks for; 0 when none
}

// ScalePoint is connect() latency with a number of VIPs loaded.
type ScalePoint struct {
	Variant Variant
	VIPs    int
	P50     time.Duration
	P99     time.Duration
}
