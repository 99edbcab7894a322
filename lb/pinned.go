package lb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Pinned is what a pin directory holds, read without loading programs or
// writing anything: for status while no daemon runs, and for down.
type Pinned struct {
	// Services are what the maps serve, with weights as slot counts.
	Services []Service
	// Stats are the counters of every service and backend.
	Stats []ServiceStats
	// Links are the pinned program links and where they are attached.
	Links []PinnedLink
}

// PinnedLink is one pinned program link.
type PinnedLink struct {
	// Program is the program's name, e.g. "connect4".
	Program string
	// CgroupID is the cgroup the link attaches the program to, 0 if the
	// link is detached.
	CgroupID uint64
}

// ReadPinned reads the maps and links pinned in pinDir read-only. A pin
// directory that does not exist, or holds no maps, is os.ErrNotExist.
func ReadPinned(pinDir string) (*Pinned, error) {
	if _, err := os.Stat(filepath.Join(pinDir, "sm_services")); err != nil {
		return nil, fmt.Errorf("read pins in %s: %w", pinDir, err)
	}
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	var opened []*ebpf.Map
	defer func() {
		for _, m := range opened {
			m.Close()
		}
	}()
	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), ro)
		if err != nil {
			return nil, fmt.Errorf("read pins in %s: %w", pinDir, err)
		}
		opened = append(opened, m)
		return m, nil
	}
	var t tables
	var err error
	var m *ebpf.Map
	if m, err = open("sm_services"); err != nil {
		return nil, err
	}
	t.services = kernelTable[svcKey, svcValue]{m}
	if m, err = open("sm_backends"); err != nil {
		return nil, err
	}
	t.backends = kernelTable[uint32, backendValue]{m}
	if m, err = open("sm_counters"); err != nil {
		return nil, err
	}
	if m.Type() == ebpf.PerCPUHash {
		t.counters = percpuCounters{m} // pinned by an earlier version
	} else {
		t.counters = kernelTable[uint32, counterValue]{m}
	}
	if m, err = open("sm_local_names"); err != nil {
		return nil, err
	}
	t.localNames = kernelTable[localKey, localValue]{m}
	if _, err := os.Stat(filepath.Join(pinDir, "sm_vip_filter")); err == nil {
		if m, err = open("sm_vip_filter"); err != nil {
			return nil, err
		}
		t.filter = kernelTable[uint32, vipFilter]{m}
	}
	if _, err := os.Stat(filepath.Join(pinDir, "sm_svc_opts")); err == nil {
		if m, err = open("sm_svc_opts"); err != nil {
			return nil, err
		}
		t.opts = kernelTable[uint32, optsValue]{m}
	}
	if m, err = open(metaMapName); err != nil {
		return nil, err
	}
	t.meta = kernelTable[uint32, uint64]{m}

	// The mirror is the writer's own restore: a read racing a daemon's
	// write may catch a service between two slot regions, which then
	// shows as absent until the next read.
	w, err := newWriter(t, Limits{})
	if err != nil {
		return nil, fmt.Errorf("read pins in %s: %w", pinDir, err)
	}
	p := &Pinned{Services: w.Services()}
	if p.Stats, err = w.stats(); err != nil {
		return nil, fmt.Errorf("read pins in %s: %w", pinDir, err)
	}
	if p.Links, err = readLinks(pinDir); err != nil {
		return nil, err
	}
	return p, nil
}

func readLinks(pinDir string) ([]PinnedLink, error) {
	entries, err := os.ReadDir(pinDir)
	if err != nil {
		return nil, fmt.Errorf("read links in %s: %w", pinDir, err)
	}
	var out []PinnedLink
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "link_")
		if !ok {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, e.Name()), nil)
		if err != nil {
			return nil, fmt.Errorf("open link %s: %w", e.Name(), err)
		}
		pl := PinnedLink{Program: name}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("read link %s: %w", e.Name(), err)
		}
		if cg := info.Cgroup(); cg != nil {
			pl.CgroupID = cg.CgroupId
		}
		out = append(out, pl)
	}
	slices.SortFunc(out, func(a, b PinnedLink) int { return strings.Compare(a.Program, b.Program) })
	return out, nil
}

// IsPinned reports whether pinDir holds a datapath.
func IsPinned(pinDir string) bool {
	_, err := os.Stat(filepath.Join(pinDir, "sm_services"))
	return !errors.Is(err, os.ErrNotExist)
}
