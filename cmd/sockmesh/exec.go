package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"sockmesh/internal/cgroupv2"
	"sockmesh/lb"
)

// defaultExecCgroup is the child of the mesh cgroup exec runs commands in.
const defaultExecCgroup = "sockmesh-exec"

func newExecCmd() *cobra.Command {
	var paths pathFlags
	var cgroup string
	var keepResolver bool
	cmd := &cobra.Command{
		Use:   "exec [--cgroup NAME] -- CMD [ARGS...]",
		Short: "Run one command inside the mesh, resolving names through the DNS stub",
		Long: `exec runs CMD in a child of the cgroup the datapath is attached to (NAME,
default sockmesh-exec, created when missing), so its connections to VIPs are
load-balanced while the rest of the host is untouched. Without --cgroup, a
process already inside the mesh cgroup (all of them when the mesh is the
whole host) stays where it is. CMD also gets a private
mount namespace whose /etc/resolv.conf names the daemon's DNS stub, so
  sockmesh exec -- curl http://hello.mesh.internal/
works without changing the host's resolver. exec replaces itself with CMD:
CMD's exit status is exec's.`,
		Example: `  sockmesh exec -- curl http://hello.mesh.internal/
  sockmesh exec --cgroup batch -- python3 job.py`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return fmt.Errorf("exec: put the command after --, as in: sockmesh exec -- %s", strings.Join(args, " "))
			}
			return execInMesh(&paths, cgroup, cmd.Flags().Changed("cgroup"), !keepResolver, args)
		},
	}
	paths.add(cmd)
	cmd.Flags().StringVar(&cgroup, "cgroup", defaultExecCgroup, "cgroup to run in: a name under the mesh cgroup, or a path inside it")
	cmd.Flags().BoolVar(&keepResolver, "keep-resolver", false, "leave /etc/resolv.conf as it is")
	return cmd
}

// meshCgroup is the cgroup the pinned programs are attached to, as the
// state file names it and the pinned links confirm.
func meshCgroup(paths *pathFlags) (string, *daemonState, error) {
	st, err := readState(paths.stateFile())
	if err != nil {
		return "", nil, err
	}
	pinned, err := lb.ReadPinned(paths.pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil, fmt.Errorf("find the mesh: no datapath is pinned in %s (start one with sockmesh run)", paths.pinDir)
	}
	if err != nil {
		return "", nil, err
	}
	if st == nil || st.Cgroup == "" {
		return "", nil, fmt.Errorf("find the mesh: no state file %s says where the datapath is attached", paths.stateFile())
	}
	id, err := cgroupv2.ID(st.Cgroup)
	if err != nil {
		return "", nil, fmt.Errorf("find the mesh: %w", err)
	}
	for _, l := range pinned.Links {
		if l.CgroupID != id {
			return "", nil, fmt.Errorf("find the mesh: %s is not attached to %s any more (restart sockmesh run)", l.Program, st.Cgroup)
		}
	}
	return st.Cgroup, st, nil
}

func execInMesh(paths *pathFlags, name string, named, resolver bool, args []string) error {
	mesh, st, err := meshCgroup(paths)
	if err != nil {
		return err
	}
	if resolver {
		// With the daemon down, the stub is too: every name would fail,
		// while VIPs still route. Keep the host's resolver then.
		if running, err := lb.Held(paths.pinDir); err != nil || !running {
			fmt.Fprintln(os.Stderr, "sockmesh: warning: the daemon is not running, so neither is its DNS stub: keeping the host's resolver (VIPs still route)")
			resolver = false
		}
	}
	target := name
	if !filepath.IsAbs(target) {
		target = filepath.Join(mesh, name)
	}
	target = filepath.Clean(target)
	if target != mesh && !strings.HasPrefix(target, mesh+"/") {
		return fmt.Errorf("parse --cgroup: %s is not inside the mesh cgroup %s", target, mesh)
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		return fmt.Errorf("exec %s: %w", args[0], err)
	}
	var conf []byte
	if resolver {
		if conf, err = stubResolvConf(st); err != nil {
			return err
		}
	}
	if !named && inside(mesh) {
		target = "" // already load-balanced where it is
	} else if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	// Namespaces belong to threads: the unshare, the mount and the exec
	// must all happen on this one.
	runtime.LockOSThread()
	if conf != nil {
		if err := privateResolvConf(conf); err != nil {
			return err
		}
	}
	// Join the cgroup last, just before the exec, so no socket of ours is
	// made inside it.
	if target != "" {
		if err := os.WriteFile(filepath.Join(target, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("join cgroup %s: %w", target, err)
		}
	}
	if err := unix.Exec(path, args, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// stubResolvConf is a resolv.conf asking the daemon's DNS stub, keeping
// the host's search and options lines.
func stubResolvConf(st *daemonState) ([]byte, error) {
	var stub netip.AddrPort
	for _, s := range st.DNSListen {
		ap, err := netip.ParseAddrPort(s)
		if err == nil && ap.Addr().Is4() || err == nil && !stub.IsValid() {
			stub = ap
		}
	}
	if !stub.IsValid() {
		return nil, errors.New("set up the resolver: the daemon runs no DNS stub (--dns-listen off); use --keep-resolver")
	}
	if stub.Port() != 53 {
		return nil, fmt.Errorf("set up the resolver: the stub listens on %s and resolv.conf can only name port 53; use --keep-resolver", stub)
	}
	addr := stub.Addr()
	if addr.IsUnspecified() {
		addr = netip.IPv6Loopback()
		if stub.Addr().Is4() {
			addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# sockmesh exec: names resolve through the sockmesh DNS stub, which\n# forwards names outside %s to the host's resolvers.\nnameserver %s\n", st.DNSZone, addr)
	if host, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(host))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) > 0 && (f[0] == "search" || f[0] == "domain" || f[0] == "options") {
				b.WriteString(sc.Text() + "\n")
			}
		}
	}
	return b.Bytes(), nil
}

// privateResolvConf gives this thread a mount namespace of its own whose
// /etc/resolv.conf holds conf; the host's stays as it is.
func privateResolvConf(conf []byte) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("create mount namespace: %w", err)
	}
	// Mounts made here must not propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	f, err := os.CreateTemp("", "sockmesh-resolv-*.conf")
	if err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	// The bind mount keeps the file alive after it is unlinked.
	defer os.Remove(f.Name())
	if _, err := f.Write(conf); err != nil {
		f.Close()
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	f.Close()
	if err := unix.Mount(f.Name(), "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return errors.New("mount resolv.conf: /etc/resolv.conf is missing or a dangling link (systemd-resolved stopped?); use --keep-resolver")
		}
		return fmt.Errorf("mount resolv.conf: %w", err)
	}
	return nil
}

// inside reports whether this process's cgroup v2 is cgroup or below it.
func inside(cgroup string) bool {
	root, err := cgroupv2.Mountpoint()
	if err != nil {
		return false
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(data)) {
		if rel, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			self := filepath.Join(root, rel)
			return self == cgroup || strings.HasPrefix(self, cgroup+"/")
		}
	}
	return false
}
