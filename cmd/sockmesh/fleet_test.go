package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"sockmesh/internal/etcdtest"
	"sockmesh/internal/testenv"
)

// fleetHost is one "host" of a fleet test: a network namespace of the
// test's own, joined to the others by a bridge, with its own cgroup,
// services directory and sockmesh daemon.
type fleetHost struct {
	name   string
	ip     string // on the fleet's 192.0.2.0/24
	netns  string // /proc/PID/ns/net of the process holding it
	cg     *testenv.Cgroup
	dir    string
	put    func(name, content string)
	paths  []string // --pin-dir, --state-dir
	args   []string // run's arguments
	daemon *daemonProc
}

func (h *fleetHost) pinDir() string { return h.paths[1] }

// run runs a command in the host's netns (outside any mesh cgroup).
func (h *fleetHost) run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("nsenter", append([]string{"--net=" + h.netns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %v\n%s", h.name, args, err, out)
	}
}

// curl fetches url from the host's mesh cgroup, in its netns.
func (h *fleetHost) curl(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := h.cg.Command(ctx, t, "nsenter", "--net="+h.netns, "curl", "-sS", "--max-time", "3", url).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// newFleet makes a bridge with 192.0.2.1 in the test's namespace, an etcd
// listening there, and n hosts on 192.0.2.11, .12, ... each running a
// daemon that serves the etcd prefix (and a directory of its own). The
// documentation subnet exists only inside these namespaces.
func newFleet(t *testing.T, n int, extra func(i int) []string) (*etcdtest.Server, string, []*fleetHost) {
	t.Helper()
	testenv.RequirePrivileged(t)
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	// Names of their own per fleet: a namespace's veth outlives its
	// holder for a moment (the kernel dismantles namespaces in the
	// background), and the next test must not trip over it.
	tag := fmt.Sprintf("smf%04x", rand.IntN(1<<16))
	bridge := tag + "br"
	sh("ip", "link", "add", bridge, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	sh("ip", "addr", "add", "192.0.2.1/24", "dev", bridge)
	sh("ip", "link", "set", bridge, "up")
	etcd := etcdtest.StartOn(t, "192.0.2.1")
	url := "etcd://" + etcd.Endpoint + "/fleet/services/"

	var hosts []*fleetHost
	for i := range n {
		h := &fleetHost{name: fmt.Sprintf("host%c", 'A'+i), ip: fmt.Sprintf("192.0.2.%d", 11+i)}
		holder := exec.Command("unshare", "-n", "sleep", "600")
		holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
		h.netns = fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)
		// unshare execs sleep once the namespace exists: wait for it.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			own, _ := os.Readlink("/proc/self/ns/net")
			if theirs, err := os.Readlink(h.netns); err == nil && theirs != own {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no network namespace", h.name)
			}
		}
		veth := fmt.Sprintf("%sh%d", tag, i)
		sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", fmt.Sprint(holder.Process.Pid))
		t.Cleanup(func() { exec.Command("ip", "link", "del", veth).Run() })
		sh("ip", "link", "set", veth, "master", bridge, "up")
		h.run(t, "ip", "link", "set", "lo", "up")
		h.run(t, "ip", "addr", "add", h.ip+"/24", "dev", "eth0")
		h.run(t, "ip", "link", "set", "eth0", "up")
		h.cg = testenv.NewCgroup(t)
		h.dir, h.put = servicesDir(t)
		h.paths = []string{"--pin-dir", filepath.Join(testenv.BPFFS(t), "sockmesh"), "--state-dir", t.TempDir()}
		h.args = append([]string{"--services", h.dir, "--cgroup", h.cg.Path, "--dns-listen", "off", "--registry", url}, h.paths...)
		if extra != nil {
			h.args = append(h.args, extra(i)...)
		}
		h.start(t)
		t.Cleanup(func() {
			if h.daemon.cmd.ProcessState == nil {
				h.daemon.stop(t, syscall.SIGTERM)
			}
			sockmesh(t, append([]string{"down"}, h.paths...)...)
		})
		hosts = append(hosts, h)
	}
	return etcd, url, hosts
}

func (h *fleetHost) start(t *testing.T) {
	t.Helper()
	h.daemon = startDaemonIn(t, h.netns, filepath.Join(t.TempDir(), "ready"), h.args...)
}

// serveIn starts an HTTP backend answering "backend <addr>" in the host's
// netns.
func (h *fleetHost) serve(t *testing.T, addr string) {
	t.Helper()
	cmd := testenv.HelperIn(context.Background(), h.netns, "http-server", addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// 15 s: a loaded machine (other tests, CI) can be slow to start it.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if out, err := exec.Command("nsenter", "--net="+h.netns, "curl", "-sS", "--max-time", "1", "http://"+addr+"/").Output(); err == nil && strings.Contains(string(out), addr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s on %s not up", addr, h.name)
		}
	}
}

// Three hosts share one registry on etcd: a backend on host B, registered
// in etcd, is reached by VIP from hosts A and C; changes go live on all
// three (timed); with etcd killed traffic keeps flowing everywhere and
// status says stale; a host's local file still applies; etcd restarted
// with a change, all hosts converge within a second.
func TestFleetSharedRegistry(t *testing.T) {
	etcd, _, hosts := newFleet(t, 3, nil)
	a, b, c := hosts[0], hosts[1], hosts[2]
	b.serve(t, "192.0.2.12:8080")
	b.serve(t, "192.0.2.12:8081")
	cl := etcd.Client(t)
	put := func(doc string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cl.Put(ctx, "/fleet/services/web", doc); err != nil {
			t.Fatal(err)
		}
	}
	everywhere := func(within time.Duration, backend string) time.Duration {
		t.Helper()
		start := time.Now()
		for _, h := range hosts {
			waitServed(t, h.pinDir(), "198.18.20.1", within, backend)
		}
		return time.Since(start)
	}
	put(webDoc("198.18.20.1", "192.0.2.12:8080"))
	everywhere(5*time.Second, "192.0.2.12:8080")
	for _, h := range []*fleetHost{a, c} {
		if got := h.curl(t, "http://198.18.20.1/"); got != "backend 192.0.2.12:8080" {
			t.Errorf("curl from %s: %q", h.name, got)
		}
	}

	var took []time.Duration
	for i := range 100 {
		backend := []string{"192.0.2.12:8081", "192.0.2.12:8080"}[i%2]
		start := time.Now()
		put(webDoc("198.18.20.1", backend))
		everywhere(2*time.Second, backend)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("etcd put to live on all 3 hosts, 100 changes: median %v, p90 %v, worst %v", took[50], took[90], took[99])

	etcd.Stop(t)
	for _, h := range hosts {
		deadline := time.Now().Add(5 * time.Second)
		for {
			rep := readStatusJSON(t, h.paths)
			if rep.Registry != nil && len(rep.Registry.Sources) == 1 && rep.Registry.Sources[0].Stale {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status not stale 5s after etcd died", h.name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, h := range []*fleetHost{a, c} {
		if got := h.curl(t, "http://198.18.20.1/"); got != "backend 192.0.2.12:8080" {
			t.Errorf("curl from %s with etcd down: %q", h.name, got)
		}
	}
	a.put("local.yaml", "name: local\nvip: [198.18.20.2]\nports: [80]\nbackends: [192.0.2.12:8081]\n")
	waitServed(t, a.pinDir(), "198.18.20.2", 2*time.Second, "192.0.2.12:8081")
	if got := a.curl(t, "http://198.18.20.2/"); got != "backend 192.0.2.12:8081" {
		t.Errorf("local service on %s with etcd down: %q", a.name, got)
	}

	etcd.Restart(t)
	cl = etcd.Client(t)
	start := time.Now()
	put(webDoc("198.18.20.1", "192.0.2.12:8081"))
	everywhere(time.Second, "192.0.2.12:8081")
	t.Logf("etcd restarted with a change: live on all 3 hosts in %v", time.Since(start))
}

// helperHTTPServer: args addr. Serves "backend <addr>" until killed.
func helperHTTPServer(args []string) int {
	err := http.ListenAndServe(args[0], http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "backend %s\n", args[0])
	}))
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// A host publishing its own backends with a lease dies: after the lease's
// time to live its services leave the other hosts, and new connects from
// them no longer go there.
func TestFleetLeaseExpiry(t *testing.T) {
	pubDir := t.TempDir()
	if err := os.Chmod(pubDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pubDir, "bweb.yaml"), []byte("name: bweb\nvip: [198.18.20.3]\nports: [80]\nbackends: [192.0.2.12:8080]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const ttl = 2 * time.Second
	_, _, hosts := newFleet(t, 3, func(i int) []string {
		if i == 1 {
			return []string{"--publish", pubDir, "--publish-ttl", ttl.String()}
		}
		return nil
	})
	a, b, c := hosts[0], hosts[1], hosts[2]
	b.serve(t, "192.0.2.12:8080")
	for _, h := range hosts {
		waitServed(t, h.pinDir(), "198.18.20.3", 5*time.Second, "192.0.2.12:8080")
	}
	for _, h := range []*fleetHost{a, c} {
		if got := h.curl(t, "http://198.18.20.3/"); got != "backend 192.0.2.12:8080" {
			t.Errorf("curl from %s: %q", h.name, got)
		}
	}
	b.daemon.stop(t, syscall.SIGKILL)
	killed := time.Now()
	for _, h := range []*fleetHost{a, c} {
		for deadline := killed.Add(ttl + 5*time.Second); servedBackends(t, h.pinDir(), "198.18.20.3", 80) != nil; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves host B's service %v after the kill", h.name, time.Since(killed))
			}
		}
	}
	gone := time.Since(killed)
	t.Logf("host B killed: its service left hosts A and C after %v (lease %v)", gone.Round(time.Millisecond), ttl)
	// The lease runs from the last keep-alive, sent every third of it: it
	// ends between 2/3 of the TTL and the TTL after the kill.
	if gone < ttl*2/3-200*time.Millisecond {
		t.Errorf("the service left after %v, before the lease (%v) could expire: not the lease", gone, ttl)
	}
	if got := a.curl(t, "http://198.18.20.3/"); !strings.Contains(got, "No route to host") && !strings.Contains(got, "Couldn't connect") {
		t.Errorf("curl from %s after B's service left: %q, want the VIP unreachable", a.name, got)
	}
}

// One service on several hosts: the service is put once (registry put),
// hosts B and C each publish their own backends of it (a backends
// document, under their lease). Host A balances over both; B's daemon is
// killed (its backend process lives on): after the lease only C's backend
// is left, the service stays, and every new connect goes to C.
func TestFleetSharedServiceBackends(t *testing.T) {
	const ttl = 2 * time.Second
	pub := map[int]string{}
	for i, addr := range map[int]string{1: "192.0.2.12:8080", 2: "192.0.2.13:8080"} {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "shared.yaml"), []byte("backends_for: shared\nbackends: ["+addr+"]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		pub[i] = dir
	}
	etcd, _, hosts := newFleet(t, 3, func(i int) []string {
		if dir, ok := pub[i]; ok {
			return []string{"--publish", dir, "--publish-ttl", ttl.String(), "--publish-as", fmt.Sprintf("host%c", 'a'+i)}
		}
		return nil
	})
	a, b, c := hosts[0], hosts[1], hosts[2]
	b.serve(t, "192.0.2.12:8080")
	c.serve(t, "192.0.2.13:8080")
	svcFile := filepath.Join(t.TempDir(), "shared.yaml")
	if err := os.WriteFile(svcFile, []byte("name: shared\nvip: [198.18.20.4]\nports: [80]\npolicy: round-robin\nbackends: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := []string{"--registry", "etcd://" + etcd.Endpoint + "/fleet/services/"}
	if out, errOut, code := sockmesh(t, append([]string{"registry", "put", svcFile}, reg...)...); code != 0 {
		t.Fatalf("registry put: %d %s %s", code, out, errOut)
	}
	for _, h := range hosts {
		waitServed(t, h.pinDir(), "198.18.20.4", 5*time.Second, "192.0.2.12:8080", "192.0.2.13:8080")
	}
	seen := map[string]int{}
	for range 6 {
		seen[a.curl(t, "http://198.18.20.4/")]++
	}
	if seen["backend 192.0.2.12:8080"] != 3 || seen["backend 192.0.2.13:8080"] != 3 {
		t.Errorf("6 curls from host A, round-robin over B's and C's backends: %v", seen)
	}
	out, _, _ := sockmesh(t, append([]string{"registry", "list"}, reg...)...)
	for _, key := range []string{"shared/backends/hostb/shared", "shared/backends/hostc/shared"} {
		if !strings.Contains(out, key) {
			t.Errorf("registry list:\n%s\nwant the key %s", out, key)
		}
	}
	// status names the document each backend came from.
	from := map[string]string{}
	for _, s := range readStatusJSON(t, a.paths).Services {
		if s.Name == "shared" {
			for _, b := range s.Backends {
				from[b.Address] = b.From
			}
		}
	}
	if !strings.HasSuffix(from["192.0.2.12:8080"], "/fleet/services/shared/backends/hostb/shared") || !strings.HasSuffix(from["192.0.2.13:8080"], "/shared/backends/hostc/shared") {
		t.Errorf("status of shared on host A: backends from %v", from)
	}

	b.daemon.stop(t, syscall.SIGKILL)
	killed := time.Now()
	for _, h := range []*fleetHost{a, c} {
		waitServed(t, h.pinDir(), "198.18.20.4", ttl+5*time.Second, "192.0.2.13:8080")
	}
	t.Logf("host B killed: its backend left the service on hosts A and C after %v (lease %v)", time.Since(killed).Round(time.Millisecond), ttl)
	for i := range 6 {
		if got := a.curl(t, "http://198.18.20.4/"); got != "backend 192.0.2.13:8080" {
			t.Errorf("curl %d from host A after B's backends left: %q, want C's backend", i, got)
		}
	}

	// etcd down, host A's daemon restarted: it serves the service with
	// C's backend from its state file.
	etcd.Stop(t)
	a.daemon.stop(t, syscall.SIGTERM)
	a.start(t)
	waitServed(t, a.pinDir(), "198.18.20.4", 2*time.Second, "192.0.2.13:8080")
	if got := a.curl(t, "http://198.18.20.4/"); got != "backend 192.0.2.13:8080" {
		t.Errorf("curl from host A restarted with etcd down: %q", got)
	}
}
