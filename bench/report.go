package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// report is everything one run measured.
type report struct {
	Date     time.Time
	Host     string // kernel and CPU
	Commit   string
	Smoke    bool
	Rounds   int
	Duration time.Duration // of each load run
	Took     time.Duration

	Direct    map[string]float64 // direct's medians per metric
	Ratios    []Ratio
	Scale     scaleRun
	Hooks     []hookCost
	ColdStart []coldStart
	Control   []controlFigures
	Updates   updateFigures
	DNS       dnsResult
}

type coldStart struct {
	Services int
	Ready    time.Duration
}

type controlFigures struct {
	Services                 int // loaded before the files came
	ConnectP50, ConnectP99   time.Duration
	ConnectWorst             time.Duration
	DNSP50, DNSP99, DNSWorst time.Duration
	Files                    int
}

type updateFigures struct {
	Services int
	Files    int
	Rate     float64
	Lag      time.Duration
}

func durPercentiles(ds []time.Duration) (p50, p99, worst time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0, 0
	}
	return s[len(s)/2], s[(len(s)*99)/100], s[len(s)-1]
}

// check is one line of the targets table.
type check struct {
	what, target, measured string
	met                    bool
}

func (r *report) checks() []check {
	var out []check
	for _, x := range r.Ratios {
		if x.Variant == Sockmesh && x.Target > 0 {
			out = append(out, check{x.Metric + " (ratio to direct)", fmt.Sprintf("≥ %.2f", x.Target), fmt.Sprintf("%.3f", x.Ratio), x.Ratio >= x.Target})
		}
	}
	var lo, hi ScalePoint
	for _, p := range r.Scale.Points {
		if p.Variant != Sockmesh {
			continue
		}
		if lo.VIPs == 0 || p.VIPs < lo.VIPs {
			lo = p
		}
		if p.VIPs > hi.VIPs {
			hi = p
		}
	}
	if lo.P50 > 0 {
		f := float64(hi.P50) / float64(lo.P50)
		out = append(out, check{fmt.Sprintf("connect() p50, %s VIPs vs %s", thousands(hi.VIPs), thousands(lo.VIPs)), "≤ 1.05×", fmt.Sprintf("%.3f× (%s vs %s)", f, us(hi.P50), us(lo.P50)), f <= 1.05})
	}
	for _, h := range r.Hooks {
		if h.Target > 0 {
			out = append(out, check{h.Program + " " + h.What, "< " + h.Target.String(), h.PerRun.String(), h.PerRun < h.Target})
		}
	}
	for _, c := range r.Control {
		out = append(out, check{fmt.Sprintf("file to VIP p99, %s services loaded", thousands(c.Services)), "< 20ms", ms(c.ConnectP99), c.ConnectP99 < 20*time.Millisecond})
	}
	if r.DNS.UnboundMed > 0 {
		f := r.DNS.StubMed / r.DNS.UnboundMed
		out = append(out, check{"DNS qps, stub vs unbound", "≥ 1.00", fmt.Sprintf("%.3f (%s vs %s)", f, thousands(int(r.DNS.StubMed)), thousands(int(r.DNS.UnboundMed))), f >= 1})
	}
	return out
}

// markdown renders the report.
func (r *report) markdown(chart string) string {
	var b strings.Builder
	kind := "full run"
	if r.Smoke {
		kind = "smoke run (tiny sizes: figures mean nothing)"
	}
	fmt.Fprintf(&b, "# sockmesh benchmark, %s\n\n", r.Date.Format("2006-01-02"))
	fmt.Fprintf(&b, "%s on %s, commit %s; %d interleaved rounds of %v per load, %v in all. Reproduce: `make bench`.\n\n",
		kind, r.Host, r.Commit, r.Rounds, r.Duration, r.Took.Round(time.Second))
	if chart != "" {
		fmt.Fprintf(&b, "![connect latency against VIPs loaded, and ratios to direct](%s)\n\n", chart)
	}

	b.WriteString("## Targets\n\n| what | target | measured | |\n| --- | --- | --- | --- |\n")
	for _, c := range r.checks() {
		mark := "met"
		if !c.met {
			mark = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", c.what, c.target, c.measured, mark)
	}

	b.WriteString("\n## Datapath: ratio to direct (median of per-round ratios; higher is better)\n\n")
	variants := []Variant{Sockmesh, NftMap, IptLinear, HAProxy, GoProxy, DirectAfter}
	b.WriteString("| metric | direct |")
	for _, v := range variants {
		fmt.Fprintf(&b, " %s |", v)
	}
	b.WriteString("\n| --- | --- |" + strings.Repeat(" --- |", len(variants)) + "\n")
	for _, m := range datapathMetrics {
		fmt.Fprintf(&b, "| %s | %s %s |", m.name, figure(r.Direct[m.name]), m.unit)
		for _, v := range variants {
			cell := "–"
			for _, x := range r.Ratios {
				if x.Metric == m.name && x.Variant == v {
					cell = fmt.Sprintf("%.3f", x.Ratio)
				}
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("\nOne client, one transaction at a time (netperf's TCP_CRR, TCP_RR and UDP_RR shape, 1-byte messages), iperf3 for bulk; " +
		"backend, proxies and clients on loopback in a private network namespace. Proxies carry no UDP. " +
		"\"direct, nat removed\" is direct measured after each round's NAT variants deleted their tables: connection tracking must not linger.\n")

	b.WriteString("\n## connect() latency against VIPs loaded (p50 / p99)\n\n| VIPs |")
	sizes := r.scaleSizes()
	for _, v := range []Variant{Direct, Sockmesh, NftMap, IptLinear} {
		fmt.Fprintf(&b, " %s |", v)
	}
	b.WriteString("\n| --- | --- | --- | --- | --- |\n")
	for _, n := range sizes {
		fmt.Fprintf(&b, "| %s |", thousands(n))
		for _, v := range []Variant{Direct, Sockmesh, NftMap, IptLinear} {
			for _, p := range r.Scale.Points {
				if p.Variant == v && p.VIPs == n {
					fmt.Fprintf(&b, " %s / %s |", us(p.P50), us(p.P99))
				}
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\nsockmesh: one daemon per size, all loaded at once (decoys have an IPv4 and an IPv6 VIP each), so sizes interleave round by round. " +
		"nftables: one verdict map (kube-proxy's nftables mode); iptables: one rule per service port in one chain (kube-proxy's iptables mode), the dialled VIP's rule in the middle.")
	if loads := r.Scale.NATLoad; len(loads) > 0 {
		b.WriteString(" Rule load time:")
		for _, v := range []Variant{NftMap, IptLinear} {
			for _, n := range sizes {
				if t, ok := loads[v][n]; ok {
					fmt.Fprintf(&b, " %s %s %s;", v, thousands(n), ms(t))
				}
			}
		}
	}
	b.WriteString("\n")

	b.WriteString("\n## Per-hook cost (kernel.bpf_stats_enabled)\n\n| program | traffic | runs | ns per run |\n| --- | --- | --- | --- |\n")
	for _, h := range r.Hooks {
		fmt.Fprintf(&b, "| %s | %s | %s | %d |\n", h.Program, h.What, thousands(int(h.Runs)), h.PerRun.Nanoseconds())
	}

	b.WriteString("\n## Control plane\n\n| figure | value |\n| --- | --- |\n")
	for _, c := range r.ColdStart {
		fmt.Fprintf(&b, "| cold start, %s service files (exec to ready) | %s |\n", thousands(c.Services), ms(c.Ready))
	}
	for _, c := range r.Control {
		fmt.Fprintf(&b, "| rename() to connect, %s services loaded (p50 / p99 / worst of %d) | %s / %s / %s |\n", thousands(c.Services), c.Files, ms(c.ConnectP50), ms(c.ConnectP99), ms(c.ConnectWorst))
		fmt.Fprintf(&b, "| rename() to DNS answer, %s services loaded (p50 / p99 / worst of %d) | %s / %s / %s |\n", thousands(c.Services), c.Files, ms(c.DNSP50), ms(c.DNSP99), ms(c.DNSWorst))
	}
	if r.Updates.Files > 0 {
		fmt.Fprintf(&b, "| sustained updates, %d files rewritten in turn, %s services loaded | %s/s (all live %s after the last write) |\n",
			r.Updates.Files, thousands(r.Updates.Services), thousands(int(r.Updates.Rate)), ms(r.Updates.Lag))
	}

	if r.DNS.UnboundMed > 0 {
		fmt.Fprintf(&b, "\n## DNS: queries per second, dnsperf on loopback, %s services\n\n| server | median | rounds |\n| --- | --- | --- |\n", thousands(r.DNS.Services))
		fmt.Fprintf(&b, "| sockmesh stub | %s | %s |\n", thousands(int(r.DNS.StubMed)), rates(r.DNS.Stub))
		fmt.Fprintf(&b, "| unbound (local-data, 2 threads) | %s | %s |\n", thousands(int(r.DNS.UnboundMed)), rates(r.DNS.Unbound))
		fmt.Fprintf(&b, "\nQuery mix per service: A, AAAA, SRV and a missing name (%s).\n", r.DNS.Mix)
	}
	return b.String()
}

func (r *report) scaleSizes() []int {
	var out []int
	for _, p := range r.Scale.Points {
		if !slices.Contains(out, p.VIPs) {
			out = append(out, p.VIPs)
		}
	}
	slices.Sort(out)
	return out
}

func figure(x float64) string {
	switch {
	case math.IsNaN(x):
		return "–"
	case x >= 1000:
		return thousands(int(x + 0.5))
	default:
		return fmt.Sprintf("%.1f", x)
	}
}

func thousands(n int) string { return formatRate(float64(n)) }

func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func rates(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, thousands(int(x)))
	}
	return strings.Join(parts, ", ")
}
