package dnsstub

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startStub serves the test zone on 127.0.0.1 (port picked) with cfg.
func startStub(t testing.TB, cfg Config) *Server {
	t.Helper()
	h := newTestHandler(t, cfg)
	s, err := Listen(h, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// upstream is a real DNS server on another loopback address standing in
// for the host's resolver. It counts the questions it gets, by name.
type upstream struct {
	addr  netip.AddrPort
	mu    sync.Mutex
	asked map[string]int // "name/udp" or "name/tcp"
}

// bigTXT is an answer too big for UDP without EDNS and for 1232 bytes.
const bigTXTRecords = 40

func startUpstream(t testing.TB, ip string, rcode int) *upstream {
	t.Helper()
	u := &upstream{asked: map[string]int{}}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		_, udp := w.RemoteAddr().(*net.UDPAddr)
		u.mu.Lock()
		u.asked[fmt.Sprintf("%s/%s", strings.ToLower(q.Name), w.RemoteAddr().Network())]++
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		m.RecursionAvailable = true
		switch {
		case rcode != dns.RcodeSuccess:
		case q.Name == "example.test." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(q.Name, dns.TypeA, 60), A: net.IPv4(192, 0, 2, 1)})
		case q.Name == "aa.example.test." && q.Qtype == dns.TypeA:
			// An upstream authoritative for its zone, as AD's DNS or
			// dnsmasq for its hosts are.
			m.Authoritative = true
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(q.Name, dns.TypeA, 60), A: net.IPv4(192, 0, 2, 2)})
		case q.Name == "big.example.test." && q.Qtype == dns.TypeTXT:
			for i := range bigTXTRecords {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT, 60), Txt: []string{fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 96))}})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
		}
		if udp {
			m.Truncate(udpLimit(r))
		}
		w.WriteMsg(m)
	})
	pc, l, err := listenBoth(netip.MustParseAddrPort(ip + ":0"))
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: mux}, {Listener: l, Handler: mux}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

func (u *upstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.asked[key]
}

func (u *upstream) total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, c := range u.asked {
		n += c
	}
	return n
}

// exchange asks the stub over net ("udp" or "tcp") from local (optional).
func exchange(t testing.TB, stub netip.AddrPort, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	resp, _, err := c.Exchange(m, stub.String())
	if err != nil {
		t.Fatalf("ask %s over %s: %v", m.Question[0].Name, network, err)
	}
	return resp
}

// needTool finds a command the test needs; make test installs them all,
// so under CI a missing one is a failure, not a skip.
func needTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed: make deps installs it", name)
		}
		t.Skipf("%s not installed (make deps installs it)", name)
	}
	return path
}

func dig(t testing.TB, stub netip.AddrPort, args ...string) string {
	t.Helper()
	cmd := exec.Command(needTool(t, "dig"), append([]string{"@" + stub.Addr().String(), "-p", fmt.Sprint(stub.Port()), "+time=3", "+tries=1"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestServerDig asks a real stub with dig, over UDP and TCP.
func TestServerDig(t *testing.T) {
	stub := startStub(t, Config{}).Addrs()[0]
	for _, transport := range []string{"+notcp", "+tcp"} {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"+short", "web.mesh.internal", "A"}, "198.18.0.10\n"},
			{[]string{"+short", "API.mesh.internal", "AAAA"}, "fd6d:6573:6800::80\n"},
			{[]string{"+short", "_https._tcp.api.mesh.internal", "SRV"}, "0 0 443 api.mesh.internal.\n"},
			{[]string{"+short", "-x", "198.18.0.80"}, "api.mesh.internal.\n"},
			{[]string{"+short", "-x", "fd6d:6573:6800::53"}, "resolver.mesh.internal.\n"},
		} {
			if got := dig(t, stub, append([]string{transport}, tc.args...)...); got != tc.want {
				t.Errorf("dig %s %s = %q, want %q", transport, strings.Join(tc.args, " "), got, tc.want)
			}
		}
		out := dig(t, stub, transport, "nope.mesh.internal", "A")
		if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "flags: qr aa rd;") ||
			!strings.Contains(out, "mesh.internal.\t\t5\tIN\tSOA\tmesh.internal. hostmaster.mesh.internal.") {
			t.Errorf("dig %s nope.mesh.internal: want NXDOMAIN, AA and the SOA with TTL 5:\n%s", transport, out)
		}
		out = dig(t, stub, transport, "web.mesh.internal", "AAAA")
		if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0, AUTHORITY: 1") {
			t.Errorf("dig %s AAAA web: want NODATA with the SOA:\n%s", transport, out)
		}
	}
}

// goResolver is Go's own resolver, sent to the stub over network.
func goResolver(stub netip.AddrPort, network string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, asked, _ string) (net.Conn, error) {
		if network == "tcp" {
			asked = network // otherwise keep Go's choice: TCP when UDP was truncated
		}
		var d net.Dialer
		return d.DialContext(ctx, asked, stub.String())
	}}
}

// TestServerGoResolver asks a real stub with Go's resolver over UDP and TCP.
func TestServerGoResolver(t *testing.T) {
	stub := startStub(t, Config{}).Addrs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, network := range []string{"udp", "tcp"} {
		r := goResolver(stub, network)
		got, err := r.LookupHost(ctx, "api.mesh.internal")
		slices.Sort(got)
		if err != nil || !slices.Equal(got, []string{"198.18.0.80", "fd6d:6573:6800::80"}) {
			t.Errorf("%s: LookupHost api = %v, %v", network, got, err)
		}
		_, srvs, err := r.LookupSRV(ctx, "http", "tcp", "web.mesh.internal")
		if err != nil || len(srvs) != 1 || srvs[0].Port != 80 || srvs[0].Target != "web.mesh.internal." {
			t.Errorf("%s: LookupSRV http web = %v, %v", network, srvs, err)
		}
		names, err := r.LookupAddr(ctx, "198.18.0.10")
		if err != nil || !slices.Equal(names, []string{"web.mesh.internal."}) {
			t.Errorf("%s: LookupAddr = %v, %v", network, names, err)
		}
		_, err = r.LookupHost(ctx, "gone.mesh.internal")
		var dnsErr *net.DNSError
		if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("%s: LookupHost gone = %v, want not found", network, err)
		}
	}
}

// TestForward checks the questions outside our zones: answered by the
// upstream over UDP, big answers fetched over TCP and handed on truncated
// to a UDP client that then retries over TCP, and our own zones never sent
// upstream.
func TestForward(t *testing.T) {
	up := startUpstream(t, "127.0.0.2", dns.RcodeSuccess)
	stub := startStub(t, Config{Upstreams: []netip.AddrPort{up.addr}}).Addrs()[0]

	resp := exchange(t, stub, "udp", query("example.test.", dns.TypeA))
	if got := rrStrings(resp.Answer); !slices.Equal(got, []string{"example.test. 60 IN A 192.0.2.1"}) || resp.Authoritative || !resp.RecursionAvailable {
		t.Errorf("forwarded answer %q AA %v RA %v", got, resp.Authoritative, resp.RecursionAvailable)
	}
	if up.count("example.test./udp") != 1 {
		t.Errorf("upstream asked %v", up.asked)
	}
	// An upstream's authoritative answer is passed on without AA, and never
	// cached: each question goes upstream.
	for range 2 {
		resp = exchange(t, stub, "udp", query("aa.example.test.", dns.TypeA))
		if len(resp.Answer) != 1 || resp.Authoritative {
			t.Errorf("forwarded authoritative answer: %v", resp)
		}
	}
	if up.count("aa.example.test./udp") != 2 {
		t.Errorf("upstream asked %v: want aa.example.test. twice", up.asked)
	}
	resp = exchange(t, stub, "udp", query("missing.example.test.", dns.TypeA))
	if resp.Rcode != dns.RcodeNameError {
		t.Errorf("upstream NXDOMAIN came back as %s", rcodeName(resp.Rcode))
	}

	// 40 TXT records: truncated at 1232 bytes from upstream, so the stub
	// asks again over TCP; the client without EDNS gets 512 bytes and TC.
	resp = exchange(t, stub, "udp", query("big.example.test.", dns.TypeTXT))
	if !resp.Truncated || len(resp.Answer) >= bigTXTRecords {
		t.Errorf("UDP client got %d records, TC %v: want truncated", len(resp.Answer), resp.Truncated)
	}
	if up.count("big.example.test./udp") != 1 || up.count("big.example.test./tcp") != 1 {
		t.Errorf("upstream asked %v: want the big name once over UDP then TCP", up.asked)
	}
	resp = exchange(t, stub, "tcp", query("big.example.test.", dns.TypeTXT))
	if resp.Truncated || len(resp.Answer) != bigTXTRecords {
		t.Errorf("TCP client got %d records, TC %v", len(resp.Answer), resp.Truncated)
	}
	out := dig(t, stub, "+noedns", "big.example.test", "TXT")
	if !strings.Contains(out, "Truncated, retrying in TCP mode") || !strings.Contains(out, fmt.Sprintf("ANSWER: %d,", bigTXTRecords)) {
		t.Errorf("dig without EDNS: want truncation and the whole answer over TCP:\n%s", out)
	}
	txts, err := goResolver(stub, "udp").LookupTXT(context.Background(), "big.example.test")
	if err != nil || len(txts) != bigTXTRecords {
		t.Errorf("Go resolver over UDP (retrying over TCP): %d records, %v", len(txts), err)
	}

	// Our zones, in any case, never go upstream, even when not found.
	before := up.total()
	for _, name := range []string{"web.mesh.internal.", "NOPE.mesh.internal.", "mesh.internal.", "1.2.19.198.in-addr.arpa.", reverse("fd6d:6573:6800::1234")} {
		exchange(t, stub, "udp", query(name, dns.TypeA))
		exchange(t, stub, "udp", query(name, dns.TypePTR))
	}
	if after := up.total(); after != before {
		t.Errorf("questions about our zones reached the upstream: %v", up.asked)
	}
	// The reverse zone of an address outside the VIP ranges is not ours.
	exchange(t, stub, "udp", query("1.0.0.127.in-addr.arpa.", dns.TypePTR))
	if up.count("1.0.0.127.in-addr.arpa./udp") != 1 {
		t.Errorf("reverse name outside the VIP ranges not forwarded: %v", up.asked)
	}
}

// TestFailover puts a dead upstream and a failing one before a good one:
// the question is answered, and the next starts at the good one.
func TestFailover(t *testing.T) {
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}) // never reads
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	failing := startUpstream(t, "127.0.0.4", dns.RcodeServerFailure)
	good := startUpstream(t, "127.0.0.5", dns.RcodeSuccess)
	const timeout = 300 * time.Millisecond
	s := startStub(t, Config{
		Upstreams:       []netip.AddrPort{dead.LocalAddr().(*net.UDPAddr).AddrPort(), failing.addr, good.addr},
		UpstreamTimeout: timeout,
	})
	stub := s.Addrs()[0]

	start := time.Now()
	resp := exchange(t, stub, "udp", query("example.test.", dns.TypeA))
	first := time.Since(start)
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("answer %v", resp)
	}
	if first < timeout || first > 3*timeout {
		t.Errorf("first answer took %v: want one timeout (%v) on the dead upstream", first, timeout)
	}
	if failing.count("example.test./udp") != 1 {
		t.Errorf("failing upstream asked %v", failing.asked)
	}
	start = time.Now()
	exchange(t, stub, "udp", query("example.test.", dns.TypeA))
	if d := time.Since(start); d > timeout/2 {
		t.Errorf("second answer took %v: the good upstream should be asked first now", d)
	}
	if failing.count("example.test./udp") != 1 || good.count("example.test./udp") != 2 {
		t.Errorf("after failover: failing %v, good %v", failing.asked, good.asked)
	}

	// All upstreams failing: SERVFAIL, counted.
	s2 := startStub(t, Config{Upstreams: []netip.AddrPort{failing.addr}, UpstreamTimeout: timeout})
	if resp := exchange(t, s2.Addrs()[0], "udp", query("example.test.", dns.TypeA)); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("all upstreams failing: %s, want SERVFAIL", rcodeName(resp.Rcode))
	}
	if st := s2.Handler().Stats(); st.UpstreamFailures != 1 || st.Rcodes["SERVFAIL"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestResolvConfUpstreams reads upstreams from a resolv.conf, as the
// daemon does at start, and forwards to them.
func TestResolvConfUpstreams(t *testing.T) {
	up := startUpstream(t, "127.0.0.2", dns.RcodeSuccess)
	path := t.TempDir() + "/resolv.conf"
	os.WriteFile(path, []byte("# comment\nsearch example.org\nnameserver 127.0.0.2\nnameserver ::1\noptions edns0\n"), 0o644)
	ups, err := SystemUpstreams(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:53"), netip.MustParseAddrPort("[::1]:53")}
	if !slices.Equal(ups, want) {
		t.Fatalf("upstreams %v, want %v", ups, want)
	}
	// Our test upstream is not on port 53: point at its port, as a user
	// would with --dns-upstream.
	stub := startStub(t, Config{Upstreams: []netip.AddrPort{up.addr}}).Addrs()[0]
	if resp := exchange(t, stub, "tcp", query("example.test.", dns.TypeA)); len(resp.Answer) != 1 {
		t.Errorf("answer %v", resp)
	}
	if got := DetectStyle(path); got != StyleResolvConf {
		t.Errorf("style of a plain resolv.conf: %s", got)
	}
	resolved := t.TempDir() + "/resolved.conf"
	os.WriteFile(resolved, []byte("nameserver 127.0.0.53\noptions edns0 trust-ad\n"), 0o644)
	if got := DetectStyle(resolved); got != StyleSystemdResolved {
		t.Errorf("style of systemd-resolved's resolv.conf: %s", got)
	}
	if got := DetectStyle(t.TempDir() + "/missing"); got != StyleResolvConf {
		t.Errorf("style without resolv.conf: %s", got)
	}
	if _, err := SystemUpstreams(t.TempDir() + "/missing"); err == nil {
		t.Error("a missing resolv.conf gave no error")
	}
}

func TestWithoutSelf(t *testing.T) {
	ap := netip.MustParseAddrPort
	ups := []netip.AddrPort{ap("127.0.0.153:53"), ap("127.0.0.1:53"), ap("192.0.2.1:53"), ap("127.0.0.153:5353")}
	if got := WithoutSelf(ups, []netip.AddrPort{ap("127.0.0.153:53")}); !slices.Equal(got, ups[1:]) {
		t.Errorf("own address kept: %v", got)
	}
	if got := WithoutSelf(ups, []netip.AddrPort{ap("0.0.0.0:53")}); !slices.Equal(got, []netip.AddrPort{ups[2], ups[3]}) {
		t.Errorf("wildcard listener: %v", got)
	}
}

func TestSnippet(t *testing.T) {
	stub := netip.MustParseAddrPort("127.0.0.153:53")
	got, err := Snippet(StyleSystemdResolved, stub, "mesh.internal.", nil)
	if err != nil || !strings.Contains(got, "[Resolve]\nDNS=127.0.0.153\nDomains=~mesh.internal\n") {
		t.Errorf("systemd-resolved snippet:\n%s%v", got, err)
	}
	got, _ = Snippet(StyleSystemdResolved, netip.MustParseAddrPort("127.0.0.153:5353"), "Svc.Internal", nil)
	if !strings.Contains(got, "DNS=127.0.0.153:5353\nDomains=~svc.internal\n") {
		t.Errorf("systemd-resolved snippet on another port:\n%s", got)
	}
	got, err = Snippet(StyleResolvConf, stub, "mesh.internal", []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")})
	if err != nil || !strings.HasSuffix(got, "--dns-upstream 192.0.2.53:53\nnameserver 127.0.0.153\noptions edns0\n") {
		t.Errorf("resolv.conf snippet:\n%s%v", got, err)
	}
	for _, bad := range []struct {
		style string
		addr  string
		want  string
	}{
		{StyleResolvConf, "127.0.0.153:5353", "resolv.conf can only name servers on port 53"},
		{StyleResolvConf, "0.0.0.0:53", "wildcard"},
		{"hosts", "127.0.0.153:53", `unknown style "hosts"`},
	} {
		if _, err := Snippet(bad.style, netip.MustParseAddrPort(bad.addr), "mesh.internal", nil); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s %s: error %v, want %q", bad.style, bad.addr, err, bad.want)
		}
	}
}

// TestAllowedClients serves only 127.0.0.1: 127.0.0.2 is refused over UDP
// and its TCP connections are closed unanswered.
func TestAllowedClients(t *testing.T) {
	stub := startStub(t, Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}).Addrs()[0]
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	resp, _, err := c.Exchange(query("web.mesh.internal.", dns.TypeA), stub.String())
	if err != nil || resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 {
		t.Errorf("UDP from 127.0.0.2: %v, %v; want REFUSED", resp, err)
	}
	c = &dns.Client{Net: "tcp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	if resp, _, err := c.Exchange(query("web.mesh.internal.", dns.TypeA), stub.String()); err == nil {
		t.Errorf("TCP from 127.0.0.2 answered: %v", resp)
	}
	if resp := exchange(t, stub, "udp", query("web.mesh.internal.", dns.TypeA)); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("allowed client: %v", resp)
	}
}

// TestBadInput throws garbage, oversized queries, a flood of forwards to a
// dead upstream, and idle TCP connections at a stub, and checks another
// client is answered promptly throughout.
func TestBadInput(t *testing.T) {
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	s := startStub(t, Config{
		Upstreams:       []netip.AddrPort{dead.LocalAddr().(*net.UDPAddr).AddrPort()},
		UpstreamTimeout: time.Second,
		MaxForwards:     16,
	})
	stub := s.Addrs()[0]
	probes := 0
	// probe is a client like a stub resolver: it retries a lost datagram
	// (a flood can overflow the socket buffer), here after 200 ms.
	probe := func(what string) {
		t.Helper()
		c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
		start := time.Now()
		probes++
		// A name never asked before: the full path, not the cache.
		name := fmt.Sprintf("probe-%d.mesh.internal.", probes)
		for try := 1; ; try++ {
			resp, _, err := c.Exchange(query(name, dns.TypeA), stub.String())
			if err == nil {
				if resp.Rcode != dns.RcodeNameError || len(resp.Ns) != 1 {
					t.Fatalf("%s: probe answered %v", what, resp)
				}
				break
			}
			if try == 5 {
				t.Fatalf("%s: probe unanswered after %d tries: %v", what, try, err)
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: probe took %v", what, d)
		}
	}

	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(stub))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Garbage: random bytes of every small length, and datagrams longer
	// than any query.
	buf := make([]byte, 9000)
	for i := range 2000 {
		rand.Read(buf)
		n := i % 600
		if i%100 == 0 {
			n = 5000 + i
		}
		conn.Write(buf[:n])
	}
	// A header that parses with a body that does not: FORMERR.
	bad := []byte{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 'b', 'r', 'o'}
	// (On a socket of its own: answers to the garbage fill conn's buffer.)
	conn2, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(stub))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	conn2.Write(bad)
	conn2.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := conn2.Read(buf)
	if err != nil {
		t.Fatalf("no answer to a cut-off question: %v", err)
	}
	if m := new(dns.Msg); m.Unpack(buf[:n]) != nil || m.Id != 0x1234 || m.Rcode != dns.RcodeFormatError {
		t.Errorf("answer to a cut-off question: %x, want FORMERR", buf[:n])
	}
	probe("after garbage")

	// An oversized query over TCP (60 KB of additional records).
	big := query("web.mesh.internal.", dns.TypeA)
	for range 600 {
		big.Extra = append(big.Extra, &dns.TXT{Hdr: hdr("x.", dns.TypeTXT, 0), Txt: []string{strings.Repeat("y", 90)}})
	}
	if resp := exchange(t, stub, "tcp", big); resp.Rcode != dns.RcodeFormatError {
		t.Errorf("oversized query: %s, want FORMERR", rcodeName(resp.Rcode))
	}

	// A flood of questions for the dead upstream fills the forward slots;
	// the rest are dropped and in-zone names are still answered at once.
	flood := query("flood.example.test.", dns.TypeA)
	wire, _ := flood.Pack()
	for range 5000 {
		conn.Write(wire)
	}
	probe("during a forward flood")
	if st := s.Handler().Stats(); st.Dropped == 0 {
		t.Errorf("flood beyond MaxForwards: nothing dropped (%+v)", st)
	}

	// Idle TCP connections: one client gets at most maxTCPPerClient; a
	// second client is still served over TCP.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range maxTCPPerClient + 8 {
		c, err := net.Dial("tcp", stub.String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, c := range idle {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	if closed.Load() != 8 {
		t.Errorf("%d of %d idle connections from one client closed, want 8", closed.Load(), len(idle))
	}
	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	if resp, _, err := c.Exchange(query("web.mesh.internal.", dns.TypeA), stub.String()); err != nil || len(resp.Answer) != 1 {
		t.Errorf("second TCP client while the first hogs its limit: %v, %v", resp, err)
	}
	probe("at the end")
}

// TestSetUpstreams: upstreams swapped while serving (the daemon's SIGHUP)
// take the next question; none means REFUSED.
func TestSetUpstreams(t *testing.T) {
	first := startUpstream(t, "127.0.0.2", dns.RcodeSuccess)
	second := startUpstream(t, "127.0.0.3", dns.RcodeSuccess)
	s := startStub(t, Config{Upstreams: []netip.AddrPort{first.addr}})
	stub := s.Addrs()[0]
	exchange(t, stub, "udp", query("example.test.", dns.TypeA))
	s.Handler().SetUpstreams([]netip.AddrPort{second.addr})
	resp := exchange(t, stub, "udp", query("example.test.", dns.TypeA))
	if len(resp.Answer) != 1 || first.count("example.test./udp") != 1 || second.count("example.test./udp") != 1 {
		t.Fatalf("after the swap: %v; first asked %v, second %v", resp.Answer, first.asked, second.asked)
	}
	s.Handler().SetUpstreams(nil)
	if resp := exchange(t, stub, "udp", query("example.test.", dns.TypeA)); resp.Rcode != dns.RcodeRefused || resp.RecursionAvailable {
		t.Fatalf("without upstreams: %s RA %v, want REFUSED without RA", rcodeName(resp.Rcode), resp.RecursionAvailable)
	}
}
