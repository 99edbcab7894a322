package dnsstub

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// recorder is a dns.ResponseWriter that keeps what the handler wrote.
type recorder struct {
	remote net.Addr
	msg    *dns.Msg
	wire   []byte
	writes int
}

func newRecorder(client string, udp bool) *recorder {
	ap := netip.MustParseAddrPort(client)
	if udp {
		return &recorder{remote: net.UDPAddrFromAddrPort(ap)}
	}
	return &recorder{remote: net.TCPAddrFromAddrPort(ap)}
}

func (r *recorder) LocalAddr() net.Addr {
	if _, udp := r.remote.(*net.UDPAddr); udp {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 153), Port: 53}
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 153), Port: 53}
}
func (r *recorder) RemoteAddr() net.Addr { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error {
	r.msg, r.writes = m, r.writes+1
	wire, err := m.Pack()
	r.wire = wire
	return err
}

func (r *recorder) Write(b []byte) (int, error) {
	r.msg, r.wire, r.writes = new(dns.Msg), slices.Clone(b), r.writes+1
	return len(b), r.msg.Unpack(b)
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}
func (r *recorder) Network() string     { return r.LocalAddr().Network() }

// testServices is the zone most tests answer from.
var testServices = []Service{
	{Name: "web", VIPs: addrs("198.18.0.10"), Ports: []Port{{Name: "http", Number: 80, Proto: "tcp"}}},
	{Name: "api", VIPs: addrs("198.18.0.80", "fd6d:6573:6800::80"), Ports: []Port{
		{Name: "http", Number: 80, Proto: "tcp"},
		{Name: "https", Number: 443, Proto: "tcp"},
		{Number: 9000, Proto: "udp"},
	}},
	{Name: "resolver", VIPs: addrs("fd6d:6573:6800::53"), Ports: []Port{
		{Name: "domain", Number: 53, Proto: "udp"},
		{Name: "domain", Number: 53, Proto: "tcp"},
	}},
}

var testRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("fd6d:6573:6800::/64")}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func newTestHandler(t testing.TB, cfg Config) *Handler {
	t.Helper()
	cfg.ReverseRanges = testRanges
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.Update(testServices)
	return h
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// rrStrings renders records one per string, tabs as spaces.
func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if _, isOPT := rr.(*dns.OPT); isOPT {
			continue
		}
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

const soaWeb = "mesh.internal. 5 IN SOA mesh.internal. hostmaster.mesh.internal. "

func TestHandler(t *testing.T) {
	h := newTestHandler(t, Config{})
	tests := []struct {
		name   string
		msg    *dns.Msg
		client string // default 127.0.0.1:5353
		tcp    bool
		rcode  int
		answer []string
		ns     []string // prefixes of the authority records
		extra  []string
		aa     bool
		silent bool // no answer at all
	}{
		{name: "A", msg: query("web.mesh.internal.", dns.TypeA), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"web.mesh.internal. 300 IN A 198.18.0.10"}},
		{name: "A over TCP", msg: query("web.mesh.internal.", dns.TypeA), tcp: true, rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"web.mesh.internal. 300 IN A 198.18.0.10"}},
		{name: "case-insensitive, answered in the case asked", msg: query("WeB.MESH.internal.", dns.TypeA), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"WeB.MESH.internal. 300 IN A 198.18.0.10"}},
		{name: "AAAA", msg: query("api.mesh.internal.", dns.TypeAAAA), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"api.mesh.internal. 300 IN AAAA fd6d:6573:6800::80"}},
		{name: "NODATA for a type the name lacks", msg: query("web.mesh.internal.", dns.TypeAAAA), rcode: dns.RcodeSuccess, aa: true,
			ns: []string{soaWeb}},
		{name: "NODATA for MX", msg: query("api.mesh.internal.", dns.TypeMX), rcode: dns.RcodeSuccess, aa: true,
			ns: []string{soaWeb}},
		{name: "ANY", msg: query("api.mesh.internal.", dns.TypeANY), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"api.mesh.internal. 300 IN A 198.18.0.80", "api.mesh.internal. 300 IN AAAA fd6d:6573:6800::80"}},
		{name: "class ANY is answered as IN", msg: withClass(query("web.mesh.internal.", dns.TypeA), dns.ClassANY), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"web.mesh.internal. 300 IN A 198.18.0.10"}},
		{name: "NXDOMAIN with SOA", msg: query("nope.mesh.internal.", dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaWeb}},
		{name: "NXDOMAIN below a service", msg: query("x.web.mesh.internal.", dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaWeb}},
		{name: "SRV with target addresses", msg: query("_https._tcp.api.mesh.internal.", dns.TypeSRV), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"_https._tcp.api.mesh.internal. 300 IN SRV 0 0 443 api.mesh.internal."},
			extra:  []string{"api.mesh.internal. 300 IN A 198.18.0.80", "api.mesh.internal. 300 IN AAAA fd6d:6573:6800::80"}},
		{name: "SRV per protocol", msg: query("_domain._udp.resolver.mesh.internal.", dns.TypeSRV), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"_domain._udp.resolver.mesh.internal. 300 IN SRV 0 0 53 resolver.mesh.internal."},
			extra:  []string{"resolver.mesh.internal. 300 IN AAAA fd6d:6573:6800::53"}},
		{name: "SRV name asked for A is NODATA", msg: query("_http._tcp.web.mesh.internal.", dns.TypeA), rcode: dns.RcodeSuccess, aa: true,
			ns: []string{soaWeb}},
		{name: "empty non-terminal is NODATA", msg: query("_tcp.api.mesh.internal.", dns.TypeSRV), rcode: dns.RcodeSuccess, aa: true,
			ns: []string{soaWeb}},
		{name: "unnamed port has no SRV", msg: query("_udp.api.mesh.internal.", dns.TypeSRV), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaWeb}},
		{name: "unknown port name", msg: query("_ftp._tcp.api.mesh.internal.", dns.TypeSRV), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaWeb}},
		{name: "apex SOA", msg: query("mesh.internal.", dns.TypeSOA), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{soaWeb}},
		{name: "apex NS is NODATA", msg: query("mesh.internal.", dns.TypeNS), rcode: dns.RcodeSuccess, aa: true,
			ns: []string{soaWeb}},
		{name: "PTR v4", msg: query("10.0.18.198.in-addr.arpa.", dns.TypePTR), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"10.0.18.198.in-addr.arpa. 300 IN PTR web.mesh.internal."}},
		{name: "PTR v6", msg: query(reverse("fd6d:6573:6800::80"), dns.TypePTR), rcode: dns.RcodeSuccess, aa: true,
			answer: []string{reverse("fd6d:6573:6800::80") + " 300 IN PTR api.mesh.internal."}},
		{name: "PTR in the second /16 of the v4 range", msg: query("1.2.19.198.in-addr.arpa.", dns.TypePTR), rcode: dns.RcodeNameError, aa: true,
			ns: []string{"19.198.in-addr.arpa. 5 IN SOA mesh.internal. hostmaster.mesh.internal. "}},
		{name: "PTR for an unused VIP is NXDOMAIN", msg: query("11.0.18.198.in-addr.arpa.", dns.TypePTR), rcode: dns.RcodeNameError, aa: true,
			ns: []string{"18.198.in-addr.arpa. 5 IN SOA "}},
		{name: "reverse ENT is NODATA", msg: query("0.18.198.in-addr.arpa.", dns.TypePTR), rcode: dns.RcodeSuccess, aa: true,
			ns: []string{"18.198.in-addr.arpa. 5 IN SOA "}},
		{name: "outside the zone without upstreams", msg: query("example.com.", dns.TypeA), rcode: dns.RcodeRefused},
		{name: "reverse outside the ranges without upstreams", msg: query("1.0.0.127.in-addr.arpa.", dns.TypePTR), rcode: dns.RcodeRefused},
		{name: "client not allowed", msg: query("web.mesh.internal.", dns.TypeA), client: "192.0.2.7:5353", rcode: dns.RcodeRefused},
		{name: "client not allowed over TCP", msg: query("web.mesh.internal.", dns.TypeA), client: "[2001:db8::7]:5353", tcp: true, rcode: dns.RcodeRefused},
		{name: "v4-mapped loopback client", msg: query("web.mesh.internal.", dns.TypeA), client: "[::ffff:127.0.0.1]:5353", rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"web.mesh.internal. 300 IN A 198.18.0.10"}},
		{name: "IPv6 loopback client", msg: query("web.mesh.internal.", dns.TypeA), client: "[::1]:5353", rcode: dns.RcodeSuccess, aa: true,
			answer: []string{"web.mesh.internal. 300 IN A 198.18.0.10"}},
		{name: "NOTIFY is not implemented", msg: withOpcode(query("mesh.internal.", dns.TypeSOA), dns.OpcodeNotify), rcode: dns.RcodeNotImplemented},
		{name: "UPDATE is not implemented", msg: withOpcode(query("mesh.internal.", dns.TypeSOA), dns.OpcodeUpdate), rcode: dns.RcodeNotImplemented},
		{name: "STATUS is not implemented", msg: withOpcode(query("mesh.internal.", dns.TypeSOA), dns.OpcodeStatus), rcode: dns.RcodeNotImplemented},
		{name: "no question", msg: &dns.Msg{}, rcode: dns.RcodeFormatError},
		{name: "two questions", msg: twoQuestions(), rcode: dns.RcodeFormatError},
		{name: "OPT as question type", msg: query("web.mesh.internal.", dns.TypeOPT), rcode: dns.RcodeFormatError},
		{name: "class NONE", msg: withClass(query("web.mesh.internal.", dns.TypeA), dns.ClassNONE), rcode: dns.RcodeFormatError},
		{name: "class CHAOS in zone", msg: withClass(query("web.mesh.internal.", dns.TypeA), dns.ClassCHAOS), rcode: dns.RcodeRefused},
		{name: "class CHAOS outside", msg: withClass(query("version.bind.", dns.TypeTXT), dns.ClassCHAOS), rcode: dns.RcodeRefused},
		{name: "zone transfer", msg: query("mesh.internal.", dns.TypeAXFR), tcp: true, rcode: dns.RcodeRefused},
		{name: "EDNS version 1", msg: withEDNS(query("web.mesh.internal.", dns.TypeA), 1, 1), rcode: dns.RcodeBadVers},
		{name: "EDNS version 1 from a client not allowed", msg: withEDNS(query("web.mesh.internal.", dns.TypeA), 1, 1), client: "192.0.2.7:53", rcode: dns.RcodeRefused},
		{name: "EDNS version 1 with NOTIFY", msg: withOpcode(withEDNS(query("web.mesh.internal.", dns.TypeA), 1, 1), dns.OpcodeNotify), rcode: dns.RcodeNotImplemented},
		{name: "two OPT records", msg: twoOPTs(), rcode: dns.RcodeFormatError},
		{name: "a response is never answered", msg: asResponse(query("web.mesh.internal.", dns.TypeA)), silent: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := tc.client
			if client == "" {
				client = "127.0.0.1:5353"
			}
			w := newRecorder(client, !tc.tcp)
			h.ServeDNS(w, tc.msg)
			if tc.silent {
				if w.writes != 0 {
					t.Fatalf("answered %v", w.msg)
				}
				return
			}
			if w.writes != 1 {
				t.Fatalf("%d answers, want 1", w.writes)
			}
			m := w.msg
			if _, err := m.Pack(); err != nil {
				t.Fatalf("answer does not pack: %v", err)
			}
			if m.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s\n%v", rcodeName(m.Rcode), rcodeName(tc.rcode), m)
			}
			if !m.Response || m.Id != tc.msg.Id {
				t.Errorf("not a response to the query: QR %v, ID %d want %d", m.Response, m.Id, tc.msg.Id)
			}
			if m.Authoritative != tc.aa {
				t.Errorf("AA %v, want %v", m.Authoritative, tc.aa)
			}
			if got := rrStrings(m.Answer); !slices.EqualFunc(got, tc.answer, matches) {
				t.Errorf("answer\n got %q\nwant %q", got, tc.answer)
			}
			if got := rrStrings(m.Extra); !slices.Equal(got, tc.extra) {
				t.Errorf("additional\n got %q\nwant %q", got, tc.extra)
			}
			if got := rrStrings(m.Ns); !slices.EqualFunc(got, tc.ns, matches) {
				t.Errorf("authority\n got %q\nwant %q", got, tc.ns)
			}
			if len(tc.msg.Question) == 1 && (len(m.Question) != 1 || m.Question[0] != tc.msg.Question[0]) {
				t.Errorf("question not echoed: %v", m.Question)
			}
		})
	}
}

// matches compares a record with a wanted one; a want ending in a space
// is a prefix (for SOA records, whose serial is the time).
func matches(got, want string) bool {
	if strings.HasSuffix(want, " ") {
		return strings.HasPrefix(got, want)
	}
	return got == want
}

func reverse(addr string) string {
	name, err := dns.ReverseAddr(addr)
	if err != nil {
		panic(err)
	}
	return name
}

func withClass(m *dns.Msg, class uint16) *dns.Msg { m.Question[0].Qclass = class; return m }
func withOpcode(m *dns.Msg, op int) *dns.Msg      { m.Opcode = op; return m }
func asResponse(m *dns.Msg) *dns.Msg              { m.Response = true; return m }

func withEDNS(m *dns.Msg, size uint16, version uint8) *dns.Msg {
	m.SetEdns0(size, true)
	m.IsEdns0().SetVersion(version)
	return m
}

func twoQuestions() *dns.Msg {
	m := query("web.mesh.internal.", dns.TypeA)
	m.Question = append(m.Question, dns.Question{Name: "api.mesh.internal.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	return m
}

func twoOPTs() *dns.Msg {
	m := query("web.mesh.internal.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}})
	return m
}

// TestEDNS checks the OPT record of answers: present exactly when asked,
// with our payload size, the DO bit echoed, and BADVERS carried in it.
func TestEDNS(t *testing.T) {
	h := newTestHandler(t, Config{})
	for _, tc := range []struct {
		name    string
		msg     *dns.Msg
		wantOPT bool
		do      bool
		rcode   int
	}{
		{"none asked, none given", query("web.mesh.internal.", dns.TypeA), false, false, dns.RcodeSuccess},
		{"EDNS with DO", withEDNS(query("web.mesh.internal.", dns.TypeA), 4096, 0), true, true, dns.RcodeSuccess},
		{"EDNS on NXDOMAIN", withEDNS(query("x.mesh.internal.", dns.TypeA), 4096, 0), true, true, dns.RcodeNameError},
		{"EDNS on REFUSED", withEDNS(query("example.com.", dns.TypeA), 4096, 0), true, true, dns.RcodeRefused},
		{"BADVERS", withEDNS(query("web.mesh.internal.", dns.TypeA), 4096, 3), true, false, dns.RcodeBadVers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRecorder("127.0.0.1:1", true)
			h.ServeDNS(w, tc.msg)
			// Round-trip through the wire, as a client sees it.
			wire, err := w.msg.Pack()
			if err != nil {
				t.Fatal(err)
			}
			m := new(dns.Msg)
			if err := m.Unpack(wire); err != nil {
				t.Fatal(err)
			}
			opt := m.IsEdns0()
			if (opt != nil) != tc.wantOPT {
				t.Fatalf("OPT %v, want %v", opt, tc.wantOPT)
			}
			if m.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", rcodeName(m.Rcode), rcodeName(tc.rcode))
			}
			if opt != nil {
				if opt.UDPSize() != ednsSize || opt.Do() != tc.do || opt.Version() != 0 {
					t.Errorf("OPT size %d DO %v version %d, want %d %v 0", opt.UDPSize(), opt.Do(), opt.Version(), ednsSize, tc.do)
				}
			}
		})
	}
}

// TestUpdate checks that a new service set replaces the old one whole.
func TestUpdate(t *testing.T) {
	h := newTestHandler(t, Config{})
	ask := func(name string) int {
		w := newRecorder("127.0.0.1:1", true)
		h.ServeDNS(w, query(name, dns.TypeA))
		return w.msg.Rcode
	}
	if ask("web.mesh.internal.") != dns.RcodeSuccess || ask("new.mesh.internal.") != dns.RcodeNameError {
		t.Fatal("unexpected start")
	}
	h.Update([]Service{{Name: "new", VIPs: addrs("198.18.0.99")}})
	if got := ask("web.mesh.internal."); got != dns.RcodeNameError {
		t.Errorf("removed service: %s, want NXDOMAIN", rcodeName(got))
	}
	if got := ask("new.mesh.internal."); got != dns.RcodeSuccess {
		t.Errorf("added service: %s, want NOERROR", rcodeName(got))
	}
}

// TestConfig checks zone names, TTLs and their validation.
func TestConfig(t *testing.T) {
	h := newTestHandler(t, Config{Zone: "Svc.Example.Internal", TTL: 3600e9, NegativeTTL: 30e9})
	h.Update(testServices)
	w := newRecorder("127.0.0.1:1", true)
	h.ServeDNS(w, query("web.svc.example.internal.", dns.TypeA))
	if got := rrStrings(w.msg.Answer); !slices.Equal(got, []string{"web.svc.example.internal. 3600 IN A 198.18.0.10"}) {
		t.Errorf("answer %q", got)
	}
	h.ServeDNS(w, query("web.mesh.internal.", dns.TypeA))
	if w.msg.Rcode != dns.RcodeRefused {
		t.Errorf("the default zone is still served: %v", w.msg)
	}
	h.ServeDNS(w, query("nope.svc.example.internal.", dns.TypeA))
	if soa, ok := w.msg.Ns[0].(*dns.SOA); !ok || soa.Hdr.Ttl != 30 || soa.Minttl != 30 {
		t.Errorf("negative answer authority %v, want SOA with TTL and minimum 30", w.msg.Ns)
	}
	for _, bad := range []string{".", "a..b", "bad zone.internal", `a\046b.internal`} {
		if _, err := NewHandler(Config{Zone: bad}); err == nil {
			t.Errorf("zone %q accepted", bad)
		}
	}
	if _, err := NewHandler(Config{TTL: -1}); err == nil {
		t.Error("negative TTL accepted")
	}
}

func TestReverseZones(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"198.18.0.0/15", []string{"18.198.in-addr.arpa.", "19.198.in-addr.arpa."}},
		{"10.0.0.0/8", []string{"10.in-addr.arpa."}},
		{"10.1.2.0/24", []string{"2.1.10.in-addr.arpa."}},
		{"10.1.2.0/23", []string{"2.1.10.in-addr.arpa.", "3.1.10.in-addr.arpa."}},
		{"10.1.255.0/23", []string{"254.1.10.in-addr.arpa.", "255.1.10.in-addr.arpa."}},
		{"10.1.254.0/22", []string{"252.1.10.in-addr.arpa.", "253.1.10.in-addr.arpa.", "254.1.10.in-addr.arpa.", "255.1.10.in-addr.arpa."}},
		{"fd6d:6573:6800::/64", []string{"0.0.0.0.0.0.8.6.3.7.5.6.d.6.d.f.ip6.arpa."}},
		{"fd6d:6573:68f0::/63", []string{"0.0.0.0.0.f.8.6.3.7.5.6.d.6.d.f.ip6.arpa.", "1.0.0.0.0.f.8.6.3.7.5.6.d.6.d.f.ip6.arpa."}},
		{"fd00::/126", []string{"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."}},
	} {
		got := reverseZones([]netip.Prefix{netip.MustParsePrefix(tc.prefix)})
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.prefix, got, tc.want)
		}
	}
}

// TestPublish publishes service sets faster than zones build: the handler
// ends up answering the last one.
func TestPublish(t *testing.T) {
	h := newTestHandler(t, Config{})
	for i := range 200 {
		h.Publish([]Service{{Name: fmt.Sprintf("svc-%d", i), VIPs: addrs("198.18.0.1")}})
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		w := newRecorder("127.0.0.1:1", true)
		h.ServeDNS(w, query("svc-199.mesh.internal.", dns.TypeA))
		if w.msg.Rcode == dns.RcodeSuccess {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the last service set published is not served after 2s")
		}
		time.Sleep(time.Millisecond)
	}
	w := newRecorder("127.0.0.1:1", true)
	h.ServeDNS(w, query("svc-198.mesh.internal.", dns.TypeA))
	if w.msg.Rcode != dns.RcodeNameError {
		t.Errorf("an older service set is served: %v", w.msg)
	}
}

// BenchmarkBuildZone builds the zone of 10,000 services, what each registry
// change costs the DNS stub.
func BenchmarkBuildZone(b *testing.B) {
	var svcs []Service
	for i := range 10000 {
		svcs = append(svcs, Service{
			Name:  fmt.Sprintf("svc-%d", i),
			VIPs:  addrs(fmt.Sprintf("198.18.%d.%d", i>>8, i&255), fmt.Sprintf("fd6d:6573:6800::%x", i)),
			Ports: []Port{{Name: "http", Number: 80, Proto: "tcp"}},
		})
	}
	z := zoneConfig{origin: "mesh.internal.", reverse: testRanges, ttl: 300, negativeTTL: 5}
	b.ReportAllocs()
	for b.Loop() {
		buildZone(z, svcs)
	}
}

func TestInZone(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"mesh.internal.", true},
		{"web.mesh.internal.", true},
		{"a.b.mesh.internal.", true},
		{"xmesh.internal.", false},
		{"internal.", false},
		{`a\.mesh.internal.`, false},   // one label "a.mesh" under internal.
		{`a\\.mesh.internal.`, true},   // label `a\` under the zone
		{`a\\\.mesh.internal.`, false}, // escaped backslash, then escaped dot
	} {
		if got := inZone(tc.name, "mesh.internal."); got != tc.want {
			t.Errorf("inZone(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
