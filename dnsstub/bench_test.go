package dnsstub

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Sizes of the DNS throughput comparison.
const (
	benchServices = 1000
	benchRounds   = 3
	benchSeconds  = 5
)

// benchZone is the zone both servers answer: benchServices services with
// an IPv4 and an IPv6 VIP and a named port each.
func benchZone() []Service {
	var out []Service
	for i := range benchServices {
		out = append(out, Service{
			Name:  fmt.Sprintf("svc-%d", i),
			VIPs:  addrs(fmt.Sprintf("198.18.%d.%d", i>>8, i&255), fmt.Sprintf("fd6d:6573:6800::%x", i)),
			Ports: []Port{{Name: "http", Number: 80, Proto: "tcp"}},
		})
	}
	return out
}

// benchQueries is the query mix, one "name type" per line as dnsperf
// reads it: per service A, AAAA, SRV, and a name that does not exist.
func benchQueries(services []Service) string {
	var b strings.Builder
	for _, s := range services {
		fmt.Fprintf(&b, "%s.mesh.internal A\n", s.Name)
		fmt.Fprintf(&b, "%s.mesh.internal AAAA\n", s.Name)
		fmt.Fprintf(&b, "_http._tcp.%s.mesh.internal SRV\n", s.Name)
		fmt.Fprintf(&b, "no-%s.mesh.internal A\n", s.Name)
	}
	return b.String()
}

// unboundConfig serves the same records from local-data, as an operator
// would set unbound up to answer a private zone.
func unboundConfig(addr netip.AddrPort, services []Service) string {
	var b strings.Builder
	fmt.Fprintf(&b, `server:
	interface: %s
	port: %d
	do-daemonize: no
	chroot: ""
	username: ""
	pidfile: ""
	logfile: ""
	use-syslog: no
	verbosity: 0
	num-threads: 2
	so-reuseport: yes
	do-ip6: no
	access-control: 127.0.0.0/8 allow
	module-config: "iterator"
	local-zone: "mesh.internal." static
	local-data: "mesh.internal. 5 IN SOA mesh.internal. hostmaster.mesh.internal. 1 3600 600 86400 5"
`, addr.Addr(), addr.Port())
	for _, s := range services {
		name := s.Name + ".mesh.internal."
		fmt.Fprintf(&b, "\tlocal-data: \"%s 300 IN A %s\"\n", name, s.VIPs[0])
		fmt.Fprintf(&b, "\tlocal-data: \"%s 300 IN AAAA %s\"\n", name, s.VIPs[1])
		fmt.Fprintf(&b, "\tlocal-data: \"_http._tcp.%s 300 IN SRV 0 0 80 %s\"\n", name, name)
	}
	b.WriteString("remote-control:\n\tcontrol-enable: no\n")
	return b.String()
}

// freePort finds a port free for both UDP and TCP on ip.
func freePort(b *testing.B, ip string) netip.AddrPort {
	pc, l, err := listenBoth(netip.MustParseAddrPort(ip + ":0"))
	if err != nil {
		b.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	l.Close()
	return addr
}

// startUnbound runs unbound with conf and waits until it answers.
func startUnbound(b *testing.B, addr netip.AddrPort, conf string) {
	path := filepath.Join(b.TempDir(), "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(needTool(b, "unbound"), "-d", "-c", path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	m := query("svc-0.mesh.internal.", dns.TypeA)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	for start := time.Now(); ; {
		if resp, _, err := c.Exchange(m, addr.String()); err == nil && len(resp.Answer) == 1 {
			return
		}
		if time.Since(start) > 10*time.Second {
			b.Fatal("unbound not answering after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	qpsLine    = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	rcodesLine = regexp.MustCompile(`Response codes:\s+(.*)`)
)

// dnsperf runs one round against addr and returns queries per second and
// the response-code line (to check both servers answered alike).
func dnsperf(b *testing.B, addr netip.AddrPort, queries string) (float64, string) {
	out, err := exec.Command(needTool(b, "dnsperf"), "-s", addr.Addr().String(), "-p", fmt.Sprint(addr.Port()),
		"-d", queries, "-l", fmt.Sprint(benchSeconds), "-c", "8", "-T", "1", "-q", "256").CombinedOutput()
	if err != nil {
		b.Fatalf("dnsperf: %v\n%s", err, out)
	}
	m := qpsLine.FindSubmatch(out)
	rc := rcodesLine.FindSubmatch(out)
	if m == nil || rc == nil {
		b.Fatalf("dnsperf output not understood:\n%s", out)
	}
	qps, _ := strconv.ParseFloat(string(m[1]), 64)
	// Percentages only: counts differ with speed.
	return qps, regexp.MustCompile(`\d+ \(`).ReplaceAllString(string(rc[1]), "(")
}

// BenchmarkQPSAgainstUnbound (run with -benchtime=1x) measures in-zone
// queries per second with dnsperf on loopback, for the stub and for
// unbound answering the same names from local-data, in interleaved rounds
// of the same run. Target: the stub at least as fast as unbound.
func BenchmarkQPSAgainstUnbound(b *testing.B) {
	services := benchZone()
	queries := filepath.Join(b.TempDir(), "queries.txt")
	if err := os.WriteFile(queries, []byte(benchQueries(services)), 0o644); err != nil {
		b.Fatal(err)
	}
	h, err := NewHandler(Config{ReverseRanges: testRanges})
	if err != nil {
		b.Fatal(err)
	}
	h.Update(services)
	stub, err := Listen(h, []netip.AddrPort{freePort(b, "127.0.0.1")})
	if err != nil {
		b.Fatal(err)
	}
	defer stub.Close()
	unbound := freePort(b, "127.0.0.2")
	startUnbound(b, unbound, unboundConfig(unbound, services))

	results := map[string][]float64{}
	rcodes := map[string]string{}
	for range benchRounds {
		for _, v := range []struct {
			name string
			addr netip.AddrPort
		}{{"sockmesh", stub.Addrs()[0]}, {"unbound", unbound}} {
			qps, rc := dnsperf(b, v.addr, queries)
			results[v.name] = append(results[v.name], qps)
			rcodes[v.name] = rc
		}
	}
	if rcodes["sockmesh"] != rcodes["unbound"] {
		b.Errorf("the servers answered differently: sockmesh %s, unbound %s", rcodes["sockmesh"], rcodes["unbound"])
	}
	med := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	stubQPS, unboundQPS := med(results["sockmesh"]), med(results["unbound"])
	b.Logf("in-zone qps, dnsperf on loopback, %d services, %d rounds of %ds (mix %s)", benchServices, benchRounds, benchSeconds, rcodes["sockmesh"])
	b.Logf("  sockmesh stub  median %8.0f  rounds %.0f", stubQPS, results["sockmesh"])
	b.Logf("  unbound        median %8.0f  rounds %.0f", unboundQPS, results["unbound"])
	b.Logf("  ratio stub/unbound %.2f (target >= 1.00)", stubQPS/unboundQPS)
	b.ReportMetric(stubQPS, "stub-qps")
	b.ReportMetric(unboundQPS, "unbound-qps")
	b.ReportMetric(stubQPS/unboundQPS, "ratio")
}
