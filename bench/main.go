// Command bench measures sockmesh against what users would otherwise
// pick — a direct connection (the physical limit), nftables and iptables
// DNAT as kube-proxy writes them, haproxy and a plain Go proxy — in one
// run, interleaving the variants so machine drift hits all of them alike,
// and writes a report with every figure as a ratio to direct.
//
// It runs as root, in a network namespace of its own (only lo, so nothing
// leaves the machine), with its own child cgroups and bpffs, and removes
// all of them when it ends. `make bench` runs it; `-smoke` is a seconds-long
// run with tiny sizes that `make test` uses so the harness cannot rot.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// config is one run's settings.
type config struct {
	sockmesh   string        // the daemon binary
	out        string        // where the report goes
	smoke      bool          // a seconds-long run
	rounds     int           // interleaved rounds of the datapath metrics
	duration   time.Duration // of each load
	sizes      []int         // VIPs loaded for the scale figures
	ctlFiles   int           // files of the control-plane latency test
	dnsRounds  int
	dnsTime    time.Duration
	hookCount  int // connects per hook-cost measurement
	scaleCount int // connects per scale measurement
}

func fullConfig() config {
	return config{
		rounds: 5, duration: 1500 * time.Millisecond, sizes: []int{10, 1000, 10000, 100000},
		ctlFiles: 100, dnsRounds: 3, dnsTime: 5 * time.Second, hookCount: 20000, scaleCount: 3000,
	}
}

func smokeConfig() config {
	return config{
		smoke: true, rounds: 1, duration: 200 * time.Millisecond, sizes: []int{10, 100},
		ctlFiles: 5, dnsRounds: 1, dnsTime: time.Second, hookCount: 500, scaleCount: 200,
	}
}

func main() {
	runRole()
	smoke := flag.Bool("smoke", false, "a seconds-long run with tiny sizes (what make test runs)")
	out := flag.String("out", "bench/results", "directory for <date>.md and <date>.png")
	bin := flag.String("sockmesh", "./sockmesh", "the sockmesh binary to measure")
	flag.Parse()
	if err := mainErr(*smoke, *out, *bin); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func mainErr(smoke bool, out, bin string) error {
	cfg := fullConfig()
	if smoke {
		cfg = smokeConfig()
	}
	var err error
	if cfg.out, err = filepath.Abs(out); err != nil {
		return err
	}
	if cfg.sockmesh, err = filepath.Abs(bin); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the harness loads BPF programs and NAT rules (in a namespace of its own)")
	}
	if err := haveTools(); err != nil {
		return err
	}
	if _, err := os.Stat(cfg.sockmesh); err != nil {
		return fmt.Errorf("find the sockmesh binary (make sockmesh builds it): %w", err)
	}
	reexecInNetns()
	if err := setUpNetns(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r, err := measure(cfg, log)
	if err != nil {
		return err
	}
	return writeReport(cfg, r)
}

// measure runs every measurement and gathers the report.
func measure(cfg config, log *slog.Logger) (r *report, err error) {
	start := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	e, err := newEnv(ctx, log)
	if e != nil {
		defer func() {
			if cerr := e.close(); cerr != nil && err == nil {
				err = fmt.Errorf("clean up: %w", cerr)
			}
		}()
	}
	if err != nil {
		return nil, err
	}
	r = &report{Date: time.Now(), Host: hostInfo(), Commit: commit(), Smoke: cfg.smoke, Rounds: cfg.rounds, Duration: cfg.duration}
	if err := e.startServers(); err != nil {
		return nil, err
	}
	plain, err := e.cgroup("plain")
	if err != nil {
		return nil, err
	}

	log.Info("cold start: one daemon per size", "sizes", cfg.sizes)
	var daemons []*daemon
	for i, n := range cfg.sizes {
		dm, err := e.startDaemon(cfg.sockmesh, n, fmt.Sprintf("127.0.0.%d", 153+i))
		if err != nil {
			return nil, err
		}
		daemons = append(daemons, dm)
		r.ColdStart = append(r.ColdStart, coldStart{Services: n, Ready: dm.started})
		log.Info("daemon ready", "services", n, "took", dm.started.Round(time.Millisecond))
	}
	small := daemons[0]

	log.Info("datapath rounds", "rounds", cfg.rounds, "each", cfg.duration)
	nft, ipt := nftVariant, iptVariant
	eps := []endpoint{
		{variant: Direct, cgroup: plain, host: backendIP, udp: true},
		{variant: Sockmesh, cgroup: small.cgroup, host: sockmeshIP, udp: true},
		{variant: NftMap, cgroup: plain, host: natVIP, udp: true, nat: &nft, natVIPs: small.services},
		{variant: IptLinear, cgroup: plain, host: natVIP, udp: true, nat: &ipt, natVIPs: small.services},
		{variant: HAProxy, cgroup: plain, host: haproxyIP},
		{variant: GoProxy, cgroup: plain, host: goproxyIP},
		{variant: DirectAfter, cgroup: plain, host: backendIP, udp: true},
	}
	rounds, err := e.datapathRounds(eps, cfg.rounds, cfg.duration)
	if err != nil {
		return nil, err
	}
	r.Direct = directFigures(rounds)
	r.Ratios = ratios(rounds, []Variant{Sockmesh, NftMap, IptLinear, HAProxy, GoProxy, DirectAfter})

	log.Info("scale: connect latency against VIPs loaded")
	if r.Scale, err = e.measureScale(daemons, plain, cfg.rounds, cfg.scaleCount, cfg.duration); err != nil {
		return nil, err
	}

	log.Info("per-hook cost")
	if r.Hooks, err = e.measureHooks([]*daemon{small, daemons[len(daemons)-1]}, cfg.hookCount, 2*cfg.duration); err != nil {
		return nil, err
	}

	log.Info("control plane: rename to connect and to DNS")
	for _, dm := range []*daemon{small, daemonNear(daemons, 10000)} {
		res, err := e.controlPlane(dm, cfg.ctlFiles)
		if err != nil {
			return nil, err
		}
		c := controlFigures{Services: dm.services, Files: len(res.Connect)}
		c.ConnectP50, c.ConnectP99, c.ConnectWorst = durPercentiles(res.Connect)
		c.DNSP50, c.DNSP99, c.DNSWorst = durPercentiles(res.DNS)
		r.Control = append(r.Control, c)
		log.Info("control plane", "services", dm.services, "connect-p50", c.ConnectP50, "connect-p99", c.ConnectP99, "dns-p99", c.DNSP99)
	}
	const updFiles = 50
	rate, lag, err := e.sustainedUpdates(small, updFiles, 2*cfg.duration)
	if err != nil {
		return nil, err
	}
	r.Updates = updateFigures{Services: small.services, Files: updFiles, Rate: rate, Lag: lag}

	log.Info("DNS: stub against unbound")
	if r.DNS, err = e.compareDNS(daemonNear(daemons, 1000), cfg.dnsRounds, cfg.dnsTime); err != nil {
		return nil, err
	}
	r.Took = time.Since(start)
	return r, nil
}

// daemonNear picks the daemon whose size is closest to n.
func daemonNear(ds []*daemon, n int) *daemon {
	best := ds[0]
	for _, d := range ds {
		if abs(d.services-n) < abs(best.services-n) {
			best = d
		}
	}
	return best
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// writeReport prints the report and writes <date>.md and <date>.png.
func writeReport(cfg config, r *report) error {
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return fmt.Errorf("create report dir: %w", err)
	}
	base := r.Date.Format("2006-01-02")
	png := base + ".png"
	md := r.markdown(png)
	if err := os.WriteFile(filepath.Join(cfg.out, base+".md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Print(md)
	title := fmt.Sprintf("sockmesh vs direct, kernel DNAT and proxies (%s)", base)
	if err := WriteChart(filepath.Join(cfg.out, png), title, r.Scale.Points, r.Ratios); err != nil {
		return err
	}
	fmt.Printf("\nwritten: %s, %s\n", filepath.Join(cfg.out, base+".md"), filepath.Join(cfg.out, png))
	return nil
}

func hostInfo() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("Linux %s, %d × %s", unix.ByteSliceToString(u.Release[:]), runtime.NumCPU(), cpu)
}

func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
