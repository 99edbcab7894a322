package lb

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startDNSBackend runs a real DNS server (miekg/dns) on addr that answers
// every A question with answer.
func startDNSBackend(t *testing.T, addr string, answer netip.Addr) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		for _, qq := range q.Question {
			if qq.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: answer.AsSlice()})
			}
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: mux, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Test 2a: dig @VIP gets its answer from a real DNS server behind the VIP.
// dig only accepts a reply from the address it asked, so this passes only
// if recvmsg shows the VIP as the source.
func TestDigThroughVIP(t *testing.T) {
	d, cg, _ := newDatapath(t)
	ans := netip.MustParseAddr("192.0.2.77")
	be4 := startDNSBackend(t, "127.0.0.3:0", ans)
	be6 := startDNSBackend(t, "[::1]:0", ans)
	mustApply(t, d,
		svc("198.18.0.53", 53, UDP, be4),
		svc("fd6d:6573:6800::53", 53, UDP, be6),
	)
	// (dig refuses v4-mapped server addresses; TestUnconnectedUDPTwoVIPs
	// covers them.)
	for _, server := range []string{"198.18.0.53", "fd6d:6573:6800::53"} {
		t.Run(server, func(t *testing.T) {
			out := runCmd(t, cg, "dig", "@"+server, "-p", "53", "+tries=1", "+time=2", "+short", "web.example.")
			if strings.TrimSpace(out) != ans.String() {
				t.Errorf("dig @%s printed %q, want %s", server, out, ans)
			}
		})
	}
}

// Test 2b: one unconnected UDP socket sends to two VIPs and gets both
// replies, each from the VIP it was sent to (reverse entries are keyed by
// socket and backend, not by socket alone).
func TestUnconnectedUDPTwoVIPs(t *testing.T) {
	d, cg, _ := newDatapath(t)
	b1 := startUDPEcho(t, "127.0.0.4:0")
	b2 := startUDPEcho(t, "127.0.0.5:0")
	b6 := startUDPEcho(t, "[::1]:0")
	b6b := startUDPEcho(t, "[::1]:0")
	mustApply(t, d,
		svc("198.18.1.1", 5000, UDP, b1),
		svc("198.18.1.2", 5000, UDP, b2),
		svc("fd6d:6573:6800::1:1", 5000, UDP, b6),
		svc("fd6d:6573:6800::1:2", 5000, UDP, b6b),
	)
	for _, tc := range []struct {
		name, network, vip1, vip2 string
		want                      []string
	}{
		{"v4", "udp4", "198.18.1.1:5000", "198.18.1.2:5000",
			[]string{"198.18.1.1:5000 " + b1.String() + " q0", "198.18.1.2:5000 " + b2.String() + " q1"}},
		// A dual-stack socket: sendmsg4 fires on send, recvmsg6 on receive.
		{"v4-mapped", "udp", "[::ffff:198.18.1.1]:5000", "[::ffff:198.18.1.2]:5000",
			[]string{"198.18.1.1:5000 " + b1.String() + " q0", "198.18.1.2:5000 " + b2.String() + " q1"}},
		{"v6", "udp6", "[fd6d:6573:6800::1:1]:5000", "[fd6d:6573:6800::1:2]:5000",
			[]string{"[fd6d:6573:6800::1:1]:5000 " + b6.String() + " q0", "[fd6d:6573:6800::1:2]:5000 " + b6b.String() + " q1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := strings.Split(strings.TrimSpace(runHelper(t, cg, "udp-multi", tc.vip1, tc.vip2, tc.network)), "\n")
			slices.Sort(lines)
			if !slices.Equal(lines, tc.want) {
				t.Errorf("replies:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// Connected UDP: every datagram of one socket goes to the same backend
// (per-socket stable choice), replies are read back, and the socket's peer
// is the VIP. Sockets spread over the backends.
func TestConnectedUDPStable(t *testing.T) {
	d, cg, _ := newDatapath(t)
	var bs []netip.AddrPort
	for i := range 3 {
		bs = append(bs, startUDPEcho(t, fmt.Sprintf("127.0.0.%d:0", 61+i)))
	}
	mustApply(t, d, svc("198.18.8.1", 6000, UDP, bs...))
	out := runHelper(t, cg, "udp-connected", "198.18.8.1:6000", "30", "10")
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		// "<peer> <backend> <backend> ..." for each socket
		f := strings.Fields(line)
		if f[0] != "198.18.8.1:6000" {
			t.Errorf("socket peer %s, want the VIP", f[0])
		}
		for _, b := range f[2:] {
			if b != f[1] {
				t.Errorf("one socket reached %s and %s: not stable", f[1], b)
			}
		}
		seen[f[1]]++
	}
	if len(seen) < 2 {
		t.Errorf("30 sockets all went to %v: not spread", seen)
	}
	t.Logf("sockets per backend: %v", seen)
}

// helperUDPConnected: args vip:port sockets datagrams. Each socket is
// connected to the VIP, sends datagrams and prints its peer and the
// backend that answered each one.
func helperUDPConnected(args []string) int {
	var sockets, datagrams int
	fmt.Sscan(args[1], &sockets)
	fmt.Sscan(args[2], &datagrams)
	for range sockets {
		c, err := net.Dial("udp", args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		line := []string{c.RemoteAddr().String()}
		buf := make([]byte, 1500)
		for i := range datagrams {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(c, "d%d", i); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			n, err := c.Read(buf)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			line = append(line, strings.Fields(string(buf[:n]))[0])
		}
		c.Close()
		fmt.Println(strings.Join(line, " "))
	}
	return 0
}
