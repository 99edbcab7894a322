package sockdiag

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Netns is an open handle on a network namespace.
type Netns struct {
	f   *os.File
	key nsKey
}

// nsKey identifies a namespace: the device and inode of its nsfs file.
type nsKey struct{ dev, ino uint64 }

// OpenNetns opens the network namespace file at path, such as
// /proc/<pid>/ns/net or a file bind-mounted by ip netns.
func OpenNetns(path string) (*Netns, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	ns, err := newNetns(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return ns, nil
}

func newNetns(f *os.File) (*Netns, error) {
	fd := int(f.Fd())
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return nil, fmt.Errorf("namespace type: %w", err)
	}
	if typ != unix.CLONE_NEWNET {
		return nil, errors.New("not a network namespace")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	return &Netns{f: f, key: nsKey{st.Dev, st.Ino}}, nil
}

// String names the namespace as readlink of /proc/<pid>/ns/net does.
func (n *Netns) String() string { return fmt.Sprintf("net:[%d]", n.key.ino) }

// Close closes the handle.
func (n *Netns) Close() error { return n.f.Close() }

// do runs fn on a thread switched into the namespace, and returns the
// thread to the caller's namespace. fn must only create file descriptors:
// they keep the namespace they were created in.
func (n *Netns) do(fn func() (int, error)) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	// A goroutine of its own: if the thread cannot be switched back, the
	// goroutine ends still locked to it and the runtime discards the
	// thread instead of running other goroutines in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		fd, err, back := n.doLocked(fn)
		if back {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// doLocked is do on the locked thread. back reports whether the thread is
// in its original namespace again.
func (n *Netns) doLocked(fn func() (int, error)) (fd int, err error, back bool) {
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open own network namespace: %w", err), true
	}
	defer unix.Close(orig)
	var st unix.Stat_t
	if err := unix.Fstat(orig, &st); err != nil {
		return -1, fmt.Errorf("stat own network namespace: %w", err), true
	}
	if (nsKey{st.Dev, st.Ino}) == n.key {
		fd, err := fn()
		return fd, err, true
	}
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		return -1, fmt.Errorf("enter network namespace %s: %w", n, err), true
	}
	fd, err = fn()
	if berr := unix.Setns(orig, unix.CLONE_NEWNET); berr != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("leave network namespace %s: %w", n, berr), false
	}
	return fd, err, true
}

// Namespaces returns an open handle for each distinct network namespace of
// the threads in the cgroup v2 subtree at cgroupPath, plus the caller's own
// namespace, which comes first. It reads cgroup.threads rather than
// cgroup.procs, because a thread can enter a namespace of its own (setns,
// unshare) and open sockets there while the rest of its process stays out.
// Threads that exit meanwhile and cgroups removed meanwhile are skipped.
//
// Handles that could be opened are returned even with an error (which
// then joins the failures for the rest); the caller closes them all.
func Namespaces(cgroupPath string) ([]*Netns, error) {
	own, err := OpenNetns("/proc/self/ns/net")
	if err != nil {
		return nil, err
	}
	out := []*Netns{own}
	seen := map[nsKey]bool{own.key: true}
	tids, errs, err := cgroupThreads(cgroupPath)
	if err != nil {
		own.Close()
		return nil, err
	}
	for _, tid := range tids {
		path := "/proc/" + strconv.Itoa(tid) + "/ns/net"
		// Stat first: most threads share a namespace already seen.
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			if !gone(err) {
				errs = append(errs, fmt.Errorf("network namespace of thread %d: %w", tid, err))
			}
			continue
		}
		if seen[nsKey{st.Dev, st.Ino}] {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			if !gone(err) {
				errs = append(errs, fmt.Errorf("network namespace of thread %d: %w", tid, err))
			}
			continue
		}
		ns, err := newNetns(f)
		if err != nil {
			f.Close()
			errs = append(errs, fmt.Errorf("network namespace of thread %d: %w", tid, err))
			continue
		}
		if seen[ns.key] { // the thread moved between stat and open
			ns.Close()
			continue
		}
		seen[ns.key] = true
		out = append(out, ns)
	}
	return out, errors.Join(errs...)
}

// gone reports whether err says the thread or its namespace no longer
// exists.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// cgroupThreads lists the thread ids of the cgroup v2 subtree at root,
// each once. err is set if root itself cannot be read; errs collects the
// failures below it (cgroups removed meanwhile are not failures).
func cgroupThreads(root string) (ids []int, errs []error, err error) {
	seen := map[int]bool{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			var list []int
			list, err = readIDs(filepath.Join(path, "cgroup.threads"))
			for _, id := range list {
				if !seen[id] {
					seen[id] = true
					ids = append(ids, id)
				}
			}
		}
		switch {
		case err == nil:
			return nil
		case path == root:
			return err
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, err)
		}
		if d != nil && d.IsDir() {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, errs, fmt.Errorf("list threads of cgroup %s: %w", root, err)
	}
	return ids, errs, nil
}

// readIDs reads a cgroup.threads or cgroup.procs file: one id a line.
func readIDs(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseIDs(b)
}

func parseIDs(b []byte) ([]int, error) {
	var ids []int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		id, err := strconv.Atoi(string(line))
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("bad id %q", line)
		}
		ids = append(ids, id)
	}
	return ids, sc.Err()
}
