package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"sockmesh/internal/hostnet"
	"sockmesh/internal/testenv"
	"sockmesh/lb"
)

// daemonProc is a `sockmesh run` started by a test.
type daemonProc struct {
	cmd    *exec.Cmd
	exited chan error
	logs   *bytes.Buffer
}

// startDaemon starts `sockmesh run args...` and waits for its ready file.
// The test's end kills it if it still runs.
func startDaemon(t testing.TB, ready string, args ...string) *daemonProc {
	t.Helper()
	return startDaemonIn(t, "", ready, args...)
}

// startDaemonIn is startDaemon in the network namespace at netns (entered
// with nsenter, which execs the daemon: its pid is the daemon's), or in
// this one when netns is empty.
func startDaemonIn(t testing.TB, netns, ready string, args ...string) *daemonProc {
	t.Helper()
	d := &daemonProc{exited: make(chan error, 1), logs: &bytes.Buffer{}}
	argv := append([]string{binary, "run", "--ready-file", ready}, args...)
	if netns != "" {
		argv = append([]string{"nsenter", "--net=" + netns}, argv...)
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("daemon %d log:\n%s", d.cmd.Process.Pid, d.logs)
		}
	})
	waitFile(t, ready, d.exited)
	return d
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// stop sends sig and waits for the daemon to exit.
func (d *daemonProc) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	d.cmd.Process.Signal(sig)
	select {
	case err := <-d.exited:
		var ee *exec.ExitError
		if err != nil && !(sig == syscall.SIGKILL && errors.As(err, &ee)) {
			t.Fatalf("daemon exit after %v: %v\n%s", sig, err, d.logs)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon did not stop on %v", sig)
	}
}

// meshCurl runs `sockmesh exec -- curl url` from this process, which is
// in no mesh cgroup, as a user would from their shell.
func meshCurl(t *testing.T, paths []string, url string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := append(append([]string{"exec"}, paths...), "--", "curl", "-sS", "--max-time", "3", url)
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func readStatusJSON(t *testing.T, paths []string) statusReport {
	t.Helper()
	out, errOut, code := sockmesh(t, append([]string{"status", "-o", "json"}, paths...)...)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	return rep
}

// vipsOf lists a service's VIPs as status reports them.
func vipsOf(rep statusReport, name string) []string {
	var out []string
	for _, s := range rep.Services {
		if s.Name == name && !slices.Contains(out, s.VIP) {
			out = append(out, s.VIP)
		}
	}
	slices.Sort(out)
	return out
}

func ourRoutes(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: 0, Protocol: hostnet.Protocol}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			out = append(out, r.Dst.String())
		}
	}
	slices.Sort(out)
	return out
}

// attachedPrograms counts the programs attached to a cgroup at the hooks
// sockmesh uses.
func attachedPrograms(t *testing.T, cgroup string) int {
	t.Helper()
	n := 0
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCgroupInet4GetPeername} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: mustOpen(t, cgroup), Attach: at})
		if err != nil {
			t.Fatalf("query %v programs of %s: %v", at, cgroup, err)
		}
		n += len(res.Programs)
	}
	return n
}

func mustOpen(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// TestDaemonLifecycle is the daemon as a user runs it: start, drop a file,
// curl by name through `sockmesh exec`, see the connection in status,
// kill -9 and keep curling, start again with the same VIPs, and down
// leaves nothing behind.
func TestDaemonLifecycle(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	t.Cleanup(func() { os.Remove(filepath.Join(cg.Path, defaultExecCgroup)) }) // if down did not run
	pinDir := filepath.Join(testenv.BPFFS(t), "sockmesh")
	stateDir := t.TempDir()
	paths := []string{"--pin-dir", pinDir, "--state-dir", stateDir}
	dir := filepath.Join(t.TempDir(), "services.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(name, content string) {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	put("alpha.yaml", "name: alpha\nports: [80]\nbackends: [127.0.0.1:9301]\n")
	serveHTTP(t, "127.0.0.1:9301")
	serveHTTP(t, "127.0.0.1:9302")
	serveHTTP(t, "127.0.0.2:9302")
	upstream := startUpstream(t, "127.0.0.9:53")

	// Sub-ranges of the test namespace's unreachable ranges, so the daemon
	// installs routes of its own while the namespace's stay.
	run := append([]string{"--services", dir, "--cgroup", cg.Path, "--dns-upstream", upstream, "--metrics-listen", "127.0.0.1:9617",
		"--vip-range4", "198.19.0.0/16", "--vip-range6", "fd6d:6573:6800:0:1::/80"}, paths...)
	ready := filepath.Join(t.TempDir(), "ready")
	d := startDaemon(t, ready, run...)
	if got, want := ourRoutes(t), []string{"198.19.0.0/16", "fd6d:6573:6800:0:1::/80"}; !slices.Equal(got, want) {
		t.Fatalf("routes of ours: %v, want %v", got, want)
	}

	// A second daemon on the same pins is refused, in one line.
	_, errOut, code := sockmesh(t, append([]string{"run", "--ready-file", filepath.Join(t.TempDir(), "r2")}, run...)...)
	if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "already serves "+pinDir) {
		t.Fatalf("second daemon: exit %d: %q", code, errOut)
	}
	// So is down while it runs.
	if _, errOut, code := sockmesh(t, append([]string{"down"}, paths...)...); code == 0 || !strings.Contains(errOut, "stop it first") {
		t.Fatalf("down while running: exit %d: %q", code, errOut)
	}

	// A file dropped while it runs, reached by name from outside the mesh
	// cgroup through sockmesh exec.
	put("beta.yaml", "name: beta\nports: [8080]\nbackends: [127.0.0.1:9302, 127.0.0.2:9302]\n")
	deadline := time.Now().Add(3 * time.Second)
	seen := map[string]int{}
	for len(seen) < 2 {
		body, err := meshCurl(t, paths, "http://beta.mesh.internal:8080/")
		if err == nil {
			seen[body]++
		} else if time.Now().After(deadline) {
			t.Fatalf("sockmesh exec -- curl http://beta.mesh.internal:8080/: %v: %s", err, body)
		}
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("only reached %v", seen)
		}
	}
	for body := range seen {
		if body != "backend 127.0.0.1:9302" && body != "backend 127.0.0.2:9302" {
			t.Fatalf("beta answered %q", body)
		}
	}
	curls := seen["backend 127.0.0.1:9302"] + seen["backend 127.0.0.2:9302"]

	// exec joins sockmesh-exec from outside the mesh, and stays where it
	// is from inside it.
	cgroupOf := func(cmd *exec.Cmd) string {
		t.Helper()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", cmd.Args, err, out)
		}
		for line := range strings.Lines(string(out)) {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
				return rest // the cgroup v2 line (hybrid hosts list v1 ones too)
			}
		}
		t.Fatalf("no cgroup v2 line in %q", out)
		return ""
	}
	execArgs := append(append([]string{"exec"}, paths...), "--", "cat", "/proc/self/cgroup")
	rel := "/" + filepath.Base(cg.Path)
	if got := cgroupOf(exec.Command(binary, execArgs...)); got != rel+"/"+defaultExecCgroup {
		t.Errorf("exec from outside the mesh ran in %s, want %s/%s", got, rel, defaultExecCgroup)
	}
	if got := cgroupOf(cg.Command(context.Background(), t, binary, execArgs...)); got != rel {
		t.Errorf("exec from inside the mesh ran in %s, want %s (where it was)", got, rel)
	}

	// status counts what curl did.
	rep := readStatusJSON(t, paths)
	if !rep.Daemon.Running || rep.Daemon.PID != d.cmd.Process.Pid || !rep.Datapath.Pinned || rep.Datapath.Programs == 0 {
		t.Fatalf("status: %+v", rep)
	}
	var conns, backendConns uint64
	for _, s := range rep.Services {
		if s.Name != "beta" {
			continue
		}
		conns += s.Connections
		for _, b := range s.Backends {
			backendConns += b.Connections
		}
	}
	// curl may try both families (happy eyeballs): at least one connect
	// per request, and the backends add up to the service.
	if conns < uint64(curls) || backendConns != conns {
		t.Fatalf("status counts beta %d connections, backends %d, after %d curls", conns, backendConns, curls)
	}
	// The metrics count the same connections.
	resp, err := http.Get("http://127.0.0.1:9617/metrics")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var metricConns float64
	for line := range strings.Lines(string(page)) {
		if strings.HasPrefix(line, "sockmesh_service_translations_total{") && strings.Contains(line, `service="beta"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			metricConns += v
		}
	}
	if metricConns < float64(conns) {
		t.Fatalf("metrics count %v beta translations, status %d:\n%s", metricConns, conns, page)
	}
	vipsBefore := vipsOf(rep, "beta")
	if len(vipsBefore) != 2 {
		t.Fatalf("beta VIPs %v", vipsBefore)
	}
	v4 := vipsBefore[0]
	if !netip.MustParseAddr(v4).Is4() {
		v4 = vipsBefore[1]
	}

	// A broken file: named in status with file and line, the last good
	// version served.
	put("alpha.yaml", "name: alpha\nports: [80]\nbackends: [127.0.0.1:99999]\n")
	deadline = time.Now().Add(3 * time.Second)
	for {
		rep = readStatusJSON(t, paths)
		if rep.Registry != nil && len(rep.Registry.Errors) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status shows no error for the broken file: %+v", rep.Registry)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if e := rep.Registry.Errors[0]; e.File != filepath.Join(dir, "alpha.yaml") || e.Line != 3 || e.Field != "backends[0]" {
		t.Fatalf("status error %+v", e)
	}
	table, _, _ := sockmesh(t, append([]string{"status"}, paths...)...)
	if !strings.Contains(table, filepath.Join(dir, "alpha.yaml")+":3:12: backends[0]") || !strings.Contains(table, "alpha (stale)") {
		t.Fatalf("status table lacks the error or the stale service:\n%s", table)
	}

	// kill -9: traffic keeps flowing (by VIP: the DNS stub died with it),
	// and status says the daemon is gone.
	d.stop(t, syscall.SIGKILL)
	for range 5 {
		if body, code := curl(t, cg, "http://"+v4+":8080/"); !strings.HasPrefix(body, "backend 127.0.0.") {
			t.Fatalf("curl beta's VIP after kill -9: %q (exit %d)", body, code)
		}
	}
	rep = readStatusJSON(t, paths)
	if rep.Daemon.Running || !slices.Equal(vipsOf(rep, "beta"), vipsBefore) {
		t.Fatalf("status after kill -9: running %v, beta %v", rep.Daemon.Running, vipsOf(rep, "beta"))
	}
	if out, _, _ := sockmesh(t, append([]string{"status"}, paths...)...); !strings.Contains(out, "not running") {
		t.Fatalf("status table after kill -9:\n%s", out)
	}

	// Start again: same VIPs, the broken file's last good version still
	// served, names resolve again.
	// (kill -9 left the first ready file behind: wait on a new one.)
	ready = filepath.Join(t.TempDir(), "ready")
	d = startDaemon(t, ready, run...)
	rep = readStatusJSON(t, paths)
	if !slices.Equal(vipsOf(rep, "beta"), vipsBefore) {
		t.Fatalf("beta VIPs after restart %v, want %v", vipsOf(rep, "beta"), vipsBefore)
	}
	var alphaStale bool
	for _, s := range rep.Services {
		alphaStale = alphaStale || s.Name == "alpha" && s.Stale
	}
	if !alphaStale {
		t.Fatalf("alpha (broken file) not served stale after restart: %+v", rep.Services)
	}
	if body, err := meshCurl(t, paths, "http://alpha.mesh.internal/"); err != nil || body != "backend 127.0.0.1:9301" {
		t.Fatalf("alpha after restart: %v: %s", err, body)
	}

	// SIGHUP re-reads; the daemon keeps serving.
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(3 * time.Second)
	for !strings.Contains(d.logs.String(), "reloading") {
		if time.Now().After(deadline) {
			t.Fatal("no reload after SIGHUP")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if body, err := meshCurl(t, paths, "http://beta.mesh.internal:8080/"); err != nil || !strings.HasPrefix(body, "backend ") {
		t.Fatalf("beta after SIGHUP: %v: %s", err, body)
	}

	// SIGTERM, then down: nothing is left.
	d.stop(t, syscall.SIGTERM)
	if _, err := os.Stat(ready); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ready file left after the daemon stopped: %v", err)
	}
	// Another instance's route (its own pin directory) is not ours to take.
	other := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(198, 51, 100, 0), Mask: net.CIDRMask(24, 32)}, Type: syscall.RTN_UNREACHABLE, Protocol: hostnet.Protocol}
	if err := netlink.RouteAdd(other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.RouteDel(other) })
	out, errOut, code := sockmesh(t, append([]string{"down"}, paths...)...)
	if code != 0 {
		t.Fatalf("down: exit %d: %s%s", code, out, errOut)
	}
	if r := ourRoutes(t); !slices.Equal(r, []string{"198.51.100.0/24"}) {
		t.Errorf("routes after down: %v, want only the other instance's", r)
	}
	netlink.RouteDel(other)
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after down: %v", err)
	}
	if n := attachedPrograms(t, cg.Path); n != 0 {
		t.Errorf("%d programs still attached after down", n)
	}
	if _, err := os.Stat(filepath.Join(cg.Path, defaultExecCgroup)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("exec cgroup left after down: %v", err)
	}
	if entries, _ := os.ReadDir(stateDir); len(entries) != 0 {
		t.Errorf("state left after down: %v", entries)
	}
	// And with the programs gone, a VIP goes nowhere (the namespace's
	// unreachable route) instead of reaching a backend.
	if body, code := curl(t, cg, "http://"+v4+":8080/"); code == 0 {
		t.Errorf("VIP still answers after down: %q", body)
	}
}

// TestCLIErrors: every error a user can hit is one line on stderr and a
// non-zero exit, and changes nothing.
func TestCLIErrors(t *testing.T) {
	empty := []string{"--pin-dir", filepath.Join(t.TempDir(), "pins"), "--state-dir", t.TempDir()}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"status", "--frobnicate"}, "unknown flag: --frobnicate"},
		{append([]string{"status", "-o", "yaml"}, empty...), `parse -o: "yaml" is not table or json`},
		{[]string{"exec", "curl", "http://hello.mesh.internal/"}, "put the command after --"},
		{[]string{"exec", "--"}, "requires at least 1 arg"},
		{append([]string{"exec"}, append(empty, "--", "true")...), "no datapath is pinned"},
		{[]string{"version", "extra"}, `unknown command "extra"`},
		{append(safeRun(t), "--metrics-listen", "localhost"), `parse --metrics-listen: "localhost" is not address:port or off`},
		{append(safeRun(t), "--vip-range4", "198.18.0.0"), "parse --vip-range4"},
		{append(safeRun(t), "--vip-range4", "fd00::/64"), "IPv4 range fd00::/64 must be an IPv4 prefix"},
		{append(safeRun(t), "--max-backends", "-1"), "parse --max-backends: -1 is not a map size"},
		{append(safeRun(t), "--exclude-cgroup", "no-such-cgroup-here"), "parse --exclude-cgroup no-such-cgroup-here: stat cgroup"},
		{append(safeRun(t), "--exclude-cgroup", "/tmp"), "parse --exclude-cgroup /tmp: cgroup /tmp: not under the cgroup v2 mount"},
		{append(safeRun(t), "--exclude-uid", "1,2,3,4,5,6,7,8,9"), "parse --exclude-uid: 9 given, at most 8"},
		{append(safeRun(t), "--publish", t.TempDir()), "parse --publish: needs --registry"},
		{append(safeRun(t), "--registry", "etcd://127.0.0.1:1/x/", "--publish", "/nonexistent-dir"), "parse --publish: /nonexistent-dir is not a directory"},
		{append(safeRun(t), "--registry", "http://127.0.0.1:2379/x/"), "parse --registry"},
		{append(safeRun(t), "--registry", "etcd://127.0.0.1:1/x/", "--registry-user", "root"), "parse --registry-user: $SOCKMESH_REGISTRY_PASSWORD is empty"},
		{append(safeRun(t), "--services", "off"), "parse --services: off needs --registry"},
		{[]string{"registry", "list"}, "parse --registry: required"},
	} {
		_, errOut, code := sockmesh(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("sockmesh %s: exit %d, stderr %q: want one line with %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}

// TestRunRefusesOverlappingRange: a VIP range that overlaps an address of
// the host is refused before anything is attached or pinned.
func TestRunRefusesOverlappingRange(t *testing.T) {
	testenv.RequirePrivileged(t)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("198.51.100.1/24")
	if err := netlink.AddrAdd(lo, addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.AddrDel(lo, addr) })
	args := append(safeRun(t), "--vip-range4", "198.51.100.0/24")
	_, errOut, code := sockmesh(t, args...)
	want := "VIP range 198.51.100.0/24 overlaps address 198.51.100.1/24 on lo"
	if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "--vip-range4") {
		t.Fatalf("exit %d, stderr %q: want one line with %q and a hint", code, errOut, want)
	}
	if pins := args[4]; lb.IsPinned(pins) {
		t.Fatalf("pinned %s although refused", pins)
	}
}

// TestDaemonNotifiesSystemd: under systemd (NOTIFY_SOCKET set) the daemon
// says READY=1 once it serves, and STOPPING=1 on SIGTERM, as Type=notify
// in packaging/sockmesh.service expects.
func TestDaemonNotifiesSystemd(t *testing.T) {
	testenv.RequirePrivileged(t)
	unit, err := os.ReadFile("../../packaging/sockmesh.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStart=/usr/local/bin/sockmesh run", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !strings.Contains(string(unit), "\n"+want) {
			t.Errorf("unit file lacks %q", want)
		}
	}
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cg := testenv.NewCgroup(t)
	pinDir := filepath.Join(testenv.BPFFS(t), "sockmesh")
	stateDir := t.TempDir()
	t.Cleanup(func() { execOut(binary, "down", "--pin-dir", pinDir, "--state-dir", stateDir) })
	cmd := exec.Command(binary, "run", "--services", t.TempDir(), "--cgroup", cg.Path, "--pin-dir", pinDir, "--state-dir", stateDir,
		"--dns-listen", "off")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := conn.Read(buf)
		if err != nil || !strings.Contains(string(buf[:n]), want) {
			t.Fatalf("notify socket: %q, %v; want %s\n%s", buf[:n], err, want, &logs)
		}
	}
	read("READY=1")
	if rep := readStatusJSON(t, []string{"--pin-dir", pinDir, "--state-dir", stateDir}); !rep.Daemon.Running || rep.Daemon.PID != cmd.Process.Pid {
		t.Fatalf("not running by status when READY=1 came: %+v", rep.Daemon)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	read("STOPPING=1")
}
