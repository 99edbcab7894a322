// Package cgroupv2 finds the cgroup v2 hierarchy and names cgroups in it.
package cgroupv2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotMounted is returned when no cgroup2 filesystem is mounted.
var ErrNotMounted = errors.New("no cgroup2 filesystem is mounted")

// Mountpoint returns where the cgroup v2 hierarchy is mounted, read from
// /proc/self/mountinfo (/sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified
// on hybrid ones).
func Mountpoint() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 4 && fields[i+1] == "cgroup2" {
				return unescape(fields[4]), nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", ErrNotMounted
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ID returns the id of the cgroup at path: the inode number of its
// directory, which is what the kernel reports in link info.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("statfs cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not on a cgroup2 filesystem", path)
	}
	return st.Ino, nil
}

// Level returns the depth of the cgroup at path below the cgroup v2 root
// mounted at root (the root is level 0): what the kernel calls the
// cgroup's level, as bpf_get_current_ancestor_cgroup_id counts it, when
// root is the host's cgroup v2 root (no cgroup namespace in between).
func Level(root, path string) (uint32, error) {
	rel, err := filepath.Rel(filepath.Clean(root), filepath.Clean(path))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return 0, fmt.Errorf("cgroup %s: not under the cgroup v2 mount %s", path, root)
	}
	if rel == "." {
		return 0, nil
	}
	return uint32(strings.Count(rel, "/") + 1), nil
}
