package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sockmesh/internal/testenv"
	"sockmesh/lb"
)

var binary string

func TestMain(m *testing.M) {
	// Build the real binary once; the tests run it as users do.
	dir, err := os.MkdirTemp("", "sockmesh-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "sockmesh")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sockmesh: %v\n%s", err, out)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	testenv.Main(m, map[string]testenv.Helper{
		"id-server":   helperIDServer,
		"dial-log":    helperDialLog,
		"dns-client":  helperDNSClient,
		"hold-tcp":    helperHoldTCP,
		"http-server": helperHTTPServer,
	})
}

// sockmesh runs the binary and returns stdout, stderr and the exit code.
func sockmesh(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), 0
}

func TestCheckExamples(t *testing.T) {
	out, errOut, code := sockmesh(t, "check", "../../services.d")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"SERVICE", "hello", "198.18.0.80", "127.0.0.1:8083 (weight 2)", "(derived)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestCheckErrors(t *testing.T) {
	dir := t.TempDir()
	bad := "name: web\nports: [80]\nbackends: [10.0.0.1:99999]\n"
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := sockmesh(t, "check", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want := dir + `/web.yaml:3:12: backends[0]: "10.0.0.1:99999" is not an IP address with optional port`
	if !strings.Contains(errOut, want) {
		t.Fatalf("stderr lacks %q:\n%s", want, errOut)
	}
	out, _, code := sockmesh(t, "check", "-o", "json", dir)
	if code != 1 {
		t.Fatalf("json: exit %d, want 1", code)
	}
	var js checkJSON
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	if len(js.Errors) != 1 || js.Errors[0].Line != 3 || js.Errors[0].Field != "backends[0]" {
		t.Fatalf("json errors %+v", js.Errors)
	}
	if _, errOut, code := sockmesh(t, "check", filepath.Join(dir, "missing")); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("missing dir: exit %d: %s", code, errOut)
	}
}

// TestRunServesExamples is the README's run command on a copy of the
// shipped services.d/: the example VIPs answer, a file dropped while it
// runs is served, and after SIGTERM the pinned datapath keeps serving.
func TestRunServesExamples(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	pinDir := filepath.Join(testenv.BPFFS(t), "sockmesh")
	t.Cleanup(func() {
		if err := lb.Remove(pinDir); err != nil {
			t.Errorf("remove datapath: %v", err)
		}
	})
	dir := filepath.Join(t.TempDir(), "services.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	examples, _ := filepath.Glob("../../services.d/*.yaml")
	for _, p := range examples {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v4only := "name: v4only\nvip: 198.18.0.77\nports: [80]\nbackends: [127.0.0.1:9090]\n"
	if err := os.WriteFile(filepath.Join(dir, "v4only.yaml"), []byte(v4only), 0o644); err != nil {
		t.Fatal(err)
	}
	// The example backends, as make run serves them.
	startDemoBackends(t, dir)

	// The host's resolver, for names outside the zone.
	upstream := startUpstream(t, "127.0.0.9:53")

	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	daemon := startDaemon(t, ready, "--services", dir, "--cgroup", cg.Path, "--pin-dir", pinDir,
		"--state-dir", t.TempDir(), "--dns-upstream", upstream)

	vips := checkVIPs(t, dir)
	helloBackends := map[string]bool{"backend 127.0.0.1:8081": true, "backend 127.0.0.2:8081": true}
	if body, code := curl(t, cg, "http://"+vips["hello"][0]+"/"); !helloBackends[body] {
		t.Fatalf("curl hello's VIP: %q (exit %d)", body, code)
	}
	curlOK(t, cg, "http://198.18.0.80/", "127.0.0.1:8084")
	curlOK(t, cg, "http://[fd6d:6573:6800::80]:443/", "127.0.0.1:8444")

	// By name, through the system resolver (glibc reading a resolv.conf
	// that `sockmesh resolver` wrote), as an application finds services.
	snippet, errOut, code := sockmesh(t, "resolver", "resolv.conf")
	if code != 0 {
		t.Fatalf("resolver: %s", errOut)
	}
	resolvConf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte(snippet), 0o644); err != nil {
		t.Fatal(err)
	}
	getent := func(db, name string) string {
		t.Helper()
		out, err := cg.CommandResolving(ctx, t, resolvConf, "getent", db, name).CombinedOutput()
		if err != nil {
			t.Fatalf("getent %s %s: %v: %s", db, name, err, out)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	// getent hosts asks AAAA first, then A when there is none (NODATA).
	if got, want := getent("hosts", "web.mesh.internal"), vips["web"][1]+" web.mesh.internal"; got != want {
		t.Errorf("getent hosts web.mesh.internal = %q, want %q", got, want)
	}
	if got, want := getent("hosts", "v4only.mesh.internal"), "198.18.0.77 v4only.mesh.internal"; got != want {
		t.Errorf("getent hosts v4only.mesh.internal = %q, want %q", got, want)
	}
	if got, want := getent("hosts", "api.mesh.internal"), "fd6d:6573:6800::80 api.mesh.internal"; got != want {
		t.Errorf("getent hosts api.mesh.internal = %q, want %q (AAAA first)", got, want)
	}
	if got, want := getent("hosts", "outside.test"), "192.0.2.1 outside.test"; got != want {
		t.Errorf("getent hosts outside.test = %q, want %q from the upstream", got, want)
	}
	if body, code := cg.Curl(t, resolvConf, "http://hello.mesh.internal/"); !helloBackends[body] {
		t.Errorf("curl http://hello.mesh.internal/: %q (exit %d)", body, code)
	}
	if body, code := cg.Curl(t, resolvConf, "http://web.mesh.internal/"); body != "backend 127.0.0.1:8082" && body != "backend 127.0.0.1:8083" {
		t.Errorf("curl http://web.mesh.internal/: %q (exit %d)", body, code)
	}
	if body, code := cg.Curl(t, resolvConf, "http://api.mesh.internal:443/"); body != "backend 127.0.0.1:8444" {
		t.Errorf("curl http://api.mesh.internal:443/: %q (exit %d)", body, code)
	}

	// A file dropped while it runs: the moment its name resolves, it routes.
	tmp := filepath.Join(dir, ".extra.yaml")
	if err := os.WriteFile(tmp, []byte("name: extra\nports: [80]\nbackends: [127.0.0.1:9090]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "extra.yaml")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		out, _ := exec.Command("dig", "@127.0.0.153", "+short", "extra.mesh.internal", "A").Output()
		if len(strings.TrimSpace(string(out))) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new file's name does not resolve after 2s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if body, code := cg.Curl(t, resolvConf, "http://extra.mesh.internal/"); body != "backend 127.0.0.1:9090" {
		t.Fatalf("curl by name right after it resolved: %q (exit %d)", body, code)
	}
	vips = checkVIPs(t, dir)

	// SIGTERM: the daemon exits cleanly and traffic keeps flowing.
	daemon.stop(t, syscall.SIGTERM)
	curlOK(t, cg, "http://"+vips["extra"][0]+"/", "127.0.0.1:9090")
}

// startUpstream serves outside.test. A 192.0.2.1 on addr (UDP and TCP),
// standing in for the host's resolver, and returns addr.
func startUpstream(t *testing.T, addr string) string {
	t.Helper()
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Name == "outside.test." && q.Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		} else if q.Qtype != dns.TypeAAAA || q.Name != "outside.test." {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: addr, Net: network, Handler: mux}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		errs := make(chan error, 1)
		go func() { errs <- srv.ListenAndServe() }()
		select {
		case <-started:
		case err := <-errs:
			t.Fatalf("start upstream DNS on %s/%s: %v", addr, network, err)
		}
		t.Cleanup(func() { srv.Shutdown() })
	}
	return addr
}

// startDemoBackends runs `sockmesh demo-backends dir` until the test ends
// and waits until its backends answer.
func startDemoBackends(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command(binary, "demo-backends", dir)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Errorf("demo backends: %v\n%s", err, &logs)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.2:8081/")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("demo backends exited: %v\n%s", err, &logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo backends not up after 10s: %v\n%s", err, &logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func serveHTTP(t *testing.T, addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "backend %s\n", addr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func waitFile(t testing.TB, path string, exited <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("daemon exited before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon not ready after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkVIPs asks `sockmesh check -o json` for each service's VIPs (IPv4
// first).
func checkVIPs(t *testing.T, dir string) map[string][]string {
	t.Helper()
	out, errOut, code := sockmesh(t, "check", "-o", "json", dir)
	if code != 0 {
		t.Fatalf("check: exit %d: %s", code, errOut)
	}
	var js checkJSON
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatal(err)
	}
	vips := map[string][]string{}
	for _, s := range js.Services {
		vips[s.Name] = s.VIPs
	}
	return vips
}

func curl(t *testing.T, cg *testenv.Cgroup, url string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := cg.Command(ctx, t, "curl", "-sS", "--max-time", "3", url).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), 0
}

func curlOK(t *testing.T, cg *testenv.Cgroup, url, backend string) {
	t.Helper()
	if body, code := curl(t, cg, url); body != "backend "+backend {
		t.Fatalf("curl %s: %q (exit %d), want backend %s", url, body, code, backend)
	}
}
