package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// The DNS comparison: dnsperf against the daemon's stub and against
// unbound serving the same names from local-data, in interleaved rounds.

// dnsQueries is the query mix, one "name type" per line as dnsperf reads
// it: per service A, AAAA, SRV, and a name that does not exist.
func dnsQueries(services int) string {
	var b strings.Builder
	for i := range services - 1 {
		d := decoyAt(i)
		fmt.Fprintf(&b, "%s.mesh.internal A\n", d.name)
		fmt.Fprintf(&b, "%s.mesh.internal AAAA\n", d.name)
		fmt.Fprintf(&b, "_http._tcp.%s.mesh.internal SRV\n", d.name)
		fmt.Fprintf(&b, "no-%s.mesh.internal A\n", d.name)
	}
	return b.String()
}

// unboundConfig serves the decoys' records from local-data, as an operator
// would set unbound up to answer a private zone.
func unboundConfig(addr netip.AddrPort, services int) string {
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
	for i := range services - 1 {
		d := decoyAt(i)
		name := d.name + ".mesh.internal."
		fmt.Fprintf(&b, "\tlocal-data: \"%s 300 IN A %s\"\n", name, d.v4)
		fmt.Fprintf(&b, "\tlocal-data: \"%s 300 IN AAAA %s\"\n", name, d.v6)
		fmt.Fprintf(&b, "\tlocal-data: \"_http._tcp.%s 300 IN SRV 0 0 80 %s\"\n", name, name)
	}
	b.WriteString("remote-control:\n\tcontrol-enable: no\n")
	return b.String()
}

// startUnbound runs unbound on addr for the decoys of a services-strong
// daemon and waits until it answers.
func (e *env) startUnbound(addr netip.AddrPort, services int) error {
	path := filepath.Join(e.tmp, "unbound.conf")
	if err := os.WriteFile(path, []byte(unboundConfig(addr, services)), 0o644); err != nil {
		return fmt.Errorf("write unbound config: %w", err)
	}
	cmd, err := e.command(e.ctx, "", "unbound", "-d", "-c", path)
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if _, err := e.start("unbound", cmd); err != nil {
		return err
	}
	q := new(dns.Msg)
	q.SetQuestion(decoyAt(0).name+".mesh.internal.", dns.TypeA)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	for start := time.Now(); ; {
		if r, _, err := c.Exchange(q, addr.String()); err == nil && len(r.Answer) == 1 {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			return fmt.Errorf("unbound not answering on %s after 10s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	qpsLine    = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	rcodesLine = regexp.MustCompile(`Response codes:\s+(.*)`)
	rcodeCount = regexp.MustCompile(`\d+ \(`)
)

// dnsperf runs one round against addr and returns queries per second and
// the response-code shares (to check both servers answered alike).
func dnsperf(addr netip.AddrPort, queries string, d time.Duration) (float64, string, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	out, err := exec.Command("dnsperf", "-s", addr.Addr().String(), "-p", fmt.Sprint(addr.Port()),
		"-d", queries, "-l", fmt.Sprint(secs), "-c", "8", "-T", "1", "-q", "256").CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("dnsperf: %v: %s", err, firstLines(string(out), 5))
	}
	m, rc := qpsLine.FindSubmatch(out), rcodesLine.FindSubmatch(out)
	if m == nil || rc == nil {
		return 0, "", fmt.Errorf("dnsperf output not understood: %s", firstLines(string(out), 20))
	}
	qps, _ := strconv.ParseFloat(string(m[1]), 64)
	// Percentages only: counts differ with speed.
	return qps, rcodeCount.ReplaceAllString(string(rc[1]), "("), nil
}

// sameMix reports whether two dnsperf response-code lines, such as
// "NOERROR (75.00%), NXDOMAIN (25.00%)", show the same codes in shares
// within half a point: a run stops mid-way through the query file.
func sameMix(a, b string) bool {
	share := regexp.MustCompile(`([A-Z]+) \(([0-9.]+)%\)`)
	parse := func(s string) map[string]float64 {
		out := map[string]float64{}
		for _, m := range share.FindAllStringSubmatch(s, -1) {
			out[m[1]], _ = strconv.ParseFloat(m[2], 64)
		}
		return out
	}
	x, y := parse(a), parse(b)
	if len(x) == 0 || len(x) != len(y) {
		return false
	}
	for code, p := range x {
		q, ok := y[code]
		if !ok || p-q > 0.5 || q-p > 0.5 {
			return false
		}
	}
	return true
}

// dnsResult is the DNS comparison's outcome.
type dnsResult struct {
	Services            int
	Stub, Unbound       []float64 // queries per second, per round
	StubMed, UnboundMed float64
	Mix                 string
}

// compareDNS runs dnsperf rounds against the daemon's stub and unbound.
func (e *env) compareDNS(dm *daemon, rounds int, d time.Duration) (dnsResult, error) {
	res := dnsResult{Services: dm.services}
	queries := filepath.Join(e.tmp, "queries.txt")
	if err := os.WriteFile(queries, []byte(dnsQueries(dm.services)), 0o644); err != nil {
		return res, fmt.Errorf("write queries: %w", err)
	}
	unbound := netip.MustParseAddrPort("127.0.0.160:53")
	if err := e.startUnbound(unbound, dm.services); err != nil {
		return res, err
	}
	var mixes [2]string
	for range rounds {
		for i, v := range []struct {
			addr netip.AddrPort
			dst  *[]float64
		}{{dm.dns, &res.Stub}, {unbound, &res.Unbound}} {
			qps, mix, err := dnsperf(v.addr, queries, d)
			if err != nil {
				return res, err
			}
			*v.dst = append(*v.dst, qps)
			mixes[i] = mix
		}
	}
	if !sameMix(mixes[0], mixes[1]) {
		return res, fmt.Errorf("the DNS servers answered differently: sockmesh %s, unbound %s", mixes[0], mixes[1])
	}
	res.Mix = mixes[0]
	res.StubMed, res.UnboundMed = median(res.Stub), median(res.Unbound)
	return res, nil
}
