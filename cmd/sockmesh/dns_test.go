package main

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sockmesh/dnsstub"
	"sockmesh/lb"
	"sockmesh/registry"
)

// gatedDatapath is a datapath whose writes wait at a gate, and fail when
// told to: it shows what DNS says while a change is not routed yet.
type gatedDatapath struct {
	gate chan struct{}
	mu   sync.Mutex
	fail error
}

func (g *gatedDatapath) wait() error {
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fail
}

func (g *gatedDatapath) Apply([]lb.Service) (lb.ApplyStats, error) {
	return lb.ApplyStats{}, g.wait()
}

func (g *gatedDatapath) Update([]lb.Service, []lb.ServiceKey) (lb.ApplyStats, error) {
	return lb.ApplyStats{}, g.wait()
}

// TestDNSFollowsDatapath checks the stub publishes a name only once the
// datapath took it, and never one the datapath refused.
func TestDNSFollowsDatapath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "services.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := dnsstub.NewHandler(dnsstub.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dnsstub.Listen(h, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	stub := srv.Addrs()[0].String()
	rcode := func(name string) int {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		resp, err := dns.Exchange(m, stub)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Rcode
	}

	dp := &gatedDatapath{gate: make(chan struct{}, 10)}
	dp.gate <- struct{}{} // the first, empty apply
	reg, err := registry.New(registry.Options{Dir: dir, Logger: slog.New(slog.DiscardHandler), OnApply: publishDNS(h)}, dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	defer func() {
		close(dp.gate)
		cancel()
		<-done
	}()
	<-reg.Ready()

	write := func(name string) {
		t.Helper()
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, []byte("name: "+name+"\nports: [80]\nbackends: [127.0.0.1:8080]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name+".yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write("svc")
	// The registry has read the file and waits on the datapath: the name
	// must not resolve yet.
	time.Sleep(300 * time.Millisecond)
	if rc := rcode("svc.mesh.internal."); rc != dns.RcodeNameError {
		t.Fatalf("name resolves (%s) before the datapath took it", dns.RcodeToString[rc])
	}
	dp.gate <- struct{}{}
	waitRcode(t, rcode, "svc.mesh.internal.", dns.RcodeSuccess)

	// A datapath that refuses the change: the name never appears.
	dp.mu.Lock()
	dp.fail = errors.New("map full")
	dp.mu.Unlock()
	write("refused")
	for range 3 {
		dp.gate <- struct{}{} // the write and its retries fail
	}
	time.Sleep(300 * time.Millisecond)
	if rc := rcode("refused.mesh.internal."); rc != dns.RcodeNameError {
		t.Fatalf("name the datapath refused resolves: %s", dns.RcodeToString[rc])
	}
	if rc := rcode("svc.mesh.internal."); rc != dns.RcodeSuccess {
		t.Fatalf("live name lost after a failed apply: %s", dns.RcodeToString[rc])
	}
}

func waitRcode(t *testing.T, rcode func(string) int, name string, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for rcode(name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s after 2s", name, dns.RcodeToString[want])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestResolverCommand(t *testing.T) {
	out, errOut, code := sockmesh(t, "resolver", "resolv.conf")
	if code != 0 || !strings.Contains(out, "\nnameserver 127.0.0.153\noptions edns0\n") {
		t.Errorf("resolver resolv.conf: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = sockmesh(t, "resolver", "systemd-resolved", "--dns-listen", "127.0.0.153:5353", "--dns-zone", "svc.internal")
	if code != 0 || !strings.Contains(out, "[Resolve]\nDNS=127.0.0.153:5353\nDomains=~svc.internal\n") {
		t.Errorf("resolver systemd-resolved: exit %d\n%s", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"resolver", "hosts"}, `unknown style "hosts"`},
		{[]string{"resolver", "resolv.conf", "--dns-listen", "127.0.0.153:5353"}, "resolv.conf can only name servers on port 53"},
		{[]string{"resolver", "--dns-listen", "nonsense"}, `parse --dns-listen: "nonsense" is not an address`},
		{[]string{"resolver", "--dns-zone", "a..b"}, `check zone "a..b"`},
	} {
		_, errOut, code := sockmesh(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("sockmesh %s: exit %d, stderr %q: want one line with %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}
