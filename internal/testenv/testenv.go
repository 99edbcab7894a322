// Package testenv gives privileged tests what the machine rules demand: a
// network namespace of their own (with lo up and unreachable routes for the
// VIP ranges, so a missed rewrite goes nowhere), a throwaway child cgroup,
// a private bpffs, and client processes started inside the cgroup.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"sockmesh/internal/cgroupv2"
)

// VIP ranges the tests use; each gets an unreachable route in the test
// namespace.
var (
	VIPRange4 = netip.MustParsePrefix("198.18.0.0/15")
	VIPRange6 = netip.MustParsePrefix("fd6d:6573:6800::/64")
)

const (
	envNetns  = "SOCKMESH_TEST_NETNS"
	envHelper = "SOCKMESH_TEST_HELPER"
)

// Helper is a function a test runs in a child process (inside a cgroup):
// it gets the arguments and returns the exit code.
type Helper func(args []string) int

// Main is TestMain for packages with privileged tests. As root, it re-runs
// the test binary in a new network namespace set up for VIP tests, so no
// test traffic can leave through the machine's real interfaces. A child
// started with RunHelper runs the named helper instead of the tests.
func Main(m *testing.M, helpers map[string]Helper) {
	if name := os.Getenv(envHelper); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "testenv: no helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h(os.Args[1:]))
	}
	if os.Geteuid() != 0 || os.Getenv(envNetns) == "1" {
		// A fuzz worker inherits the namespace its coordinator set up.
		if os.Getenv(envNetns) == "1" && !slices.Contains(os.Args, "-test.fuzzworker") {
			if err := setupNetns(); err != nil {
				fmt.Fprintf(os.Stderr, "testenv: set up test network namespace: %v\n", err)
				os.Exit(1)
			}
		}
		os.Exit(m.Run())
	}
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNetns+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "testenv: run tests in a new network namespace: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// setupNetns brings lo up and routes the VIP ranges nowhere.
func setupNetns() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	for _, p := range []netip.Prefix{VIPRange4, VIPRange6} {
		if err := AddUnreachable(p); err != nil {
			return err
		}
	}
	return nil
}

// AddUnreachable routes prefix to an unreachable route in this namespace.
func AddUnreachable(p netip.Prefix) error {
	dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	r := &netlink.Route{Dst: dst, Type: unix.RTN_UNREACHABLE}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("add unreachable route %s: %w", p, err)
	}
	return nil
}

// InTestNetns reports whether this process runs in a namespace made by Main.
func InTestNetns() bool { return os.Getenv(envNetns) == "1" }

// RequirePrivileged skips a test that needs root and the test namespace,
// except under CI=true, where privileged tests must run: there a skip would
// hide a failure, so it fails instead.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "needs root"
	case !InTestNetns():
		why = "needs the test network namespace (use testenv.Main in TestMain)"
	default:
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("privileged test cannot run in CI: %s", why)
	}
	tb.Skipf("privileged test: %s", why)
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Cgroup is a throwaway child cgroup v2.
type Cgroup struct {
	Path string
}

// NewCgroup creates a uniquely named child of the cgroup v2 root and
// removes it when the test ends, whatever the outcome. Never attach to the
// root itself: the machine's own connections live there.
func NewCgroup(tb testing.TB) *Cgroup {
	tb.Helper()
	root, err := cgroupv2.Mountpoint()
	if err != nil {
		tb.Fatal(err)
	}
	return makeCgroup(tb, filepath.Join(root, fmt.Sprintf("sockmesh-test-%d-%s", os.Getpid(), randomSuffix())))
}

// makeCgroup creates the cgroup at path and removes it when the test ends.
func makeCgroup(tb testing.TB, path string) *Cgroup {
	tb.Helper()
	if err := os.Mkdir(path, 0o755); err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		// Processes we started may take a moment to leave after exiting.
		var err error
		for range 50 {
			if err = os.Remove(path); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		tb.Errorf("remove cgroup %s: %v", path, err)
	})
	return &Cgroup{Path: path}
}

// Child creates a child cgroup of c named name, removed at the end of the
// test (before c: cleanups run last-in first-out).
func (c *Cgroup) Child(tb testing.TB, name string) *Cgroup {
	tb.Helper()
	return makeCgroup(tb, filepath.Join(c.Path, name))
}

// Command prepares name to start directly inside the cgroup, so that every
// socket it opens belongs to it.
func (c *Cgroup) Command(ctx context.Context, tb testing.TB, name string, args ...string) *exec.Cmd {
	tb.Helper()
	fd, err := unix.Open(c.Path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("open cgroup: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// CommandResolving is Command in a private mount namespace whose
// /etc/resolv.conf is resolvConf, so the command's resolver asks whatever
// that file names while the rest of the machine is untouched.
func (c *Cgroup) CommandResolving(ctx context.Context, tb testing.TB, resolvConf, name string, args ...string) *exec.Cmd {
	tb.Helper()
	script := `mount --bind "$0" /etc/resolv.conf && exec "$@"`
	return c.Command(ctx, tb, "unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, resolvConf, name}, args...)...)
}

// Curl fetches url with curl from inside the cgroup (resolving names
// through resolvConf unless it is empty). It returns the trimmed body, or
// curl's output and exit code when curl fails.
func (c *Cgroup) Curl(tb testing.TB, resolvConf, url string) (string, int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := []string{"-sS", "--max-time", "3", url}
	cmd := c.Command(ctx, tb, "curl", args...)
	if resolvConf != "" {
		cmd = c.CommandResolving(ctx, tb, resolvConf, "curl", args...)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		tb.Fatalf("run curl: %v", err)
	}
	return strings.TrimSpace(string(out)), 0
}

// Helper prepares the test binary to run helper name with args inside the
// cgroup.
func (c *Cgroup) Helper(ctx context.Context, tb testing.TB, name string, args ...string) *exec.Cmd {
	tb.Helper()
	cmd := c.Command(ctx, tb, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envHelper+"="+name)
	return cmd
}

// HelperOutside is Helper for a process outside the cgroup.
func HelperOutside(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envHelper+"="+name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// HelperIn is Helper for a process outside the cgroup, in the network
// namespace at netnsPath (e.g. /proc/PID/ns/net), entered with nsenter.
func HelperIn(ctx context.Context, netnsPath, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netnsPath, os.Args[0]}, args...)...)
	cmd.Env = append(os.Environ(), envHelper+"="+name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// BPFFS mounts a private bpffs for the test and unmounts it at the end.
func BPFFS(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "sockmesh-bpffs-")
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		tb.Fatalf("mount bpffs: %v", err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount bpffs %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir
}
