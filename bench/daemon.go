package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// benchService is the service every variant's client reaches: TCP echo
// (RR and CRR), iperf3 and UDP echo on one backend, on the same ports.
func benchService() string {
	return fmt.Sprintf(`name: bench
vip: %s
ports: [%d, %d, %d, "%d/udp"]
backends: [%s]
`, sockmeshIP, rrPort, crrPort, bulkPort, udpPort, backendIP)
}

// decoy is the i-th decoy service: loaded, never dialled. Its VIPs are
// fixed so the DNS comparison can serve the same records from unbound.
type decoy struct {
	name   string
	v4, v6 netip.Addr
}

func decoyAt(i int) decoy {
	// 198.18.1.0 up: 198.18.0.0/24 is the bench service's and the
	// control-plane test's.
	v4 := netip.AddrFrom4([4]byte{198, 18 + byte((i+256)>>16), byte((i + 256) >> 8), byte(i + 256)})
	v6 := netip.MustParseAddr("fd6d:6573:6800::1:0").As16()
	v6[12], v6[13], v6[14], v6[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	v6[11] = 1
	return decoy{name: fmt.Sprintf("d-%d", i), v4: v4, v6: netip.AddrFrom16(v6)}
}

func (d decoy) file() string {
	return fmt.Sprintf("name: %s\nvip: [%s, %q]\nports: [{port: 80, name: http}]\nbackends: [%s:9]\n", d.name, d.v4, d.v6, decoyIP)
}

// writeServices fills dir with the bench service and n-1 decoys.
func writeServices(ctx context.Context, dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create services dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(benchService()), 0o644); err != nil {
		return fmt.Errorf("write service: %w", err)
	}
	for i := range n - 1 {
		if i%1024 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		d := decoyAt(i)
		if err := os.WriteFile(filepath.Join(dir, d.name+".yaml"), []byte(d.file()), 0o644); err != nil {
			return fmt.Errorf("write service: %w", err)
		}
	}
	return nil
}

// daemon is one `sockmesh run` the harness started.
type daemon struct {
	services int    // service files it was started on
	cgroup   string // where its programs are attached
	dir      string // its services.d
	pinDir   string
	stateDir string
	dns      netip.AddrPort // its DNS stub
	started  time.Duration  // exec to ready: the cold start
	proc     *proc
}

// startDaemon writes n service files and starts the real daemon on them,
// attached to a fresh cgroup, and waits until it is ready. DNS listens on
// dnsIP:53. VIP routes are the harness's, so every daemon runs with
// --no-routes.
func (e *env) startDaemon(bin string, n int, dnsIP string) (*daemon, error) {
	name := fmt.Sprintf("mesh-%d", n)
	cg, err := e.cgroup(name)
	if err != nil {
		return nil, err
	}
	d := &daemon{
		services: n,
		cgroup:   cg,
		dir:      filepath.Join(e.tmp, name, "services.d"),
		pinDir:   filepath.Join(e.bpffs, name),
		stateDir: filepath.Join(e.tmp, name, "state"),
		dns:      netip.AddrPortFrom(netip.MustParseAddr(dnsIP), 53),
	}
	if err := writeServices(e.ctx, d.dir, n); err != nil {
		return nil, err
	}
	ready := filepath.Join(e.tmp, name, "ready")
	// Twice what n services of two VIPs each need, for the flips.
	entries := max(4*n+1024, 131072)
	args := []string{"run",
		"--services", d.dir, "--cgroup", cg, "--pin-dir", d.pinDir, "--state-dir", d.stateDir,
		"--ready-file", ready, "--no-routes", "--dns-listen", d.dns.String(), "--dns-upstream", "127.0.0.9",
		"--max-service-entries", fmt.Sprint(entries), "--max-backends", fmt.Sprint(entries / 2), "--max-counters", fmt.Sprint(entries)}
	cmd, err := e.command(e.ctx, "", bin, args...)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(e.tmp, name, "daemon.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create daemon log: %w", err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	start := time.Now()
	if d.proc, err = e.start(name, cmd); err != nil {
		return nil, err
	}
	e.cleanup = append(e.cleanup, func() error { return e.down(bin, d) })
	for {
		if _, err := os.Stat(ready); err == nil {
			d.started = time.Since(start)
			return d, nil
		}
		select {
		case <-d.proc.exited:
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("daemon on %d services exited before ready: %s", n, out)
		case <-e.ctx.Done():
			return nil, e.ctx.Err()
		case <-time.After(time.Millisecond):
		}
		if time.Since(start) > 5*time.Minute {
			return nil, fmt.Errorf("daemon on %d services not ready after 5m", n)
		}
	}
}

// down stops the daemon and removes its datapath (links, pins, state).
func (e *env) down(bin string, d *daemon) error {
	d.proc.stop()
	out, err := exec.Command(bin, "down", "--pin-dir", d.pinDir, "--state-dir", d.stateDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sockmesh down %s: %v: %s", d.pinDir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hookStats reads the kernel's run count and run time of each program the
// daemon attached, through its pinned links.
func (d *daemon) hookStats() (map[string]ebpf.ProgramStats, error) {
	links, err := filepath.Glob(filepath.Join(d.pinDir, "link_*"))
	if err != nil || len(links) == 0 {
		return nil, fmt.Errorf("find links in %s: %v", d.pinDir, err)
	}
	out := map[string]ebpf.ProgramStats{}
	for _, path := range links {
		st, err := pinnedLinkStats(path)
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(filepath.Base(path), "link_")] = st
	}
	return out, nil
}

func pinnedLinkStats(path string) (ebpf.ProgramStats, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return ebpf.ProgramStats{}, fmt.Errorf("load link %s: %w", path, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return ebpf.ProgramStats{}, fmt.Errorf("read link %s: %w", path, err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return ebpf.ProgramStats{}, fmt.Errorf("open program of %s: %w", path, err)
	}
	defer prog.Close()
	st, err := prog.Stats()
	if err != nil {
		return ebpf.ProgramStats{}, fmt.Errorf("read stats of %s: %w", path, err)
	}
	if st == nil {
		return ebpf.ProgramStats{}, errors.New("no stats")
	}
	return *st, nil
}
