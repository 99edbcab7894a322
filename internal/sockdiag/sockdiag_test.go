package sockdiag

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
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

	"golang.org/x/sys/unix"

	"sockmesh/internal/testenv"
)

// --- test fixtures ---

func udpServer(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go echoUDP(pc)
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// connectUDP connects a UDP socket to srv (from laddr if not nil) and checks
// that it works.
func connectUDP(t *testing.T, laddr *net.UDPAddr, srv netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	mustRoundTrip(t, c)
	return c
}

func mustRoundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	if err := roundTrip(c); err != nil {
		t.Fatalf("%s -> %s: %v", c.LocalAddr(), c.RemoteAddr(), err)
	}
}

func mustCookie(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	cookie, err := cookieOf(c)
	if err != nil {
		t.Fatal(err)
	}
	return cookie
}

// blockedRead reads from c in the background (giving up after 5 s) and
// returns the read's error once it fails. It waits a moment so that the
// read is blocked by the time the caller goes on.
func blockedRead(c net.Conn) <-chan error {
	ch := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 100))
		ch <- err
	}()
	time.Sleep(50 * time.Millisecond)
	return ch
}

func wantAborted(t *testing.T, what string, read <-chan error) {
	t.Helper()
	if err := <-read; !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("%s: read got %v, want ECONNABORTED", what, err)
	}
}

// destroy runs DestroyConnected on an empty cgroup: only the test's own
// network namespace is searched.
func destroy(t *testing.T, targets []Target, match func(Socket) bool) Result {
	t.Helper()
	res, err := DestroyConnected(testenv.NewCgroup(t).Path, targets, match)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	return res
}

func udpTarget(ap netip.AddrPort) Target { return Target{ap, unix.IPPROTO_UDP} }

// --- tests ---

func TestSocketsReportsUDP(t *testing.T) {
	testenv.RequirePrivileged(t)
	srv := udpServer(t, "udp4", "127.0.0.1:0")
	c := connectUDP(t, nil, srv)
	var st unix.Stat_t
	rc, _ := c.SyscallConn()
	rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })

	conn, err := Dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	socks, err := conn.Sockets(unix.AF_INET, unix.IPPROTO_UDP, 1<<StateEstablished)
	if err != nil {
		t.Fatal(err)
	}
	want := Socket{
		Family: unix.AF_INET, Proto: unix.IPPROTO_UDP, State: StateEstablished,
		Local:  c.LocalAddr().(*net.UDPAddr).AddrPort(),
		Remote: srv,
		Cookie: mustCookie(t, c), Inode: uint32(st.Ino), UID: 0,
	}
	if !slices.Contains(socks, want) {
		t.Fatalf("dump %v lacks %v", socks, want)
	}
	// The unconnected server socket shows up in state CLOSE only.
	all, err := conn.Sockets(unix.AF_INET, unix.IPPROTO_UDP, AllStates)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(all, func(s Socket) bool { return s.Local == srv && s.State == StateClose }) {
		t.Errorf("dump of all states %v lacks the server %s in state CLOSE", all, srv)
	}

	// A wrong cookie names no socket: not an error, and nothing closed.
	wrong := want
	wrong.Cookie++
	if err := conn.Destroy(wrong); err != nil {
		t.Errorf("destroy with a wrong cookie: %v", err)
	}
	mustRoundTrip(t, c)

	read := blockedRead(c)
	if err := conn.Destroy(want); err != nil {
		t.Fatal(err)
	}
	wantAborted(t, "client", read)
	// Gone now: destroying it again is not an error.
	if err := conn.Destroy(want); err != nil {
		t.Errorf("second destroy: %v", err)
	}
	socks, err = conn.Sockets(unix.AF_INET, unix.IPPROTO_UDP, 1<<StateEstablished)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(socks, func(s Socket) bool { return s.Cookie == want.Cookie }) {
		t.Errorf("destroyed socket still connected: %v", socks)
	}
}

func TestDestroyUDP4(t *testing.T) {
	testenv.RequirePrivileged(t)
	srv := udpServer(t, "udp4", "127.0.0.1:0")
	other := udpServer(t, "udp4", "127.0.0.1:0")
	c := connectUDP(t, nil, srv)
	c2 := connectUDP(t, nil, other)
	unconnected, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer unconnected.Close()
	sendTo := func() {
		t.Helper()
		unconnected.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := unconnected.WriteToUDPAddrPort([]byte("x"), srv); err != nil {
			t.Fatal(err)
		}
		if _, _, err := unconnected.ReadFromUDPAddrPort(make([]byte, 10)); err != nil {
			t.Fatalf("unconnected socket: %v", err)
		}
	}
	sendTo()

	read := blockedRead(c)
	res := destroy(t, []Target{udpTarget(srv)}, nil)
	if res.Namespaces != 1 || res.Examined < 2 || res.Matched != 1 || res.Closed != 1 {
		t.Errorf("result %+v, want 1 namespace, at least 2 examined, 1 matched and closed", res)
	}
	wantAborted(t, "client", read)

	// The others still work.
	mustRoundTrip(t, c2)
	sendTo()

	// The aborted socket was disconnected: it has no destination any more,
	// and the error was reported once.
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EDESTADDRREQ) {
		t.Errorf("write on the aborted socket: %v, want EDESTADDRREQ", err)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("second read on the aborted socket: %v, want a timeout", err)
	}
}

func TestDestroyUDP6AndMapped(t *testing.T) {
	testenv.RequirePrivileged(t)
	srv6 := udpServer(t, "udp6", "[::1]:0")
	srv4 := udpServer(t, "udp4", "127.0.0.1:0")
	c6 := connectUDP(t, nil, srv6)
	c4 := connectUDP(t, nil, srv4)
	// A dual-stack AF_INET6 socket: it connects to ::ffff:127.0.0.1.
	dual := connectUDP(t, &net.UDPAddr{IP: net.IPv6zero}, srv4)

	conn, err := Dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	socks, err := conn.Sockets(unix.AF_INET6, unix.IPPROTO_UDP, 1<<StateEstablished)
	if err != nil {
		t.Fatal(err)
	}
	dualCookie := mustCookie(t, dual)
	i := slices.IndexFunc(socks, func(s Socket) bool { return s.Cookie == dualCookie })
	if i < 0 {
		t.Fatalf("AF_INET6 dump %v lacks the dual-stack socket", socks)
	}
	if s := socks[i]; !s.Remote.Addr().Is4In6() || s.Remote.Addr().Unmap() != srv4.Addr() || s.Remote.Port() != srv4.Port() {
		t.Errorf("dual-stack socket reported as %v, want remote ::ffff:%s", s, srv4)
	}

	reads := map[string]<-chan error{"IPv6": blockedRead(c6), "IPv4": blockedRead(c4), "v4-mapped": blockedRead(dual)}
	res := destroy(t, []Target{udpTarget(srv6), udpTarget(srv4)}, nil)
	if res.Matched != 3 || res.Closed != 3 {
		t.Errorf("result %+v, want 3 matched and closed", res)
	}
	for what, read := range reads {
		wantAborted(t, what, read)
	}
}

func TestDestroyMatchByCookie(t *testing.T) {
	testenv.RequirePrivileged(t)
	srv := udpServer(t, "udp4", "127.0.0.1:0")
	a := connectUDP(t, nil, srv)
	b := connectUDP(t, nil, srv)
	pinned := mustCookie(t, a)
	read := blockedRead(a)
	res := destroy(t, []Target{udpTarget(srv)}, func(s Socket) bool { return s.Cookie == pinned })
	if res.Matched != 2 || res.Closed != 1 {
		t.Errorf("result %+v, want 2 matched, 1 closed", res)
	}
	wantAborted(t, "pinned socket", read)
	mustRoundTrip(t, b)
}

func TestDestroyTCP(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// An echo server that reports how each connection ended.
	ended := make(chan error, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, err := io.Copy(c, c)
				ended <- err
			}()
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		mustRoundTrip(t, c)
		return c
	}
	c := dial()
	read := blockedRead(c)
	target := Target{ln.Addr().(*net.TCPAddr).AddrPort(), unix.IPPROTO_TCP}
	res := destroy(t, []Target{target}, nil)
	// The server's end of the connection is connected too, but to the
	// client's address: only the client's matches.
	if res.Examined < 2 || res.Matched != 1 || res.Closed != 1 {
		t.Errorf("result %+v, want at least 2 examined, 1 matched and closed", res)
	}
	wantAborted(t, "client", read)
	select {
	case err := <-ended:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("server side ended with %v, want ECONNRESET (the abort's RST)", err)
		}
	case <-time.After(3 * time.Second):
		t.Error("server side did not see the connection end")
	}
	// The listener survives.
	mustRoundTrip(t, dial())
}

func TestDestroyInOtherNetns(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, mode := range []string{"process", "thread"} {
		t.Run(mode, func(t *testing.T) {
			cg := testenv.NewCgroup(t)
			h := startHelper(t, cg, mode == "process", "udp-client", mode)
			f := strings.Fields(h.line(t))
			if len(f) != 5 || f[0] != "ready" {
				t.Fatalf("helper said %q", f)
			}
			srv := netip.MustParseAddrPort(f[1])
			sockNS, mainNS := f[3], f[4]
			if mode == "thread" && sockNS == mainNS {
				t.Fatalf("the helper's thread shares its main thread's namespace %s", mainNS)
			}
			own, _ := os.Readlink("/proc/self/ns/net")
			if sockNS == own {
				t.Fatalf("the helper's sockets are in the test's namespace %s", own)
			}

			res, err := DestroyConnected(cg.Path, []Target{udpTarget(srv)}, nil)
			t.Logf("%+v", res)
			if err != nil {
				t.Fatal(err)
			}
			// The test's own and the helper's sockets' (in thread mode the
			// helper's other threads are in the test's).
			if res.Namespaces != 2 || res.Closed != 1 {
				t.Errorf("result %+v, want 2 namespaces, 1 closed", res)
			}
			if got := h.line(t); got != "result ECONNABORTED" {
				t.Errorf("helper said %q, want result ECONNABORTED", got)
			}
		})
	}
}

func TestNamespacesDedupes(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	sub := cg.Child(t, "sub")
	// Four processes (of several threads each) in one new namespace.
	a := startHelper(t, cg, true, "sleepers", "3")
	aPIDs := strings.Fields(a.line(t))[1:]
	// One in the test's namespace.
	b := startHelper(t, cg, false, "sleep")
	b.line(t)
	// One in a namespace of its own, in a child cgroup.
	c := startHelper(t, sub, true, "sleep")
	c.line(t)

	procs, err := os.ReadFile(filepath.Join(cg.Path, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Fields(string(procs))); n != 5 {
		t.Fatalf("%d processes in the cgroup, want 5:\n%s", n, procs)
	}
	want := []nsKey{keyOf(t, "/proc/self/ns/net"), keyOf(t, "/proc/"+strconv.Itoa(a.cmd.Process.Pid)+"/ns/net"),
		keyOf(t, "/proc/"+strconv.Itoa(c.cmd.Process.Pid)+"/ns/net")}
	for _, pid := range aPIDs {
		if k := keyOf(t, "/proc/"+pid+"/ns/net"); k != want[1] {
			t.Fatalf("child %s of the sleepers is in another namespace", pid)
		}
	}

	nss, err := Namespaces(cg.Path)
	defer func() {
		for _, ns := range nss {
			ns.Close()
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	var got []nsKey
	for _, ns := range nss {
		got = append(got, ns.key)
	}
	if len(got) != 3 || got[0] != want[0] || !slices.Contains(got, want[1]) || !slices.Contains(got, want[2]) {
		t.Errorf("namespaces %v, want %v (the own one first)", got, want)
	}

	// A Conn dialled into each sees that namespace's sockets only: the
	// sleepers' namespace has none.
	conn, err := Dial(nss[slices.Index(got, want[1])])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	socks, err := conn.Sockets(unix.AF_INET, unix.IPPROTO_UDP, AllStates)
	if err != nil || len(socks) != 0 {
		t.Errorf("sockets in the sleepers' namespace: %v, %v", socks, err)
	}
}

func TestNamespacesErrors(t *testing.T) {
	testenv.RequirePrivileged(t)
	if _, err := Namespaces(filepath.Join(testenv.NewCgroup(t).Path, "missing")); err == nil {
		t.Error("missing cgroup: no error")
	}
	if _, err := Namespaces(t.TempDir()); err == nil {
		t.Error("not a cgroup: no error")
	}
	if _, err := OpenNetns("/proc/self/ns/mnt"); err == nil {
		t.Error("OpenNetns of a mount namespace: no error")
	}
}

// Dialling into other namespaces leaves every thread of the process in its
// own namespace.
func TestDialLeavesThreadsHome(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	h := startHelper(t, cg, true, "sleep")
	h.line(t)
	ns, err := OpenNetns("/proc/" + strconv.Itoa(h.cmd.Process.Pid) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for range 20 {
		c, err := Dial(ns)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	own := keyOf(t, "/proc/self/ns/net")
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/task/"+task.Name()+"/ns/net", &st); err != nil {
			continue // exited
		}
		if (nsKey{st.Dev, st.Ino}) != own {
			t.Errorf("thread %s is in %d, not the own namespace", task.Name(), st.Ino)
		}
	}
}

func keyOf(t *testing.T, path string) nsKey {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return nsKey{st.Dev, st.Ino}
}

// --- helper processes ---

type helperProc struct {
	cmd   *exec.Cmd
	lines chan string
}

// startHelper starts helper name in cgroup cg, in a new network namespace
// if newNetns. The helper ends when its input does, at the end of the
// test (or is killed).
func startHelper(t *testing.T, cg *testenv.Cgroup, newNetns bool, name string, args ...string) *helperProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cmd := cg.Helper(ctx, t, name, args...)
	if newNetns {
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWNET
	}
	cmd.Stderr = os.Stderr
	if os.Getenv("GORACE") == "" {
		// A race-enabled helper would otherwise wait a second as it exits.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start helper %s: %v", name, err)
	}
	h := &helperProc{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		pw.Close()
		cancel()
	})
	return h
}

// line returns the helper's next line of output.
func (h *helperProc) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			t.Fatalf("helper %v ended early", h.cmd.Args)
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatalf("helper %v: no output in 10 s", h.cmd.Args)
	}
	return ""
}

// A dump of many sockets spans many datagrams; one whose reader failed
// half-way leaves the Conn usable.
func TestLongDump(t *testing.T) {
	testenv.RequirePrivileged(t)
	const n = 1000
	inodes := map[uint32]bool{}
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		inodes[uint32(st.Ino)] = true
	}
	conn, err := Dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := encodeReq(unix.AF_INET, unix.IPPROTO_UDP, AllStates, sockID{cookie: noCookie})
	calls := 0
	_, err = conn.request(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP, req, func([]byte) error {
		calls++
		return errors.New("reader failed")
	})
	if err == nil || calls != 1 {
		t.Fatalf("failing reader: %v after %d calls, want its error after 1", err, calls)
	}
	socks, err := conn.Sockets(unix.AF_INET, unix.IPPROTO_UDP, AllStates)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		delete(inodes, s.Inode)
	}
	if len(inodes) != 0 {
		t.Errorf("dump of %d sockets lacks %d of ours", len(socks), len(inodes))
	}
}
