package lb

import (
	"encoding/json"
	"fmt"
	"net/netip"
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
