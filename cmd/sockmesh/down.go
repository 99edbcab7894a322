package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"sockmesh/internal/hostnet"
	"sockmesh/lb"
)

func newDownCmd() *cobra.Command {
	var paths pathFlags
	var all bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Detach the programs and remove the pins, routes and addresses sockmesh added: the host is as before",
		Long: `down undoes sockmesh run: it detaches the socket programs, deletes the pinned
maps and links, removes the unreachable routes of the VIP ranges and the DNS
stub's address on lo if run added it, the cgroups run and exec created (when
empty), the bpffs run mounted (when empty) and the state file. What it
removes from the host's network is what the state file of this pin directory
records, so other instances are left alone; --all sweeps every route and
address any sockmesh made. Connections already made keep working; new
connects to VIPs fail. It refuses while a daemon serves the pin directory:
stop that first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return down(cmd.OutOrStdout(), &paths, all)
		},
	}
	paths.add(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "also remove every route and lo address any sockmesh instance made (proto 158, label lo:sockmesh), for when the state file is lost")
	return cmd
}

func down(out io.Writer, paths *pathFlags, all bool) error {
	st, err := readState(paths.stateFile())
	if err != nil {
		fmt.Fprintf(os.Stderr, "sockmesh: warning: %v: removing the pins, and the routes and addresses only with --all\n", err)
		st = nil
	}
	// Hold the pin directory for the whole of down, so no daemon starts
	// while its routes and state are being removed.
	var lock *lb.PinLock
	if _, err := os.Stat(paths.pinDir); err == nil {
		for range 10 {
			if lock, err = lb.TryLock(paths.pinDir); !errors.Is(err, lb.ErrLocked) {
				break
			}
			time.Sleep(20 * time.Millisecond) // a status probe, or a daemon
		}
		if errors.Is(err, lb.ErrLocked) {
			pid := ""
			if st != nil {
				pid = fmt.Sprintf(" (pid %d)", st.PID)
			}
			return fmt.Errorf("a sockmesh daemon%s serves %s: stop it first (systemctl stop sockmesh, or kill -TERM the pid), then run down again", pid, paths.pinDir)
		}
		if err != nil {
			return err
		}
		defer func() {
			if lock != nil {
				lock.Unlock()
			}
		}()
		links := 0
		if p, err := lb.ReadPinned(paths.pinDir); err == nil {
			links = len(p.Links)
		}
		if err := lb.Remove(paths.pinDir); err != nil {
			return err
		}
		fmt.Fprintf(out, "detached %d programs and removed the pins in %s\n", links, paths.pinDir)
	} else {
		fmt.Fprintf(out, "nothing pinned in %s\n", paths.pinDir)
	}

	var errs []error
	var routes []netip.Prefix
	var addrs []netip.Addr
	switch {
	case all:
		routes, err = hostnet.RemoveRoutes()
		errs = append(errs, err)
		addrs, err = hostnet.OurLocalAddrs()
		errs = append(errs, err)
	case st != nil:
		routes, err = hostnet.RemoveRoutesFor(st.Routes)
		errs = append(errs, err)
	default:
		fmt.Fprintf(out, "no state in %s: left any routes and lo addresses alone (--all removes every one sockmesh made)\n", paths.stateDir)
	}
	if len(routes) > 0 {
		fmt.Fprintf(out, "removed the unreachable routes %s\n", joinStrings(routes))
	}
	if st != nil {
		addrs = append(addrs, st.LocalAddrs...)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range slices.Compact(addrs) {
		if err := hostnet.RemoveLocal(a); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "removed %s from lo\n", a)
	}
	if err := os.Remove(paths.stateFile()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove state: %w", err))
	}
	_ = os.Remove(paths.stateDir) // only when empty
	if st != nil {
		errs = append(errs, removeCgroups(out, st))
		if lock != nil {
			// The lock's file holds the bpffs busy: drop it to unmount.
			lock.Unlock()
			lock = nil
		}
		if st.BPFFSMounted != "" {
			errs = append(errs, unmountIfEmpty(out, st.BPFFSMounted))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the exec cgroups under the mesh cgroup, and the
// mesh cgroup itself when run created it, as long as they are empty.
func removeCgroups(out io.Writer, st *daemonState) error {
	if st.Cgroup == "" {
		return nil
	}
	exec := filepath.Join(st.Cgroup, defaultExecCgroup)
	if err := unix.Rmdir(exec); err == nil {
		fmt.Fprintf(out, "removed cgroup %s\n", exec)
	}
	if !st.CgroupCreated {
		return nil
	}
	switch err := unix.Rmdir(st.Cgroup); {
	case err == nil:
		fmt.Fprintf(out, "removed cgroup %s\n", st.Cgroup)
	case errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOTEMPTY):
		fmt.Fprintf(out, "left cgroup %s: processes or child cgroups are still in it\n", st.Cgroup)
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("remove cgroup %s: %w", st.Cgroup, err)
	}
	return nil
}

// unmountIfEmpty unmounts a bpffs run mounted, unless something else has
// pinned objects there since.
func unmountIfEmpty(out io.Writer, dir string) error {
	if !lb.IsBPFFS(dir) {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		// The kernel's own iterators (maps.debug, progs.debug) are in
		// every bpffs; anything else was pinned by someone.
		if !strings.HasSuffix(e.Name(), ".debug") {
			return nil
		}
	}
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount bpffs %s: %w", dir, err)
	}
	fmt.Fprintf(out, "unmounted the bpffs at %s\n", dir)
	return nil
}

func joinStrings[T fmt.Stringer](xs []T) string {
	var s []string
	for _, x := range xs {
		s = append(s, x.String())
	}
	return strings.Join(s, " ")
}
