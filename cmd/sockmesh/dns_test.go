package main

import (
	"context"
	"errors"
	"fmt"
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

// gatedDatapath is a datapath whose writes announce themselves on entered
// and then wait at gate, and fail when told to: it shows what DNS says
// while a change is not routed yet.
type gatedDatapath struct {
	gate    chan struct{}
	entered chan struct{}
	mu      sync.Mutex
	fail    error
}

func (g *gatedDatapath) wait() error {
	g.entered <- struct{}{}
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

// TestDNSFollowsDatapath checks the stub has every name once the registry
// is ready, publishes a new name only once the datapath took it, and never
// one the datapath refused.
func TestDNSFollowsDatapath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "services.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	service := func(name string) []byte {
		return []byte("name: " + name + "\nports: [80]\nbackends: [127.0.0.1:8080]\n")
	}
	// Enough services that building their zone takes milliseconds.
	const existing = 2000
	for i := range existing {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("svc-%d.yaml", i)), service(fmt.Sprintf("svc-%d", i)), 0o644); err != nil {
			t.Fatal(err)
		}
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

	dp := &gatedDatapath{gate: make(chan struct{}, 10), entered: make(chan struct{}, 10)}
	dp.gate <- struct{}{} // the first apply
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
	<-dp.entered
	for _, i := range []int{0, existing - 1} {
		if rc := rcode(fmt.Sprintf("svc-%d.mesh.internal.", i)); rc != dns.RcodeSuccess {
			t.Fatalf("svc-%d: %s when the registry is ready, want NOERROR", i, dns.RcodeToString[rc])
		}
	}

	write := func(name string) {
		t.Helper()
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, service(name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name+".yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write("new")
	<-dp.entered // the registry now waits on the datapath for it
	if rc := rcode("new.mesh.internal."); rc != dns.RcodeNameError {
		t.Fatalf("name resolves (%s) before the datapath took it", dns.RcodeToString[rc])
	}
	dp.gate <- struct{}{}
	waitRcode(t, rcode, "new.mesh.internal.", dns.RcodeSuccess)

	// A datapath that refuses the change: the name never appears.
	dp.mu.Lock()
	dp.fail = errors.New("map full")
	dp.mu.Unlock()
	write("refused")
	<-dp.entered
	dp.gate <- struct{}{} // the write fails
	<-dp.entered          // and is retried: the failure is fully handled
	if rc := rcode("refused.mesh.internal."); rc != dns.RcodeNameError {
		t.Fatalf("name the datapath refused resolves: %s", dns.RcodeToString[rc])
	}
	if rc := rcode("new.mesh.internal."); rc != dns.RcodeSuccess {
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
		// run checks its DNS flags before it touches the kernel. (Should
		// it not, --cgroup and --pin-dir name plain directories, so it
		// fails anyway and never attaches to a real cgroup.)
		{append(safeRun(t), "--dns-ttl", "1500ms"), "parse --dns-ttl: 1.5s is not a TTL"},
		{append(safeRun(t), "--dns-negative-ttl", "0s"), "parse --dns-negative-ttl: 0s is not a TTL"},
		{append(safeRun(t), "--dns-allow", "10.0.0.0/33"), "parse --dns-allow"},
		{append(safeRun(t), "--dns-upstream", "resolver.example"), `parse --dns-upstream: "resolver.example" is not an address`},
		{append(safeRun(t), "--dns-listen", "127.0.0.1:99999"), "parse --dns-listen"},
	} {
		_, errOut, code := sockmesh(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("sockmesh %s: exit %d, stderr %q: want one line with %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}

// safeRun is `sockmesh run` pointed at plain directories, so that it can
// never attach to a real cgroup or pin anything.
func safeRun(t *testing.T) []string {
	return []string{"run", "--cgroup", t.TempDir(), "--pin-dir", filepath.Join(t.TempDir(), "pins"), "--state-dir", t.TempDir(), "--services", t.TempDir()}
}
