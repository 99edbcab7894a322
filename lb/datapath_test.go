package lb

import (
	"context"
	"math"
	"strings"
	"time"

	"encoding/json"
	"fmt"
	"net/netip"
	"sockmesh/internal/testenv"
	"testing"
)

// Test 1: an HTTP client (Go and curl) reaches a backend through a VIP, over
// IPv4, IPv6 and v4-mapped IPv6, and sees the VIP as its peer.
func TestTCPThroughVIP(t *testing.T) {
	d, cg, _ := newDatapath(t)
	be4 := startHTTPBackend(t, "127.0.0.2:0")
	be6 := startHTTPBackend(t, "[::1]:0")
	mustApply(t, d,
		svc("198.18.0.10", 80, TCP, be4),
		svc("fd6d:6573:6800::10", 80, TCP, be6),
		svc("fd6d:6573:6800::11", 8080, TCP, be4), // IPv6 VIP, IPv4 backend
	)
	// Go prints a v4-mapped peer as IPv4; curl prints it as it is.
	for _, tc := range []struct {
		name, url, network, goRemote, curlRemote string
		backend                                  netip.AddrPort
	}{
		{"v4", "http://198.18.0.10/", "tcp4", "198.18.0.10:80", "198.18.0.10 80", be4},
		{"v6", "http://[fd6d:6573:6800::10]/", "tcp6", "[fd6d:6573:6800::10]:80", "fd6d:6573:6800::10 80", be6},
		{"v4-mapped", "http://[::ffff:198.18.0.10]/", "dual", "198.18.0.10:80", "::ffff:198.18.0.10 80", be4},
		// A dual-stack socket reaches an IPv4 backend of an IPv6 VIP
		// through its v4-mapped address (not an IPV6_V6ONLY one).
		{"v6 vip v4 backend", "http://[fd6d:6573:6800::11]:8080/", "dual", "[fd6d:6573:6800::11]:8080", "fd6d:6573:6800::11 8080", be4},
	} {
		t.Run(tc.name+"/go", func(t *testing.T) {
			var r httpResult
			out := runHelper(t, cg, "http-get", tc.url, tc.network)
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			if want := fmt.Sprintf("backend %s\n", tc.backend); r.Body != want {
				t.Errorf("body = %q, want %q", r.Body, want)
			}
			if r.Remote != tc.goRemote {
				t.Errorf("RemoteAddr = %s, want the VIP %s", r.Remote, tc.goRemote)
			}
		})
		t.Run(tc.name+"/curl", func(t *testing.T) {
			out := runCmd(t, cg, "curl", "-sS", "--max-time", "5", "-g", "-w", "%{remote_ip} %{remote_port}", tc.url)
			want := fmt.Sprintf("backend %s\n%s", tc.backend, tc.curlRemote)
			if out != want {
				t.Errorf("curl printed %q, want %q", out, want)
			}
		})
	}
}

// Test 3: a VIP with no backends fails connect() at once with
// ECONNREFUSED: no packet is sent (a packet would meet the unreachable
// route and give EHOSTUNREACH instead).
func TestNoBackendsRefused(t *testing.T) {
	d, cg, _ := newDatapath(t)
	mustApply(t, d,
		svc("198.18.2.1", 80, TCP),
		svc("fd6d:6573:6800::2:1", 80, TCP),
	)
	for _, ip := range []string{"198.18.2.1", "fd6d:6573:6800::2:1", "::ffff:198.18.2.1"} {
		t.Run(ip, func(t *testing.T) {
			var errno string
			var p95NS, medianNS int64
			out := runHelper(t, cg, "refused", ip, "80", "50")
			if _, err := fmt.Sscan(out, &errno, &p95NS, &medianNS); err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			t.Logf("refused in median %v, p95 %v", time.Duration(medianNS), time.Duration(p95NS))
			if errno != "ECONNREFUSED" {
				t.Fatalf("connect to %s: %s, want ECONNREFUSED", ip, errno)
			}
			// "Well under a millisecond": the median of 50 under 0.1 ms,
			// and 95 % of them under 1 ms (one scheduling hiccup on a
			// busy 2-core machine may exceed it; nothing else should).
			if medianNS > 100_000 || p95NS > 1_000_000 {
				t.Errorf("refusal took median %v, p95 %v; want well under 1ms", time.Duration(medianNS), time.Duration(p95NS))
			}
		})
	}
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var refused uint64
	for _, s := range st {
		refused += s.Refused
	}
	if refused != 150 {
		t.Errorf("refused counters sum to %d, want 150", refused)
	}
}

// Test 4: connects over backends weighted 1,1,2 land within 5 % of
// 25/25/50. 20,000 rather than 10,000 connects: at 10,000 a correct
// datapath still misses the 5 % band for a 25 % backend about once in 270
// runs (2.9 sigma), at 20,000 once in 25,000.
func TestWeightedDistribution(t *testing.T) {
	d, cg, _ := newDatapath(t)
	b1 := startIDBackend(t, "127.0.0.11:0")
	b2 := startIDBackend(t, "127.0.0.12:0")
	b3 := startIDBackend(t, "127.0.0.13:0")
	s := svc("198.18.3.1", 7000, TCP)
	s.Backends = []Backend{{Addr: b1, Weight: 1}, {Addr: b2, Weight: 1}, {Addr: b3, Weight: 2}}
	mustApply(t, d, s)

	const n = 20000
	results := parseDialResults(t, runHelper(t, cg, "dial-loop", "198.18.3.1:7000", fmt.Sprint(n), "120"))
	if len(results) != n {
		t.Fatalf("%d results, want %d", len(results), n)
	}
	got := map[string]int{}
	for _, r := range results {
		if r.Err != "" {
			t.Fatalf("connect failed: %s", r.Err)
		}
		got[r.Backend]++
	}
	for _, want := range []struct {
		b     netip.AddrPort
		share float64
	}{{b1, 0.25}, {b2, 0.25}, {b3, 0.5}} {
		c := got[want.b.String()]
		exp := want.share * n
		if math.Abs(float64(c)-exp) > 0.05*exp {
			t.Errorf("backend %s got %d of %d connects, want %.0f ± 5%%", want.b, c, n, exp)
		}
	}
	t.Logf("distribution: %v", got)

	// The per-backend counters saw the same thing.
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Translations != n {
		t.Fatalf("service counters: %+v, want %d translations", st, n)
	}
	for _, b := range st[0].Backends {
		if int(b.Translations) != got[b.Addr.String()] {
			t.Errorf("backend %s counter %d, clients saw %d", b.Addr, b.Translations, got[b.Addr.String()])
		}
	}
}

// Test 7: a process outside the mesh cgroup is not rewritten: its connect
// to the VIP meets the unreachable route.
func TestOutsideCgroupUntouched(t *testing.T) {
	d, _, _ := newDatapath(t)
	be := startIDBackend(t, "127.0.0.14:0")
	mustApply(t, d, svc("198.18.4.1", 80, TCP, be))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := testenv.HelperOutside(ctx, "refused", "198.18.4.1", "80", "1").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != "EHOSTUNREACH" {
		t.Fatalf("connect from outside the cgroup: %q, want EHOSTUNREACH (not rewritten)", out)
	}
}

// getsockname, opt-in per service: a backend bound to its address inside
// the mesh cgroup sees the VIP as its own address; a service without the
// flag leaves getsockname alone.
func TestGetsocknameLocalName(t *testing.T) {
	d, cg, _ := newDatapath(t)
	on := svc("198.18.9.1", 80, TCP, netip.MustParseAddrPort("127.0.0.71:8071"))
	on.LocalName = true
	off := svc("198.18.9.2", 80, TCP, netip.MustParseAddrPort("127.0.0.72:8072"))
	mustApply(t, d, on, off)
	// A Python server: Go's net.Listen reports the address it asked for
	// without asking getsockname.
	const server = `import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(type=kind)
    s.bind((ip, port))
    print("%s:%d" % s.getsockname())
`
	for _, tc := range []struct{ ip, port, tcp string }{
		{"127.0.0.71", "8071", "198.18.9.1:80"},
		{"127.0.0.72", "8072", "127.0.0.72:8072"},
	} {
		// The UDP socket on the same address is not a backend: untouched.
		want := tc.tcp + "\n" + tc.ip + ":" + tc.port + "\n"
		if got := runCmd(t, cg, "python3", "-c", server, tc.ip, tc.port); got != want {
			t.Errorf("server on %s:%s: getsockname printed %q, want %q", tc.ip, tc.port, got, want)
		}
	}
}
