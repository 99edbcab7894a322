package lb

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, map[string]testenv.Helper{
		"http-get":       helperHTTPGet,
		"dial-loop":      helperDialLoop,
		"refused":        helperRefused,
		"udp-multi":      helperUDPMulti,
		"load":           helperLoad,
		"crr":            helperCRR,
		"udp-connected":  helperUDPConnected,
		"cgroup-clients": helperCgroupClients,
		"dial-as":        helperDialAs,
	})
}

// --- backends (in the test process, outside the mesh cgroup) ---

// startHTTPBackend serves "backend <addr>" on addr (host:0 picks a port).
func startHTTPBackend(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend %s\n", ap)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// startIDBackend accepts TCP connections and writes its own address and a
// newline to each, then closes it: the cheapest way to tell a client which
// backend it reached.
func startIDBackend(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	line := []byte(ap.String() + "\n")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write(line)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ap
}

// startUDPEcho answers every datagram with "<its own addr> <payload>".
func startUDPEcho(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(ap.String()+" "+string(buf[:n])), from)
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return ap
}

// newDatapath loads the datapath into a private bpffs, attaches it to a
// fresh child cgroup and removes everything when the test ends.
func newDatapath(t testing.TB) (*Datapath, *testenv.Cgroup, string) {
	t.Helper()
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	pinDir := testenv.BPFFS(t) + "/sockmesh"
	d, err := Open(Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := Remove(pinDir); err != nil {
			t.Errorf("remove: %v", err)
		}
	})
	if err := d.Attach(cg.Path); err != nil {
		t.Fatal(err)
	}
	return d, cg, pinDir
}

func mustApply(t testing.TB, d *Datapath, svcs ...Service) {
	t.Helper()
	if _, err := d.Apply(svcs); err != nil {
		t.Fatal(err)
	}
}

func svc(vip string, port uint16, proto Proto, backends ...netip.AddrPort) Service {
	s := Service{Key: ServiceKey{VIP: netip.MustParseAddr(vip), Port: port, Proto: proto}}
	for _, b := range backends {
		s.Backends = append(s.Backends, Backend{Addr: b})
	}
	return s
}

// runHelper runs a helper in the cgroup and returns its stdout.
func runHelper(t *testing.T, cg *testenv.Cgroup, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := cg.Helper(ctx, t, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %s %v: %v\n%s", name, args, err, stderr.String())
	}
	return string(out)
}

// --- helpers: client code that runs inside the mesh cgroup ---

type httpResult struct {
	Body   string `json:"body"`
	Remote string `json:"remote"`
}

// helperHTTPGet: args url [network]. Prints the body and the connection's
// RemoteAddr as the application sees it (getpeername). Network "dual" dials
// from a dual-stack AF_INET6 socket, as a server bound to [::] would.
func helperHTTPGet(args []string) int {
	network := "tcp"
	if len(args) > 1 {
		network = args[1]
	}
	var dialer net.Dialer
	if network == "dual" {
		network = "tcp"
		dialer.LocalAddr = &net.TCPAddr{IP: net.IPv6zero}
	}
	var remote string
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err == nil {
			remote = c.RemoteAddr().String()
		}
		return c, err
	}}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	json.NewEncoder(os.Stdout).Encode(httpResult{Body: string(body), Remote: remote})
	return 0
}

type dialResult struct {
	Start, End int64 // wall clock, ns
	Backend    string
	Err        string
}

// helperDialLoop: args addr count [maxSeconds]. Connects count times (or
// until the time is up), reads the backend's id line, prints one JSON
// result per connect.
func helperDialLoop(args []string) int {
	count, _ := strconv.Atoi(args[1])
	limit := 60 * time.Second
	if len(args) > 2 {
		s, _ := strconv.Atoi(args[2])
		limit = time.Duration(s) * time.Second
	}
	deadline := time.Now().Add(limit)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	enc := json.NewEncoder(w)
	for i := 0; i < count && time.Now().Before(deadline); i++ {
		r := dialResult{Start: time.Now().UnixNano()}
		c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
		r.End = time.Now().UnixNano()
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var line string
			line, err = bufio.NewReader(c).ReadString('\n')
			r.Backend = strings.TrimSpace(line)
			c.Close()
		}
		if err != nil {
			r.Err = err.Error()
		}
		enc.Encode(r)
	}
	return 0
}

func parseDialResults(t *testing.T, out string) []dialResult {
	t.Helper()
	var rs []dialResult
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var r dialResult
		if err := dec.Decode(&r); errors.Is(err, io.EOF) {
			return rs
		} else if err != nil {
			t.Fatalf("parse helper output: %v", err)
		}
		rs = append(rs, r)
	}
}

// helperRefused: args ip port n. Connects n times with a raw socket and
// prints "errno-name p95-duration-ns median-duration-ns".
func helperRefused(args []string) int {
	ip := netip.MustParseAddr(args[0])
	port, _ := strconv.Atoi(args[1])
	n, _ := strconv.Atoi(args[2])
	var durs []time.Duration
	var last error
	for range n {
		fam := syscall.AF_INET
		var sa syscall.Sockaddr
		if ip.Is4() {
			sa = &syscall.SockaddrInet4{Port: port, Addr: ip.As4()}
		} else {
			fam = syscall.AF_INET6
			sa = &syscall.SockaddrInet6{Port: port, Addr: ip.As16()}
		}
		fd, err := syscall.Socket(fam, syscall.SOCK_STREAM, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		start := time.Now()
		last = syscall.Connect(fd, sa)
		durs = append(durs, time.Since(start))
		syscall.Close(fd)
	}
	slices.Sort(durs)
	name := "ok"
	var errno syscall.Errno
	if errors.As(last, &errno) {
		name = errnoName(errno)
	}
	fmt.Printf("%s %d %d\n", name, durs[len(durs)*95/100], durs[len(durs)/2])
	return 0
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	case syscall.EPERM:
		return "EPERM"
	}
	return fmt.Sprintf("errno%d", int(e))
}

// helperUDPMulti: args vip1:port vip2:port [network]. From ONE unconnected
// socket, sends to both and prints "from reply" per answer.
func helperUDPMulti(args []string) int {
	network := "udp"
	if len(args) > 2 {
		network = args[2]
	}
	laddr := "0.0.0.0:0"
	if network == "udp6" {
		laddr = "[::]:0"
	}
	pc, err := net.ListenPacket(network, laddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pc.Close()
	for i, dst := range args[:2] {
		ua, err := net.ResolveUDPAddr(network, dst)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, err := pc.WriteTo([]byte(fmt.Sprintf("q%d", i)), ua); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	for range 2 {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("%s %s\n", from, buf[:n])
	}
	return 0
}

// runCmd runs a program in the cgroup and returns its stdout.
func runCmd(t *testing.T, cg *testenv.Cgroup, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := cg.Command(ctx, t, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return string(out)
}
