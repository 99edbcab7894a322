package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"sockmesh/internal/cgroupv2"
)

// Address plan of the bench namespace. Only lo exists there, so nothing
// the harness sends can leave the machine.
var (
	// sockmeshRange4/6 hold sockmesh's VIPs; both are routed unreachable,
	// so a connect the programs fail to rewrite fails at once.
	sockmeshRange4 = netip.MustParsePrefix("198.18.0.0/15")
	sockmeshRange6 = netip.MustParsePrefix("fd6d:6573:6800::/64")
	// natRange holds the DNAT variants' VIPs (kube's service range). DNAT
	// happens after the route lookup, so the range must route somewhere:
	// to lo, in a namespace with no other interface.
	natRange = netip.MustParsePrefix("10.96.0.0/12")
)

// Fixed addresses of the servers and VIPs under test.
const (
	backendIP  = "127.0.0.2"
	haproxyIP  = "127.0.0.3"
	goproxyIP  = "127.0.0.4"
	decoyIP    = "127.0.0.5" // backend of decoy services, never dialled
	sockmeshIP = "198.18.0.10"
	natVIP     = "10.96.0.10"

	// Every variant serves the same ports on its own address, so an
	// endpoint is an address.
	rrPort   = 9000 // TCP echo on kept connections (RR)
	udpPort  = 9001 // UDP echo
	crrPort  = 9002 // TCP echo for short connections (CRR)
	bulkPort = 5201 // iperf3
)

const (
	envRole  = "SOCKMESH_BENCH_ROLE"
	envNetns = "SOCKMESH_BENCH_NETNS"
)

// roles are the processes the harness starts from its own binary.
var roles = map[string]func(args []string) error{
	"load":    runLoad,
	"backend": runBackend,
	"goproxy": runGoProxy,
	"ctl":     runControlPlane,
}

// runRole runs the role named in the environment, if any, and exits.
func runRole() {
	name := os.Getenv(envRole)
	if name == "" {
		return
	}
	role, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: no role %q\n", name)
		os.Exit(2)
	}
	if err := role(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// reexecInNetns runs this program again in a new network namespace and
// exits with its status, unless this already is that run.
func reexecInNetns() {
	if os.Getenv(envNetns) == "1" {
		return
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	// Ctrl-C and SIGTERM go to the run in the namespace, which cleans up
	// before it exits; this process waits for that.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: run in a new network namespace: %v\n", err)
		os.Exit(1)
	}
	go func() {
		for s := range sig {
			cmd.Process.Signal(s)
		}
	}()
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: run in a new network namespace: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// setUpNetns readies the namespace this process runs in (one it made):
// lo up, VIP routes, and TCP settings that let a client open tens of
// thousands of short connections to the same address.
func setUpNetns() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	for _, p := range []netip.Prefix{sockmeshRange4, sockmeshRange6} {
		if err := netlink.RouteReplace(&netlink.Route{Dst: ipNet(p), Type: unix.RTN_UNREACHABLE}); err != nil {
			return fmt.Errorf("route %s unreachable: %w", p, err)
		}
	}
	if err := netlink.RouteReplace(&netlink.Route{Dst: ipNet(natRange), LinkIndex: lo.Attrs().Index, Src: net.IPv4(127, 0, 0, 1), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route %s to lo: %w", natRange, err)
	}
	for key, val := range map[string]string{
		// Every variant's client reuses ports in TIME_WAIT; the kernel
		// allows that by default only for loopback destinations, and the
		// DNAT variants dial a non-loopback VIP.
		"net/ipv4/tcp_tw_reuse":        "1",
		"net/ipv4/ip_local_port_range": "1024 65535",
	} {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0o644); err != nil {
			return fmt.Errorf("set %s: %w", key, err)
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// env is what the harness made and must take down again: cgroups, a
// bpffs, a scratch directory and the processes it started.
type env struct {
	// ctx ends when the run is interrupted: every process the harness
	// starts is killed then, and every loop returns, so that the
	// harness takes down what it made before it exits.
	ctx     context.Context
	log     *slog.Logger
	self    string // this program, for the roles
	tmp     string
	bpffs   string
	cgRoot  string // the harness's own child cgroup; the others are below it
	procs   []*proc
	cleanup []func() error
	cgFDs   map[string]int // open cgroup directories, for CLONE_INTO_CGROUP
	// dataCPU is the CPU every process on the measured path (clients,
	// backends, proxies) is pinned to, so a transaction's cost is CPU
	// time on one CPU, not the wake-up latency of an idle second vCPU;
	// -1 on a single-CPU machine. Daemons and the harness are not pinned:
	// they idle while the data path is measured.
	dataCPU int

	closeOnce sync.Once
	closeErr  error
}

func newEnv(ctx context.Context, log *slog.Logger) (*env, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	e := &env{ctx: ctx, log: log, self: self, cgFDs: map[string]int{}, dataCPU: -1}
	if runtime.NumCPU() > 1 {
		e.dataCPU = 0
	}
	if e.tmp, err = os.MkdirTemp("", "sockmesh-bench-"); err != nil {
		return nil, fmt.Errorf("create scratch dir: %w", err)
	}
	e.cleanup = append(e.cleanup, func() error { return os.RemoveAll(e.tmp) })
	e.bpffs = filepath.Join(e.tmp, "bpffs")
	if err := os.Mkdir(e.bpffs, 0o700); err != nil {
		return e, fmt.Errorf("create bpffs dir: %w", err)
	}
	if err := unix.Mount("bpf", e.bpffs, "bpf", 0, "mode=0700"); err != nil {
		return e, fmt.Errorf("mount bpffs: %w", err)
	}
	e.cleanup = append(e.cleanup, func() error { return unix.Unmount(e.bpffs, unix.MNT_DETACH) })
	mnt, err := cgroupv2.Mountpoint()
	if err != nil {
		return e, err
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	e.cgRoot = filepath.Join(mnt, fmt.Sprintf("sockmesh-bench-%d-%s", os.Getpid(), hex.EncodeToString(suffix)))
	if err := os.Mkdir(e.cgRoot, 0o755); err != nil {
		return e, fmt.Errorf("create cgroup: %w", err)
	}
	e.cleanup = append(e.cleanup, func() error { return removeCgroupTree(e.cgRoot) })
	return e, nil
}

// cgroup creates a child cgroup of the harness's own.
func (e *env) cgroup(name string) (string, error) {
	path := filepath.Join(e.cgRoot, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup: %w", err)
	}
	return path, nil
}

// removeCgroupTree removes a cgroup and its children, waiting briefly for
// exited processes to leave them.
func removeCgroupTree(root string) error {
	entries, _ := os.ReadDir(root)
	for _, ent := range entries {
		if ent.IsDir() {
			if err := removeCgroupTree(filepath.Join(root, ent.Name())); err != nil {
				return err
			}
		}
	}
	var err error
	for range 100 {
		if err = os.Remove(root); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", root, err)
}

// close stops every process the harness started (by PID, SIGTERM and
// then SIGKILL) and removes what it made, in reverse order.
func (e *env) close() error {
	e.closeOnce.Do(func() { e.closeErr = e.takeDown() })
	return e.closeErr
}

func (e *env) takeDown() error {
	var errs []error
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop()
	}
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		if err := e.cleanup[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// proc is a long-running process the harness started.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// onDataCPU prefixes a command line with taskset, pinning the command
// and every thread it makes to the data CPU.
func (e *env) onDataCPU(name string, args ...string) (string, []string) {
	if e.dataCPU < 0 {
		return name, args
	}
	return "taskset", append([]string{"-c", fmt.Sprint(e.dataCPU), name}, args...)
}

// command prepares a command that starts straight inside cgroup (none:
// the harness's own).
func (e *env) command(ctx context.Context, cgroup, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cgroup != "" {
		fd, ok := e.cgFDs[cgroup]
		if !ok {
			var err error
			if fd, err = unix.Open(cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				return nil, fmt.Errorf("open cgroup: %w", err)
			}
			e.cgFDs[cgroup] = fd
			e.cleanup = append(e.cleanup, func() error { return unix.Close(fd) })
		}
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	return cmd, nil
}

// role prepares this program's role name with args.
func (e *env) role(ctx context.Context, cgroup, name string, args ...string) (*exec.Cmd, error) {
	return e.roleCommand(ctx, cgroup, name, e.self, args)
}

// dataRole is role pinned to the data CPU.
func (e *env) dataRole(ctx context.Context, cgroup, name string, args ...string) (*exec.Cmd, error) {
	bin, argv := e.onDataCPU(e.self, args...)
	return e.roleCommand(ctx, cgroup, name, bin, argv)
}

// roleCommand prepares bin argv (this program, perhaps behind taskset) to
// run role name.
func (e *env) roleCommand(ctx context.Context, cgroup, name, bin string, argv []string) (*exec.Cmd, error) {
	cmd, err := e.command(ctx, cgroup, bin, argv...)
	if err != nil {
		return nil, err
	}
	// No preemption signals: they would interrupt the load's blocking
	// system calls (a socket with a receive timeout returns EINTR).
	cmd.Env = append(os.Environ(), envRole+"="+name, "GODEBUG=asyncpreemptoff=1")
	return cmd, nil
}

// startRole starts a server role and waits for its "ready" line.
func (e *env) startRole(name string, args ...string) error {
	cmd, err := e.dataRole(e.ctx, "", name, args...)
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	cmd.Stderr = os.Stderr
	p, err := e.start(name, cmd)
	if err != nil {
		return err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		p.stop()
		return fmt.Errorf("start %s: no ready line (%q, %v)", name, line, err)
	}
	return nil
}

// start starts a long-running process and stops it at close.
func (e *env) start(name string, cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	e.procs = append(e.procs, p)
	return p, nil
}

// waitTCP waits until addr accepts connections.
func waitTCP(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting after %v: %w", addr, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitListening waits until something listens on addr, without connecting
// (iperf3 takes any connection for a test): until binding it fails.
func waitListening(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil
		}
		ln.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %v", addr, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
