package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sockmesh/internal/testenv"
)

// meshDaemon starts a daemon on dir for cg with its own pins and state,
// no routes of its own (the test namespace routes the VIP ranges nowhere)
// and no DNS. It returns the pin and state flags for other commands.
func meshDaemon(t *testing.T, dir string, cg *testenv.Cgroup, extra ...string) (*daemonProc, []string) {
	t.Helper()
	pinDir := filepath.Join(testenv.BPFFS(t), "sockmesh")
	paths := []string{"--pin-dir", pinDir, "--state-dir", t.TempDir()}
	args := append([]string{"--services", dir, "--cgroup", cg.Path, "--no-routes", "--dns-listen", "off"}, paths...)
	d := startDaemon(t, filepath.Join(t.TempDir(), "ready"), append(args, extra...)...)
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop(t, syscall.SIGTERM)
		}
		if _, errOut, code := sockmesh(t, append([]string{"down"}, paths...)...); code != 0 {
			t.Errorf("down: %s", errOut)
		}
	})
	return d, paths
}

// servicesDir makes a services directory; the returned put replaces a
// file in it atomically, as users are told to.
func servicesDir(t *testing.T) (string, func(name, content string)) {
	dir := filepath.Join(t.TempDir(), "services.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, func(name, content string) {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// backendProc is an id-server process: a backend the test can kill.
type backendProc struct {
	addr string
	cmd  *exec.Cmd
	done chan error
}

// startBackend starts an id-server process on addr (outside the mesh
// cgroup) and waits until it accepts.
func startBackend(t *testing.T, addr string) *backendProc {
	t.Helper()
	b := &backendProc{addr: addr, done: make(chan error, 1)}
	b.cmd = testenv.HelperOutside(context.Background(), "id-server", addr)
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	t.Cleanup(b.kill)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s not up: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kill ends the backend process with SIGKILL (once).
func (b *backendProc) kill() {
	if b.cmd.ProcessState != nil {
		return
	}
	b.cmd.Process.Kill()
	<-b.done
}

type dialEvent struct {
	At      int64  `json:"at"` // unix ns, start of the connect
	Backend string `json:"backend,omitempty"`
	Err     string `json:"err,omitempty"`
}

// Kill a backend process: within the fall threshold it stops getting new
// connections, no connect fails after that, and once it is back it gets
// connections again after the rise threshold.
func TestHealthKillBackend(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	dir, put := servicesDir(t)
	const (
		interval = 100 * time.Millisecond
		timeout  = 100 * time.Millisecond
		fall     = 2
		rise     = 2
	)
	put("web.yaml", fmt.Sprintf(`name: web
vip: [198.18.9.1]
ports: [80]
health: {type: tcp, interval: %s, timeout: %s, fall: %d, rise: %d}
backends: [127.0.0.1:9501, 127.0.0.1:9502, 127.0.0.1:9503]
`, interval, timeout, fall, rise))
	victim := startBackend(t, "127.0.0.1:9502")
	startBackend(t, "127.0.0.1:9501")
	startBackend(t, "127.0.0.1:9503")
	_, paths := meshDaemon(t, dir, cg)
	waitHealth(t, paths, "web", 3, "up")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := cg.Helper(ctx, t, "dial-log", "198.18.9.1:80", "4s", "5ms")
	var out strings.Builder
	client.Stdout = &out
	client.Stderr = os.Stderr
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	killedAt := time.Now()
	victim.kill()
	time.Sleep(1500 * time.Millisecond)
	startBackend(t, victim.addr)
	restartedAt := time.Now() // accepting again
	if err := client.Wait(); err != nil {
		t.Fatalf("client: %v", err)
	}

	var events []dialEvent
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e dialEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("client output %q: %v", line, err)
		}
		events = append(events, e)
	}
	var lastFail, firstBack time.Time
	failures, afterDetection, okAfter := 0, 0, 0
	bound := killedAt.Add(fall*interval + timeout + 300*time.Millisecond)
	for _, e := range events {
		at := time.Unix(0, e.At)
		switch {
		case e.Err != "":
			failures++
			lastFail = at
			if at.Before(killedAt) || at.After(bound) {
				afterDetection++
				t.Errorf("connect at kill%+v failed: %s", at.Sub(killedAt).Round(time.Millisecond), e.Err)
			}
		case at.After(bound) && at.Before(restartedAt):
			okAfter++
			if e.Backend == victim.addr {
				t.Errorf("connect at kill%+v reached the killed backend", at.Sub(killedAt).Round(time.Millisecond))
			}
		case e.Backend == victim.addr && at.After(restartedAt) && firstBack.IsZero():
			firstBack = at
		}
	}
	t.Logf("%d connects; %d failed, the last %v after the kill; back %v after the restart",
		len(events), failures, lastFail.Sub(killedAt).Round(time.Millisecond), firstBack.Sub(restartedAt).Round(time.Millisecond))
	if okAfter < 50 {
		t.Errorf("only %d connects succeeded between detection and restart", okAfter)
	}
	if firstBack.IsZero() {
		t.Fatalf("the restarted backend got no connection in %v", time.Unix(0, events[len(events)-1].At).Sub(restartedAt))
	}
	if back := firstBack.Sub(restartedAt); back > rise*interval+timeout+500*time.Millisecond {
		t.Errorf("the restarted backend got its first connection %v after the restart; want within about rise x interval", back)
	}
	rep := readStatusJSON(t, paths)
	for _, s := range rep.Services {
		for _, b := range s.Backends {
			if b.Health == nil || b.Health.State != "up" || b.Health.Passes == 0 {
				t.Errorf("status: backend %s health %+v, want up with passes", b.Address, b.Health)
			}
			if b.Address == victim.addr && (b.Health == nil || b.Health.Failures < fall) {
				t.Errorf("status: killed backend health %+v, want at least %d failures", b.Health, fall)
			}
		}
	}
}

// waitHealth waits until status shows n backends of service in state.
func waitHealth(t *testing.T, paths []string, service string, n int, state string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := 0
		for _, s := range readStatusJSON(t, paths).Services {
			if s.Name != service {
				continue
			}
			for _, b := range s.Backends {
				if b.Health != nil && b.Health.State == state {
					got++
				}
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d backends %s after 10s, want %d", service, got, state, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A resolver on a connected UDP socket pinned to a backend that is removed
// gets its socket closed (ECONNABORTED) and its next query answered by a
// live backend; without that it would keep asking the removed one.
func TestUDPSocketClosedOnRemoval(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	dir, put := servicesDir(t)
	a := startDNSBackend(t, "127.0.0.1:5301", "10.0.0.1")
	b := startDNSBackend(t, "127.0.0.1:5302", "10.0.0.2")
	put("dns.yaml", fmt.Sprintf("name: dns\nvip: [198.18.9.53]\nports: [{port: 53, protocol: udp}]\nbackends: [%s, %s]\n", a, b))
	_, _ = meshDaemon(t, dir, cg)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := cg.Helper(ctx, t, "dns-client", "198.18.9.53:53", "10s")
	stdout, err := client.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	client.Stderr = os.Stderr
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { client.Process.Kill(); client.Wait() }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("client ended early")
			}
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("client silent for 5s")
		}
		return ""
	}
	// A few answers on the first socket: all from one backend.
	first := next()
	for range 5 {
		if l := next(); l != first {
			t.Fatalf("one connected socket got %q then %q", first, l)
		}
	}
	removed, kept := a, b
	keptAnswer := "answer 10.0.0.2"
	if first == "answer 10.0.0.2" {
		removed, kept, keptAnswer = b, a, "answer 10.0.0.1"
	}
	removedAt := time.Now()
	put("dns.yaml", fmt.Sprintf("name: dns\nvip: [198.18.9.53]\nports: [{port: 53, protocol: udp}]\nbackends: [%s]\n", kept))
	var closedAt time.Time
	for {
		l := next()
		if l == first {
			if time.Since(removedAt) > 3*time.Second {
				t.Fatalf("still answered by the removed backend %s 3s after its removal", removed)
			}
			continue
		}
		if strings.HasPrefix(l, "error") {
			// SOCK_DESTROY: a blocked read gets ECONNABORTED; a
			// write first finds the socket disconnected.
			if !strings.Contains(l, "software caused connection abort") && !strings.Contains(l, "destination address required") {
				t.Fatalf("socket error %q, want ECONNABORTED or EDESTADDRREQ (SOCK_DESTROY)", l)
			}
			closedAt = time.Now()
			continue
		}
		if l != keptAnswer {
			t.Fatalf("after the removal: %q, want %q", l, keptAnswer)
		}
		break
	}
	if closedAt.IsZero() {
		t.Fatal("the client's socket was never closed, yet it switched backends")
	}
	t.Logf("socket closed %v after the file was replaced", closedAt.Sub(removedAt).Round(time.Millisecond))
	// dig, a real resolver client, is answered by the kept backend.
	digOut, err := cg.Command(ctx, t, "dig", "+short", "+tries=1", "+time=2", "@198.18.9.53", "who.test.", "A").CombinedOutput()
	if err != nil || strings.TrimSpace(string(digOut)) != strings.TrimPrefix(keptAnswer, "answer ") {
		t.Errorf("dig: %q, %v; want %s", digOut, err, strings.TrimPrefix(keptAnswer, "answer "))
	}
}

// startDNSBackend answers every A question with ip, on addr (UDP).
func startDNSBackend(t *testing.T, addr, ip string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0}, A: net.ParseIP(ip)})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return addr
}

// --- helpers: processes the tests start ---

// helperIDServer: args addr. Accepts connections and writes addr to each.
func helperIDServer(args []string) int {
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		c.Write([]byte(args[0] + "\n"))
		c.Close()
	}
}

// helperDialLog: args addr duration pause. Connects to addr every pause
// for duration and prints a dialEvent per connect.
func helperDialLog(args []string) int {
	dur, _ := time.ParseDuration(args[1])
	pause, _ := time.ParseDuration(args[2])
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	enc := json.NewEncoder(w)
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		e := dialEvent{At: time.Now().UnixNano()}
		c, err := net.DialTimeout("tcp", args[0], time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			var line string
			line, err = bufio.NewReader(c).ReadString('\n')
			e.Backend = strings.TrimSpace(line)
			c.Close()
		}
		if err != nil {
			e.Err = err.Error()
		}
		enc.Encode(e)
		time.Sleep(pause)
	}
	return 0
}

// helperDNSClient: args vip:port duration. A resolver that keeps one
// connected UDP socket while it works, as glibc's does: it asks who.test
// every 50 ms and prints "answer <ip>", or "error <err>" and reconnects.
func helperDNSClient(args []string) int {
	dur, _ := time.ParseDuration(args[1])
	end := time.Now().Add(dur)
	var conn *net.UDPConn
	q := new(dns.Msg)
	q.SetQuestion("who.test.", dns.TypeA)
	for time.Now().Before(end) {
		if conn == nil {
			raddr := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(args[0]))
			c, err := net.DialUDP("udp", nil, raddr)
			if err != nil {
				fmt.Println("error", err)
				return 1
			}
			conn = c
		}
		q.Id = dns.Id()
		buf, _ := q.Pack()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, err := conn.Write(buf)
		var n int
		resp := make([]byte, 512)
		if err == nil {
			n, err = conn.Read(resp)
		}
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			fmt.Println("error", err)
			conn.Close()
			conn = nil
			continue
		}
		m := new(dns.Msg)
		if err := m.Unpack(resp[:n]); err != nil || len(m.Answer) != 1 {
			fmt.Println("error bad answer", err)
			continue
		}
		fmt.Println("answer", m.Answer[0].(*dns.A).A)
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

// startHoldServer accepts TCP connections on addr, writes addr and a
// newline to each and keeps it open until the peer closes it.
func startHoldServer(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(addr + "\n"))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return addr
}

// A TCP connection to a removed backend is left to finish, unless the
// service says close_connections: then it is reset.
func TestTCPConnectionsOnRemoval(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	dir, put := servicesDir(t)
	a := startHoldServer(t, "127.0.0.1:9601")
	b := startHoldServer(t, "127.0.0.1:9602")
	file := func(closeConns bool, backends ...string) string {
		return fmt.Sprintf("name: shop\nvip: [198.18.9.80]\nports: [80]\nclose_connections: %v\nbackends: [%s]\n", closeConns, strings.Join(backends, ", "))
	}
	put("shop.yaml", file(false, a, b))
	_, paths := meshDaemon(t, dir, cg)
	for _, closeConns := range []bool{false, true} {
		t.Run(fmt.Sprintf("close_connections=%v", closeConns), func(t *testing.T) {
			put("shop.yaml", file(closeConns, a, b))
			waitBackends(t, paths, "shop", 2)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			client := cg.Helper(ctx, t, "hold-tcp", "198.18.9.80:80", "2s")
			stdout, err := client.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := client.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(stdout)
			if !sc.Scan() {
				t.Fatal("client printed nothing")
			}
			got, ok := strings.CutPrefix(sc.Text(), "connected ")
			if !ok {
				t.Fatalf("client: %q", sc.Text())
			}
			kept := a
			if got == a {
				kept = b
			}
			put("shop.yaml", file(closeConns, kept))
			waitBackends(t, paths, "shop", 1) // the removal is applied
			if !sc.Scan() {
				t.Fatal("client ended without a word")
			}
			end := sc.Text()
			client.Wait()
			switch {
			case closeConns && !strings.Contains(end, "software caused connection abort"):
				t.Errorf("close_connections: true: the connection to the removed %s ended with %q, want ECONNABORTED", got, end)
			case !closeConns && end != "open":
				t.Errorf("close_connections: false: the connection to the removed %s ended with %q, want it still open", got, end)
			}
		})
	}
}

// helperHoldTCP: args addr wait. Connects, prints "connected <what the
// server said>", then reads for wait and prints "open" if the connection
// is still there, or "error <err>".
func helperHoldTCP(args []string) int {
	wait, _ := time.ParseDuration(args[1])
	c, err := net.DialTimeout("tcp", args[0], 2*time.Second)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer c.Close()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("connected", strings.TrimSpace(line))
	end := time.Now().Add(wait)
	for {
		c.SetReadDeadline(end)
		_, err = r.ReadByte()
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		break
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		fmt.Println("open")
		return 0
	}
	fmt.Println("error", err)
	return 0
}

// waitBackends waits until status shows n backends of service.
func waitBackends(t *testing.T, paths []string, service string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, s := range readStatusJSON(t, paths).Services {
			if s.Name == service && len(s.Backends) == n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has not %d backends after 5s", service, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
