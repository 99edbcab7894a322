package registry

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sockmesh/internal/testenv"
	"sockmesh/lb"
)

// openDatapath loads the real programs on a private bpffs and attaches
// them to a throwaway cgroup.
func openDatapath(t testing.TB) (*lb.Datapath, *testenv.Cgroup) {
	t.Helper()
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	pinDir := filepath.Join(testenv.BPFFS(t), "sockmesh")
	d, err := lb.Open(lb.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := lb.Remove(pinDir); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
	})
	if err := d.Attach(cg.Path); err != nil {
		t.Fatal(err)
	}
	return d, cg
}

// startHTTP serves "backend <addr>" on a loopback port.
func startHTTP(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "backend %s\n", ap)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ap
}

// TestEndToEnd drives the real datapath from real files: drop a file and
// curl its VIP; mv a changed file over it; break it; delete it.
func TestEndToEnd(t *testing.T) {
	d, cg := openDatapath(t)
	b1 := startHTTP(t, "127.0.0.1:0")
	b2 := startHTTP(t, "127.0.0.1:0")
	dir := tempDir(t)
	r := startRegistry(t, dir, d)

	// Drop a file: its derived VIP answers.
	put(t, dir, "web.yaml", svcYAML("web", b1.String()))
	s := waitFor(t, r, within, "web live", hasBackends("web", b1.String()))
	web, _ := s.Lookup("web")
	if len(web.VIPs) != 2 {
		t.Fatalf("web VIPs %v", web.VIPs)
	}
	urls := []string{
		fmt.Sprintf("http://%s/", web.VIPs[0]),
		fmt.Sprintf("http://[%s]/", web.VIPs[1]),
	}
	for _, u := range urls {
		if body, code := cg.Curl(t, "", u); body != "backend "+b1.String() {
			t.Fatalf("curl %s: %q (exit %d)", u, body, code)
		}
	}

	// mv a changed file over it: the new backend set is used.
	put(t, dir, "web.yaml", svcYAML("web", b2.String()))
	waitFor(t, r, within, "web moved to b2", hasBackends("web", b2.String()))
	for _, u := range urls {
		if body, code := cg.Curl(t, "", u); body != "backend "+b2.String() {
			t.Fatalf("curl %s after mv: %q (exit %d)", u, body, code)
		}
	}

	// Break the file: the old set still serves and the error is reported.
	put(t, dir, "web.yaml", "name: web\nports: [80]\nbackends: [127.0.0.1:http]\n")
	s = waitFor(t, r, time.Second, "error reported", func(s *Snapshot) bool { return len(s.Errors) == 1 })
	if msg := s.Errors[0].Error(); !strings.Contains(msg, "web.yaml:3:12: backends[0]: \"127.0.0.1:http\" is not an IP address") {
		t.Fatalf("error %q", msg)
	}
	if body, code := cg.Curl(t, "", urls[0]); body != "backend "+b2.String() {
		t.Fatalf("curl with a broken file: %q (exit %d)", body, code)
	}
	if got := d.Services(); len(got) != 2 || got[0].Backends[0].Addr != b2 {
		t.Fatalf("datapath serves %+v", got)
	}

	// Delete it: a connect to the VIP fails fast.
	if err := os.Remove(filepath.Join(dir, "web.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "web removed", func(s *Snapshot) bool { return len(s.Services) == 0 })
	start := time.Now()
	_, code := cg.Curl(t, "", urls[0])
	if code != 7 { // curl: failed to connect
		t.Fatalf("curl after delete: exit %d, want 7 (could not connect)", code)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("connect after delete took %v: it should fail at once", took)
	}
	if got := d.Services(); len(got) != 0 {
		t.Fatalf("datapath still serves %+v", got)
	}
}
