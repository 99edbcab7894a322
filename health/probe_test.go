package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// listen opens a TCP listener on ip (a loopback address, port picked),
// skipping the test when the address family is missing.
func listen(t testing.TB, ip string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		if ip == "::1" {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func addrOf(t testing.TB, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// closedPort is a loopback TCP port nothing listens on (it did a moment
// ago).
func closedPort(t testing.TB, ip string) netip.AddrPort {
	t.Helper()
	ln := listen(t, ip)
	ap := addrOf(t, ln.Addr())
	ln.Close()
	return ap
}

// acceptInto accepts and closes connections until ln closes, counting
// them in n.
func acceptInto(ln net.Listener, n *atomic.Int64) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
}

func quick(k Kind) Check {
	c := Defaults(k)
	c.Interval, c.Timeout = 5*time.Second, 2*time.Second
	return c
}

func TestProbeTCP(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			ln := listen(t, ip)
			var accepted atomic.Int64
			acceptInto(ln, &accepted)
			if err := ProbeTCP(t.Context(), addrOf(t, ln.Addr()), quick(TCP)); err != nil {
				t.Fatalf("listening port: %v", err)
			}
			waitFor(t, "accept", func() bool { return accepted.Load() == 1 })

			err := ProbeTCP(t.Context(), closedPort(t, ip), quick(TCP))
			if err == nil || err.Error() != "connect: connection refused" || !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("closed port: got %v, want connect: connection refused", err)
			}
		})
	}
}

func TestProbeTCPMapped(t *testing.T) {
	ln := listen(t, "127.0.0.1")
	ap := addrOf(t, ln.Addr())
	mapped := netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	if !mapped.Addr().Is4In6() {
		t.Fatal("not mapped")
	}
	if err := Probe(t.Context(), mapped, quick(TCP)); err != nil {
		t.Fatalf("%v: %v", mapped, err)
	}
}

func TestProbeCanceled(t *testing.T) {
	ln := listen(t, "127.0.0.1")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := ProbeTCP(ctx, addrOf(t, ln.Addr()), quick(TCP))
	if err == nil || err.Error() != "connect: canceled" || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want connect: canceled", err)
	}
	if err := Probe(t.Context(), addrOf(t, ln.Addr()), Check{}); err == nil {
		t.Fatal("a check of no kind passed")
	}
}

// httpBackend serves the HTTP test paths on ip and records what it saw.
type httpBackend struct {
	addr       netip.AddrPort
	conns      atomic.Int64 // connections opened
	redirected atomic.Int64 // requests for /target
	mu         sync.Mutex
	hosts      []string
	closing    []bool
}

func startHTTP(t *testing.T, ip string) *httpBackend {
	t.Helper()
	b := &httpBackend{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.hosts = append(b.hosts, r.Host)
		b.closing = append(b.closing, r.Close)
		b.mu.Unlock()
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/target", http.StatusFound)
	})
	mux.HandleFunc("/target", func(w http.ResponseWriter, r *http.Request) {
		b.redirected.Add(1)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte(strings.Repeat("x", 64<<10))
		for range 1 << 10 { // 64 MiB, unless the client leaves first
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = listen(t, ip)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	b.addr = addrOf(t, srv.Listener.Addr())
	return b
}

func TestProbeHTTP(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			b := startHTTP(t, ip)
			check := func(path string, lo, hi int) Check {
				c := quick(HTTP)
				c.Path, c.StatusMin, c.StatusMax = path, lo, hi
				return c
			}
			for _, tc := range []struct {
				name  string
				check Check
				want  string // "" to pass
			}{
				{"200", check("/ok", 200, 399), ""},
				{"query", check("/ok?full=1", 200, 299), ""},
				{"default range", check("/ok", 0, 0), ""},
				{"503", check("/fail", 200, 399), "status 503, want 200-399"},
				{"503 wanted", check("/fail", 500, 599), ""},
				{"302 passes", check("/redirect", 200, 399), ""},
				{"302 fails", check("/redirect", 200, 299), "status 302, want 200-299"},
				{"404", check("/nothing", 200, 399), "status 404, want 200-399"},
				{"big body", check("/big", 200, 299), ""},
				{"not a path", check("http://example.test/", 200, 299), "get http://example.test/: not a path"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					start := time.Now()
					err := ProbeHTTP(t.Context(), b.addr, tc.check)
					if got := errString(err); got != tc.want {
						t.Fatalf("got %q, want %q", got, tc.want)
					}
					if took := time.Since(start); took > 2*time.Second {
						t.Errorf("took %v", took)
					}
				})
			}
			if n := b.redirected.Load(); n != 0 {
				t.Errorf("redirect followed %d times", n)
			}

			// The slow path: the timeout ends the check.
			c := check("/slow", 200, 399)
			c.Timeout = 50 * time.Millisecond
			start := time.Now()
			err := ProbeHTTP(t.Context(), b.addr, c)
			if got := errString(err); got != "get /slow: timeout" || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("slow: got %q, want get /slow: timeout", got)
			}
			if took := time.Since(start); took < 50*time.Millisecond || took > 2*time.Second {
				t.Errorf("slow: took %v, want about 50ms", took)
			}
		})
	}
}

func TestProbeHTTPRequest(t *testing.T) {
	b := startHTTP(t, "127.0.0.1")
	c := quick(HTTP)
	c.Path = "/ok"
	before := b.conns.Load()
	for _, host := range []string{"", "web.example.test"} {
		c.Host = host
		if err := ProbeHTTP(t.Context(), b.addr, c); err != nil {
			t.Fatal(err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if want := []string{b.addr.String(), "web.example.test"}; strings.Join(b.hosts, " ") != strings.Join(want, " ") {
		t.Errorf("Host headers %q, want %q", b.hosts, want)
	}
	if b.closing[0] != true || b.closing[1] != true {
		t.Errorf("requests asked for keep-alive: Connection: close %v", b.closing)
	}
	if n := b.conns.Load() - before; n != 2 {
		t.Errorf("2 checks opened %d connections, want 2", n)
	}

	err := ProbeHTTP(t.Context(), closedPort(t, "127.0.0.1"), c)
	if got := errString(err); got != "get /ok: connect: connection refused" || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("closed port: got %q", got)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// dnsBackend is a DNS server on loopback answering ok.test. and
// NXDOMAIN for everything else, recording the questions.
type dnsBackend struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen []*dns.Msg
}

func startDNS(t *testing.T, ip string) *dnsBackend {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		if ip == "::1" {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		t.Fatal(err)
	}
	b := &dnsBackend{addr: addrOf(t, pc.LocalAddr())}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		b.mu.Lock()
		b.seen = append(b.seen, r.Copy())
		b.mu.Unlock()
		m := new(dns.Msg)
		if r.Question[0].Name == "ok.test." {
			m.SetReply(r)
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "ok.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		} else {
			m.SetRcode(r, dns.RcodeNameError)
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return b
}

// udpResponder answers every packet on 127.0.0.1 with reply(query); nil
// answers nothing.
func udpResponder(t *testing.T, reply func(q []byte) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:n]); r != nil {
				pc.WriteTo(r, from)
			}
		}
	}()
	return addrOf(t, pc.LocalAddr())
}

func TestProbeDNS(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			b := startDNS(t, ip)
			c := quick(DNS)
			if err := ProbeDNS(t.Context(), b.addr, c); err != nil {
				t.Fatalf("root NS (NXDOMAIN): %v", err)
			}
			c.Query, c.QType = "ok.test", dns.TypeA
			for range 2 {
				if err := ProbeDNS(t.Context(), b.addr, c); err != nil {
					t.Fatalf("ok.test A: %v", err)
				}
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if len(b.seen) != 3 {
				t.Fatalf("server saw %d queries, want 3", len(b.seen))
			}
			want := []string{". NS", "ok.test. A", "ok.test. A"}
			for i, q := range b.seen {
				got := q.Question[0].Name + " " + dns.Type(q.Question[0].Qtype).String()
				if got != want[i] || !q.RecursionDesired || q.Response {
					t.Errorf("query %d: %s rd=%v qr=%v, want %s rd=true", i, got, q.RecursionDesired, q.Response, want[i])
				}
			}
			if b.seen[0].Id == b.seen[1].Id && b.seen[1].Id == b.seen[2].Id {
				t.Errorf("three queries with id %d: not random", b.seen[0].Id)
			}
		})
	}
}

func TestProbeDNSFailures(t *testing.T) {
	c := quick(DNS)
	c.Timeout = 100 * time.Millisecond
	wrongID := func(q []byte) []byte {
		m := new(dns.Msg)
		if m.Unpack(q) != nil {
			return nil
		}
		r := new(dns.Msg)
		r.SetReply(m)
		r.Id++
		p, _ := r.Pack()
		return p
	}
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
		want string
	}{
		{"silent", udpResponder(t, func([]byte) []byte { return nil }), "query . NS: timeout"},
		{"wrong id", udpResponder(t, wrongID), "query . NS: timeout"},
		{"malformed", udpResponder(t, func(q []byte) []byte { return append(q[:2:2], 0x81, 0x80, 0, 1, 0) }), "query . NS: dns: "},
		{"a query back", udpResponder(t, func(q []byte) []byte { return q }), "query . NS: not a response to the query"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := ProbeDNS(t.Context(), tc.addr, c)
			if got := errString(err); !strings.HasPrefix(got, tc.want) || err == nil {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("took %v", took)
			}
		})
	}

	// A closed UDP port: ICMP port unreachable, seen at once.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := addrOf(t, pc.LocalAddr())
	pc.Close()
	err = ProbeDNS(t.Context(), closed, c)
	if got := errString(err); got != "query . NS: read: connection refused" || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("closed port: got %q", got)
	}

	// A cancelled context ends the wait at once, well before the timeout.
	silent := udpResponder(t, func([]byte) []byte { return nil })
	c.Timeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = ProbeDNS(ctx, silent, c)
	if took := time.Since(start); err == nil || took > time.Second {
		t.Errorf("cancelled: %v after %v", err, took)
	}
}

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
