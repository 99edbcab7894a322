package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sockmesh/internal/testenv"
)

// rssKiB reads a process's resident set size.
func rssKiB(b *testing.B, pid int) int {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkDaemon (run with -benchtime=1x) starts the real daemon on an
// empty services directory (the baseline) and on 10,000 service files, and
// reports the time from exec to ready and the resident memory once ready,
// each as a ratio to the baseline measured in the same run.
func BenchmarkDaemon(b *testing.B) {
	testenv.RequirePrivileged(b)
	type result struct {
		ready time.Duration
		rss   int
	}
	measure := func(n int) result {
		dir := filepath.Join(b.TempDir(), "services.d")
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for i := range n {
			body := fmt.Sprintf("name: svc-%d\nports: [80]\nbackends: [10.%d.%d.%d:8080]\n", i, i>>16&255, i>>8&255, i&255|1)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("svc-%05d.yaml", i)), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		cg := testenv.NewCgroup(b)
		pinDir := filepath.Join(testenv.BPFFS(b), "sockmesh")
		stateDir := b.TempDir()
		ready := filepath.Join(b.TempDir(), "ready")
		start := time.Now()
		d := startDaemon(b, ready, "--services", dir, "--cgroup", cg.Path, "--pin-dir", pinDir, "--state-dir", stateDir, "--dns-upstream", "127.0.0.9")
		r := result{ready: time.Since(start), rss: rssKiB(b, d.cmd.Process.Pid)}
		d.cmd.Process.Signal(syscall.SIGTERM)
		<-d.exited
		if out, err := execOut(binary, "down", "--pin-dir", pinDir, "--state-dir", stateDir); err != nil {
			b.Fatalf("down: %v: %s", err, out)
		}
		return r
	}
	for b.Loop() {
		base := measure(0)
		big := measure(10000)
		b.Logf("empty: ready in %v, RSS %d KiB", base.ready.Round(time.Millisecond), base.rss)
		b.Logf("10,000 services: ready in %v (%.1fx the empty start), RSS %d KiB (%.2fx; %.0f bytes per service)",
			big.ready.Round(time.Millisecond), float64(big.ready)/float64(base.ready),
			big.rss, float64(big.rss)/float64(base.rss), float64(big.rss-base.rss)*1024/10000)
		b.ReportMetric(float64(big.ready.Milliseconds()), "ms-ready-10k")
		b.ReportMetric(float64(big.rss)/1024, "MiB-rss-10k")
		b.ReportMetric(float64(big.rss)/float64(base.rss), "rss-ratio")
	}
}
