package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"sockmesh/internal/etcdtest"
	"sockmesh/internal/testenv"
	"sockmesh/lb"
)

// servedBackends reads, from the pinned maps, the backends the datapath
// serves for vip:port/tcp.
func servedBackends(t *testing.T, pinDir string, vip string, port uint16) []string {
	t.Helper()
	p, err := lb.ReadPinned(pinDir)
	if err != nil {
		t.Fatalf("read the pinned maps: %v", err)
	}
	key := lb.ServiceKey{VIP: netip.MustParseAddr(vip), Port: port, Proto: lb.TCP}
	for _, s := range p.Services {
		if s.Key == key {
			var out []string
			for _, b := range s.Backends {
				out = append(out, b.Addr.String())
			}
			return out
		}
	}
	return nil
}

// waitServed waits until vip:80 serves exactly want, and returns how long
// that took.
func waitServed(t *testing.T, pinDir, vip string, within time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if got := servedBackends(t, pinDir, vip, 80); slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s:80 serves %v after %v, want %v", vip, servedBackends(t, pinDir, vip, 80), within, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func webDoc(vip, backend string) string {
	return fmt.Sprintf("name: web\nvip: [%s]\nports: [80]\nbackends: [%s]\n", vip, backend)
}

// The shared registry on one host: put validates against etcd and writes
// nothing invalid; the daemon serves what etcd holds and follows changes;
// with etcd killed traffic flows, status says stale, and local files still
// apply; a daemon restarted meanwhile keeps the fleet's services; etcd back,
// changes are live again within a second.
func TestSharedRegistry(t *testing.T) {
	testenv.RequirePrivileged(t)
	etcd := etcdtest.Start(t)
	url := "etcd://" + etcd.Endpoint + "/sockmesh/services/"
	cg := testenv.NewCgroup(t)
	dir, putFile := servicesDir(t)
	serveHTTP(t, "127.0.0.1:9701")
	serveHTTP(t, "127.0.0.1:9702")
	serveHTTP(t, "127.0.0.1:9703")

	write := func(name, content string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	reg := []string{"--registry", url}
	if out, errOut, code := sockmesh(t, append([]string{"registry", "put", write("web.yaml", webDoc("198.18.10.1", "127.0.0.1:9701"))}, reg...)...); code != 0 {
		t.Fatalf("registry put: exit %d: %s%s", code, out, errOut)
	}
	// Refused, and nothing written: a bad file, and a clash with what
	// etcd holds (the same VIP and port as web).
	bad := write("bad.yaml", "name: bad\nports: [80]\nbackends: [127.0.0.1:99999]\n")
	if _, errOut, code := sockmesh(t, append([]string{"registry", "put", bad}, reg...)...); code == 0 || !strings.Contains(errOut, bad+":3:") {
		t.Errorf("put of a bad file: exit %d: %q, want its file and line", code, errOut)
	}
	clash := write("clash.yaml", "name: clash\nvip: [198.18.10.1]\nports: [80]\nbackends: [127.0.0.1:9702]\n")
	if _, errOut, code := sockmesh(t, append([]string{"registry", "put", clash}, reg...)...); code == 0 || !strings.Contains(errOut, clash) {
		t.Errorf("put of a clashing file: exit %d: %q, want it refused naming it", code, errOut)
	}
	if out, _, _ := sockmesh(t, append([]string{"registry", "list"}, reg...)...); strings.Contains(out, "bad") || strings.Contains(out, "clash") || !strings.Contains(out, "web") {
		t.Errorf("registry list after refusals:\n%s", out)
	}

	d, paths := meshDaemon(t, dir, cg, "--registry", url)
	pinDir := paths[1]
	waitServed(t, pinDir, "198.18.10.1", 5*time.Second, "127.0.0.1:9701")
	if body, code := curl(t, cg, "http://198.18.10.1/"); body != "backend 127.0.0.1:9701" {
		t.Fatalf("curl through the VIP from etcd: %q (exit %d)", body, code)
	}

	// Changes written to etcd go live: 100 of them, timed.
	c := etcd.Client(t)
	var took []time.Duration
	for i := range 100 {
		backend := []string{"127.0.0.1:9702", "127.0.0.1:9701"}[i%2]
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := c.Put(ctx, "/sockmesh/services/web", webDoc("198.18.10.1", backend)); err != nil {
			t.Fatal(err)
		}
		cancel()
		waitServed(t, pinDir, "198.18.10.1", 2*time.Second, backend)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("etcd put to live in the datapath, 100 changes: median %v, p90 %v, worst %v", took[50], took[90], took[99])

	// etcd dies: traffic keeps flowing, status says stale, a local file
	// still applies.
	etcd.Stop(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep := readStatusJSON(t, paths)
		if rep.Registry != nil && len(rep.Registry.Sources) == 1 && rep.Registry.Sources[0].Stale {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status not stale 5s after etcd died: %+v", rep.Registry)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if body, code := curl(t, cg, "http://198.18.10.1/"); body != "backend 127.0.0.1:9701" {
		t.Errorf("curl with etcd down: %q (exit %d)", body, code)
	}
	putFile("local.yaml", "name: local\nvip: [198.18.10.2]\nports: [80]\nbackends: [127.0.0.1:9703]\n")
	waitServed(t, pinDir, "198.18.10.2", 2*time.Second, "127.0.0.1:9703")

	// A daemon restarted while etcd is down serves the fleet's services
	// it served before (from its state file).
	d.stop(t, syscall.SIGTERM)
	startDaemon(t, filepath.Join(t.TempDir(), "ready"), d.cmd.Args[4:]...) // binary run --ready-file F args...
	waitServed(t, pinDir, "198.18.10.1", 2*time.Second, "127.0.0.1:9701")
	if st := readStatusJSON(t, paths).Registry; st == nil || len(st.Sources) != 1 || !st.Sources[0].Stale || st.Sources[0].Docs != 1 {
		t.Errorf("restarted with etcd down: registry status %+v, want one stale source with one service", st)
	}

	// etcd back: a change is live within a second.
	etcd.Restart(t)
	c = etcd.Client(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "/sockmesh/services/web", webDoc("198.18.10.1", "127.0.0.1:9703")); err != nil {
		t.Fatal(err)
	}
	waitServed(t, pinDir, "198.18.10.1", time.Second, "127.0.0.1:9703")
	t.Logf("after etcd's restart, a change was live in %v", time.Since(start))
	if body, code := curl(t, cg, "http://198.18.10.1/"); body != "backend 127.0.0.1:9703" {
		t.Errorf("curl after etcd came back: %q (exit %d)", body, code)
	}
}

// registry put refuses a file that would take a derived VIP from a
// service already in the registry (it would move on every host).
func TestRegistryPutRefusesDisplacing(t *testing.T) {
	testenv.RequirePrivileged(t)
	etcd := etcdtest.Start(t)
	reg := []string{"--registry", "etcd://" + etcd.Endpoint + "/sockmesh/services/"}
	dir := t.TempDir()
	alpha := filepath.Join(dir, "alpha.yaml")
	if err := os.WriteFile(alpha, []byte("name: alpha\nports: [80]\nbackends: [127.0.0.1:1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := sockmesh(t, append([]string{"registry", "put", alpha}, reg...)...); code != 0 {
		t.Fatalf("put alpha: %s", errOut)
	}
	vips := checkVIPs(t, dir)
	zed := filepath.Join(t.TempDir(), "zed.yaml")
	if err := os.WriteFile(zed, []byte(fmt.Sprintf("name: zed\nvip: [%s]\nports: [80]\nbackends: [127.0.0.1:2]\n", vips["alpha"][0])), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := sockmesh(t, append([]string{"registry", "put", zed}, reg...)...)
	if code == 0 || !strings.Contains(errOut, zed+": vip: service \"alpha\" would lose its VIP") {
		t.Errorf("put of a file taking alpha's VIP: exit %d: %q", code, errOut)
	}
	if out, _, _ := sockmesh(t, append([]string{"registry", "list"}, reg...)...); strings.Contains(out, "zed") {
		t.Errorf("zed was written:\n%s", out)
	}
}

// registry put of backends documents: one for a service not there yet is
// written with a warning; one whose backend claims a getsockname address
// another service's own backend holds, or repeats a backend, is refused,
// nothing written; a service put again beside such a document is not.
func TestRegistryPutBackendsDocuments(t *testing.T) {
	testenv.RequirePrivileged(t)
	etcd := etcdtest.Start(t)
	reg := []string{"--registry", "etcd://" + etcd.Endpoint + "/sockmesh/services/", "--host", "h1"}
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	out, errOut, code := sockmesh(t, append([]string{"registry", "put", write("early.yaml", "backends_for: later\nbackends: [127.0.0.1:9]\n")}, reg...)...)
	if code != 0 || !strings.Contains(out, "later/backends/h1/early") || !strings.Contains(errOut, `warning: `) || !strings.Contains(errOut, `no service "later" is served`) {
		t.Errorf("put of a document for a service not there: exit %d: %q %q", code, out, errOut)
	}
	for _, svc := range []string{
		"name: s1\nvip: 198.18.0.5\nports: [80]\nlocal_name: true\nbackends: [127.0.0.1:1]\n",
		"name: s2\nvip: 198.18.0.6\nports: [80]\nlocal_name: true\nbackends: [127.0.0.2:1]\n",
	} {
		if _, errOut, code := sockmesh(t, append([]string{"registry", "put", write("svc.yaml", svc)}, reg...)...); code != 0 {
			t.Fatalf("put: %s", errOut)
		}
	}
	takes := write("takes.yaml", "backends_for: s1\nbackends: [127.0.0.2:1]\n")
	if _, errOut, code := sockmesh(t, append([]string{"registry", "put", takes}, reg...)...); code == 0 || !strings.Contains(errOut, takes+`:1:15: backends: left out`) || !strings.Contains(errOut, `already reports service "s2" to getsockname`) {
		t.Errorf("put of a document that cannot join (s2 holds the address): exit %d: %q", code, errOut)
	}
	dup := write("dup.yaml", "backends_for: s1\nbackends: [127.0.0.1:1]\n")
	if _, errOut, code := sockmesh(t, append([]string{"registry", "put", dup}, reg...)...); code == 0 || !strings.Contains(errOut, dup+":2:12: backends[0]: 127.0.0.1:1 is already a backend") {
		t.Errorf("put of a document repeating a backend: exit %d: %q", code, errOut)
	}
	if out, _, _ := sockmesh(t, append([]string{"registry", "list"}, reg...)...); strings.Contains(out, "takes") || strings.Contains(out, "dup") {
		t.Errorf("a refused document was written:\n%s", out)
	}
	// The document written anyway (by etcdctl, say): s2, whose own
	// backend wins, can still be put again.
	c := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "/sockmesh/services/s1/backends/h2/takes", "backends_for: s1\nbackends: [127.0.0.2:1]\n"); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := sockmesh(t, append([]string{"registry", "put", write("s2.yaml", "name: s2\nvip: 198.18.0.6\nports: [80]\nlocal_name: true\npolicy: round-robin\nbackends: [127.0.0.2:1]\n")}, reg...)...); code != 0 {
		t.Errorf("put of s2 again beside a document claiming its address: %s", errOut)
	}
	// Deleting s1 says its backends documents stay.
	if _, errOut, code := sockmesh(t, append([]string{"registry", "delete", "s1"}, reg[:2]...)...); code != 0 || !strings.Contains(errOut, "warning: 1 backends documents for s1 stay") {
		t.Errorf("delete s1: exit %d: %q", code, errOut)
	}
}
