package main

import (
	"bytes"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sockmesh/internal/cgroupv2"
	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) {
	runRole()
	testenv.Main(m, nil)
}

// TestSmoke runs the whole harness with tiny sizes, as make bench runs it
// with real ones: the real daemon, haproxy, iperf3, nftables, iptables,
// dnsperf and unbound, in a namespace of the harness's own. It checks that
// every variant and metric made it into the report and the chart, and that
// the harness left nothing behind.
func TestSmoke(t *testing.T) {
	testenv.RequirePrivileged(t)
	if err := haveTools(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	bin := func(name, pkg string) string {
		path := filepath.Join(dir, name)
		if out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
		return path
	}
	harness, daemon := bin("bench", "."), bin("sockmesh", "../cmd/sockmesh")
	out := filepath.Join(dir, "results")
	cmd := exec.Command(harness, "-smoke", "-out", out, "-sockmesh", daemon)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("harness: %v\n%s", err, stderr.String())
	}
	t.Logf("smoke run took %v", time.Since(start).Round(time.Millisecond))

	date := time.Now().Format("2006-01-02")
	md, err := os.ReadFile(filepath.Join(out, date+".md"))
	if err != nil {
		t.Fatal(err)
	}
	report := string(md)
	if !strings.Contains(stdout.String(), report) {
		t.Error("the printed report differs from the written one")
	}
	for _, want := range []string{
		"## Targets", "## Datapath", "## connect() latency against VIPs loaded", "## Per-hook cost", "## Control plane", "## DNS",
		"| TCP connect+close rate |", "| request/response rate |", "| bulk throughput |", "| UDP connected RR |", "| UDP unconnected RR |",
		"| connect4 | VIP hit, 10 services |", "| connect4 | miss (not a VIP), 100 services |", "| sendmsg4 |", "| recvmsg4 |",
		"| connect4 | empty program (the floor) |",
		"cold start, 100 service files", "rename() to connect, 10 services", "rename() to DNS answer, 100 services", "sustained updates",
		"| sockmesh stub |", "| unbound",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Every variant got a figure for the connect+close rate.
	for _, line := range strings.Split(report, "\n") {
		if strings.HasPrefix(line, "| TCP connect+close rate |") && strings.Contains(line, "–") {
			t.Errorf("a variant has no connect+close figure: %s", line)
		}
		if strings.HasPrefix(line, "| UDP connected RR |") && strings.Count(line, "–") != 2 {
			t.Errorf("UDP figures: want all but the two proxies: %s", line)
		}
	}

	f, err := os.Open(filepath.Join(out, date+".png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("chart: %v", err)
	}

	// Nothing left behind: the harness's cgroups and bpffs are gone.
	mnt, err := cgroupv2.Mountpoint()
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(mnt, "sockmesh-bench-*")); len(left) > 0 {
		t.Errorf("cgroups left behind: %v", left)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), "sockmesh-bench-") {
		t.Error("a bpffs of the harness is still mounted")
	}
}
