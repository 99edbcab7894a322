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

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"sockmesh/internal/hostnet"
	"sockmesh/lb"
)

func newDownCmd() *cobra.Command {
	var paths pathFlags
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Detach the programs and remove the pins, routes and addresses sockmesh added: the host is as before",
		Long: `down undoes sockmesh run: it detaches the socket programs, deletes the pinned
maps and links, removes the unreachable routes of the VIP ranges and the DNS
stub's address on lo if run added it, the cgroups run and exec created (when
empty), the bpffs run mounted (when empty) and the state file. Connections
already made keep working; new connects to VIPs fail. It refuses while a
daemon serves the pin directory: stop that first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return down(cmd.OutOrStdout(), &paths)
		},
	}
	paths.add(cmd)
	return cmd
}

func down(out io.Writer, paths *pathFlags) error {
	st, err := readState(paths.stateFile())
	if err != nil {
		return err
	}
	if _, err := os.Stat(paths.pinDir); err == nil {
		l, err := lb.TryLock(paths.pinDir)
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
		links := 0
		if p, err := lb.ReadPinned(paths.pinDir); err == nil {
			links = len(p.Links)
		}
		err = lb.Remove(paths.pinDir)
		// The lock's file holds the bpffs busy: drop it before unmounting.
		l.Unlock()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "detached %d programs and removed the pins in %s\n", links, paths.pinDir)
	} else {
		fmt.Fprintf(out, "nothing pinned in %s\n", paths.pinDir)
	}

	var errs []error
	routes, err := hostnet.RemoveRoutes()
	errs = append(errs, err)
	if len(routes) > 0 {
		fmt.Fprintf(out, "removed the unreachable routes %s\n", joinStrings(routes))
	}
	addrs, err := hostnet.OurLocalAddrs()
	errs = append(errs, err)
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
	if st != nil {
		errs = append(errs, removeCgroups(out, st))
		if st.BPFFSMounted != "" {
			errs = append(errs, unmountIfEmpty(out, st.BPFFSMounted))
		}
	}
	if err := os.Remove(paths.stateFile()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove state: %w", err))
	}
	_ = os.Remove(paths.stateDir) // only when empty
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
