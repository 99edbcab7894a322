package sockdiag

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, map[string]testenv.Helper{
		"udp-client": helperUDPClient,
		"sleep":      helperSleep,
		"sleepers":   helperSleepers,
	})
}

// --- helpers: processes the tests start inside a cgroup ---

// helperUDPClient: args mode. Runs a UDP echo server and a client
// connected to it in a network namespace of its own: the whole process's
// (mode "process": the test starts it in a new one) or, with mode
// "thread", one that a single thread other than the main one unshares, so
// /proc/<pid>/ns/net does not show it. Prints
// "ready <server> <client cookie> <namespace of the sockets> <namespace of
// the main thread>", then "result <error>" when the client's read fails.
func helperUDPClient(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: udp-client process|thread")
		return 2
	}
	if args[0] != "thread" {
		return udpClient(args[0])
	}
	// The main goroutine may run on the main thread; hold that one, and
	// run the client on a locked thread that cannot be it.
	runtime.LockOSThread()
	if unix.Gettid() != unix.Getpid() {
		return udpClient("thread")
	}
	code := make(chan int)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with it
		code <- udpClient("thread")
	}()
	return <-code
}

func udpClient(mode string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if mode == "thread" {
		if unix.Gettid() == unix.Getpid() {
			return fail(errors.New("thread mode on the main thread"))
		}
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fail(fmt.Errorf("unshare: %w", err))
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fail(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fail(err)
	}
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fail(err)
	}
	go echoUDP(srv)
	c, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return fail(err)
	}
	if err := roundTrip(c); err != nil {
		return fail(err)
	}
	cookie, err := cookieOf(c)
	if err != nil {
		return fail(err)
	}
	fmt.Printf("ready %s %d %s %s\n", srv.LocalAddr(), cookie,
		nsLink("/proc/thread-self/ns/net"), nsLink(fmt.Sprintf("/proc/%d/ns/net", os.Getpid())))
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = c.Read(make([]byte, 100))
	if errors.Is(err, syscall.ECONNABORTED) {
		fmt.Println("result ECONNABORTED")
	} else {
		fmt.Printf("result %v\n", err)
	}
	return 0
}

func nsLink(path string) string {
	l, err := os.Readlink(path)
	if err != nil {
		return "?"
	}
	return l
}

// helperSleep prints "ready" and waits for the end of its input.
func helperSleep([]string) int {
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperSleepers: args n. Starts n sleep helpers (in its cgroup and
// network namespace), prints "ready <pids>" once they are, and waits for
// the end of its input.
func helperSleepers(args []string) int {
	n, _ := strconv.Atoi(args[0])
	var children []*exec.Cmd
	var stdins []io.Closer
	var pids []string
	defer func() {
		for i, c := range children {
			stdins[i].Close()
			c.Wait()
		}
	}()
	for range n {
		cmd := testenv.HelperOutside(context.Background(), "sleep")
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		children, stdins = append(children, cmd), append(stdins, in)
		line, err := bufio.NewReader(out).ReadString('\n')
		if line != "ready\n" {
			fmt.Fprintf(os.Stderr, "child said %q: %v\n", line, err)
			return 1
		}
		pids = append(pids, strconv.Itoa(cmd.Process.Pid))
	}
	fmt.Println("ready", strings.Join(pids, " "))
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// --- shared by helpers and tests ---

// echoUDP answers every datagram with itself.
func echoUDP(pc *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		pc.WriteToUDPAddrPort(buf[:n], from)
	}
}

// roundTrip sends a datagram (or a line) on c and waits for the echo.
func roundTrip(c net.Conn) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf[:n]) != "ping\n" {
		return fmt.Errorf("echo %q", buf[:n])
	}
	return nil
}

// cookieOf returns the socket cookie of c (SO_COOKIE).
func cookieOf(c syscall.Conn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cookie uint64
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		cookie, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return 0, err
	}
	return cookie, gerr
}
