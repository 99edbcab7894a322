package cgroupv2

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		err            error
	}{
		{"hybrid", "25 1 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", nil},
		{"unified", "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", nil},
		{"escaped", `30 24 0:26 / /mnt/my\040cg rw - cgroup2 none rw` + "\n", "/mnt/my cg", nil},
		{"v1 only", "33 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "", ErrNotMounted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tc.in))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("parseMountinfo = %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}
