package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// runLoadIn runs one load in cgroup and returns what it measured.
func (e *env) runLoadIn(cgroup string, spec loadSpec) (loadResult, error) {
	arg, err := json.Marshal(spec)
	if err != nil {
		return loadResult{}, err
	}
	ctx, cancel := context.WithTimeout(e.ctx, spec.Duration+30*time.Second)
	defer cancel()
	cmd, err := e.dataRole(ctx, cgroup, "load", string(arg))
	if err != nil {
		return loadResult{}, err
	}
	var res loadResult
	if err := outputJSON(cmd, &res); err != nil {
		return loadResult{}, fmt.Errorf("%s load to %s: %w", spec.Mode, spec.Target, err)
	}
	if res.Ops == 0 {
		return loadResult{}, fmt.Errorf("%s load to %s: no transaction completed", spec.Mode, spec.Target)
	}
	if res.Mismatched > 0 {
		return loadResult{}, fmt.Errorf("%s load to %s: %d of %d replies came from another address than the one dialled", spec.Mode, spec.Target, res.Mismatched, res.Ops)
	}
	return res, nil
}

// outputJSON runs a role and decodes what it prints into v; a failure
// carries the role's stderr.
func outputJSON(cmd *exec.Cmd, v any) error {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("parse result %q: %w", out, err)
	}
	return nil
}

// runIperf runs one iperf3 stream in cgroup and returns bits per second
// received.
func (e *env) runIperf(cgroup, host string, port int, d time.Duration) (float64, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	ctx, cancel := context.WithTimeout(e.ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	bin, args := e.onDataCPU("iperf3", "-c", host, "-p", fmt.Sprint(port), "-t", fmt.Sprint(secs), "-J")
	cmd, err := e.command(ctx, cgroup, bin, args...)
	if err != nil {
		return 0, err
	}
	out, err := cmd.Output()
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil || err != nil || res.Error != "" {
		return 0, fmt.Errorf("iperf3 to %s:%d: %v %v %s", host, port, err, jerr, res.Error)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}

// endpoint is how a client of one variant reaches the backend.
type endpoint struct {
	variant Variant
	cgroup  string      // where its client runs
	host    string      // address it dials, on the ports of env.go
	udp     bool        // whether it carries UDP (proxies do not)
	nat     *natVariant // rules to load around the measurement
	natVIPs int         // VIPs those rules hold, the dialled one included
}

// sample is one variant's figures in one round. Missing figures are NaN.
type sample struct {
	crr, connectP50, connectP99, rr, bulk, udpConn, udpUnconn float64
}

// datapathMetrics describes the figures of a sample for the report.
var datapathMetrics = []struct {
	name   string
	unit   string
	get    func(sample) float64
	lower  bool    // lower is better (a latency)
	target float64 // ratio to direct the issue asks of sockmesh
}{
	{"TCP connect+close rate", "conn/s", func(s sample) float64 { return s.crr }, false, 0.97},
	{"connect() p50", "µs", func(s sample) float64 { return s.connectP50 }, true, 0},
	{"connect() p99", "µs", func(s sample) float64 { return s.connectP99 }, true, 0},
	{"request/response rate", "req/s", func(s sample) float64 { return s.rr }, false, 0.99},
	{"bulk throughput", "Gbit/s", func(s sample) float64 { return s.bulk }, false, 0.99},
	{"UDP connected RR", "req/s", func(s sample) float64 { return s.udpConn }, false, 0.99},
	{"UDP unconnected RR", "req/s", func(s sample) float64 { return s.udpUnconn }, false, 0.95},
}

// measureEndpoint takes one round of every figure of ep.
func (e *env) measureEndpoint(ep endpoint, d time.Duration) (sample, error) {
	s := sample{math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN()}
	if ep.nat != nil {
		if err := ep.nat.load(max(ep.natVIPs, 1)); err != nil {
			return s, err
		}
		defer func() {
			if err := ep.nat.remove(); err != nil {
				e.log.Error("remove nat rules", "err", err)
			}
		}()
	}
	crr, err := e.runLoadIn(ep.cgroup, loadSpec{Mode: "crr", Target: fmt.Sprintf("%s:%d", ep.host, crrPort), Duration: d, Count: 200000})
	if err != nil {
		return s, err
	}
	s.crr, s.connectP50, s.connectP99 = crr.Rate(), micros(crr.ConnectP50), micros(crr.ConnectP99)
	rr, err := e.runLoadIn(ep.cgroup, loadSpec{Mode: "rr", Target: fmt.Sprintf("%s:%d", ep.host, rrPort), Duration: d})
	if err != nil {
		return s, err
	}
	s.rr = rr.Rate()
	bps, err := e.runIperf(ep.cgroup, ep.host, bulkPort, d)
	if err != nil {
		return s, err
	}
	s.bulk = bps / 1e9
	if !ep.udp {
		return s, nil
	}
	udpTarget := fmt.Sprintf("%s:%d", ep.host, udpPort)
	for _, m := range []struct {
		mode string
		dst  *float64
	}{{"udp-conn", &s.udpConn}, {"udp-unconn", &s.udpUnconn}} {
		r, err := e.runLoadIn(ep.cgroup, loadSpec{Mode: m.mode, Target: udpTarget, Duration: d})
		if err != nil {
			return s, err
		}
		*m.dst = r.Rate()
	}
	return s, nil
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// datapathRounds measures every endpoint, round after round. Each round
// starts with direct and ends with direct again (after the NAT variants
// removed their tables), and rotates the order of the others, so machine
// drift and position hit every variant alike.
func (e *env) datapathRounds(eps []endpoint, rounds int, d time.Duration) (map[Variant][]sample, error) {
	var direct, after endpoint
	var others []endpoint
	for _, ep := range eps {
		switch ep.variant {
		case Direct:
			direct = ep
		case DirectAfter:
			after = ep
		default:
			others = append(others, ep)
		}
	}
	// A warm-up: the first loads of a fresh namespace and fresh servers
	// run slow (page faults, goroutine stacks, socket caches).
	if _, err := e.measureEndpoint(direct, d); err != nil {
		return nil, fmt.Errorf("warm up: %w", err)
	}
	out := map[Variant][]sample{}
	for r := range rounds {
		order := append([]endpoint{direct}, rotate(others, r)...)
		order = append(order, after)
		for _, ep := range order {
			start := time.Now()
			s, err := e.measureEndpoint(ep, d)
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", r+1, ep.variant, err)
			}
			out[ep.variant] = append(out[ep.variant], s)
			e.log.Info("measured", "round", r+1, "variant", string(ep.variant), "crr", figure(s.crr), "rr", figure(s.rr),
				"gbit", figure(s.bulk), "udp", figure(s.udpConn), "udp-unconn", figure(s.udpUnconn), "took", time.Since(start).Round(time.Millisecond))
		}
	}
	return out, nil
}

func rotate[T any](xs []T, by int) []T {
	if len(xs) == 0 {
		return nil
	}
	by %= len(xs)
	return append(slices.Clone(xs[by:]), xs[:by]...)
}

// ratios turns the rounds into the ratio table: for each metric and
// variant, the median over rounds of the variant's figure divided by
// direct's figure of the same round (inverted for latencies, so that
// higher is better everywhere).
func ratios(rounds map[Variant][]sample, order []Variant) []Ratio {
	var out []Ratio
	for _, m := range datapathMetrics {
		for _, v := range order {
			if v == Direct {
				continue
			}
			var rs, vals []float64
			for i, s := range rounds[v] {
				x, base := m.get(s), m.get(rounds[Direct][i])
				if math.IsNaN(x) || math.IsNaN(base) || x == 0 || base == 0 {
					continue
				}
				vals = append(vals, x)
				if m.lower {
					rs = append(rs, base/x)
				} else {
					rs = append(rs, x/base)
				}
			}
			if len(rs) == 0 {
				continue
			}
			target := 0.0
			if v == Sockmesh {
				target = m.target
			}
			out = append(out, Ratio{Metric: m.name, Variant: v, Value: median(vals), Unit: m.unit, Ratio: median(rs), Target: target})
		}
	}
	return out
}

// directFigures are direct's medians, the 100 % of the table.
func directFigures(rounds map[Variant][]sample) map[string]float64 {
	out := map[string]float64{}
	for _, m := range datapathMetrics {
		var vals []float64
		for _, s := range rounds[Direct] {
			vals = append(vals, m.get(s))
		}
		out[m.name] = median(vals)
	}
	return out
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// startServers starts the backend (echo and iperf3) and the two proxies.
func (e *env) startServers() error {
	if err := e.startRole("backend", fmt.Sprintf("tcp:%s:%d", backendIP, rrPort), fmt.Sprintf("tcp:%s:%d", backendIP, crrPort), fmt.Sprintf("udp:%s:%d", backendIP, udpPort)); err != nil {
		return err
	}
	bin, args := e.onDataCPU("iperf3", "-s", "-B", backendIP, "-p", fmt.Sprint(bulkPort))
	iperf, err := e.command(e.ctx, "", bin, args...)
	if err != nil {
		return err
	}
	if _, err := e.start("iperf3", iperf); err != nil {
		return err
	}
	conf := e.tmp + "/haproxy.cfg"
	if err := os.WriteFile(conf, []byte(haproxyConfig()), 0o644); err != nil {
		return fmt.Errorf("write haproxy config: %w", err)
	}
	bin, args = e.onDataCPU("haproxy", "-db", "-f", conf)
	hap, err := e.command(e.ctx, "", bin, args...)
	if err != nil {
		return err
	}
	hap.Stderr = os.Stderr
	if _, err := e.start("haproxy", hap); err != nil {
		return err
	}
	var pairs []string
	for _, port := range proxiedPorts {
		pairs = append(pairs, fmt.Sprintf("%s:%d=%s:%d", goproxyIP, port, backendIP, port))
	}
	if err := e.startRole("goproxy", pairs...); err != nil {
		return err
	}
	if err := waitListening(fmt.Sprintf("%s:%d", backendIP, bulkPort), 10*time.Second); err != nil {
		return err
	}
	for _, port := range []int{rrPort, crrPort} {
		if err := waitTCP(fmt.Sprintf("%s:%d", haproxyIP, port), 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// haveTools fails early, naming what to install, if a tool is missing.
func haveTools() error {
	var missing []string
	for _, t := range []string{"iperf3", "haproxy", "nft", "iptables-restore", "dnsperf", "unbound"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("find tools: %s missing (make bench-deps installs them)", strings.Join(missing, ", "))
	}
	return nil
}
