package lb

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"sockmesh/internal/cgroupv2"
)

// Options configure Open.
type Options struct {
	// PinDir is the bpffs directory that holds the pinned maps and links,
	// e.g. /sys/fs/bpf/sockmesh. If its parent is not on a bpffs, a bpffs
	// is mounted there.
	PinDir string
	// MaxServiceEntries, MaxBackends and MaxCounters size the maps when
	// they are first created; zero keeps the defaults of bpf/sockmesh.h.
	// Pinned maps keep the size they were created with.
	MaxServiceEntries, MaxBackends, MaxCounters int
}

// Datapath is the loaded datapath: programs, pinned maps and (after Attach)
// pinned links. Close releases this process's handles; the pins, and with
// them the datapath, stay until Remove.
type Datapath struct {
	pinDir string
	colls  []*ebpf.Collection
	progs  map[string]*ebpf.Program
	specs  map[string]*ebpf.ProgramSpec
	maps   map[string]*ebpf.Map
	meta   *ebpf.Map
	links  []link.Link
	tables tables

	mu sync.Mutex
	w  *writer
}

// The object files, one per program file in bpf/.
var objects = []struct {
	name string
	load func() (*ebpf.CollectionSpec, error)
}{
	{"connect", loadConnect},
	{"sendmsg", loadSendmsg},
	{"recvmsg", loadRecvmsg},
	{"getname", loadGetname},
}

const metaMapName = "sm_meta"

// Open loads the programs and opens the maps, creating and pinning the
// maps on first use and reusing the pinned ones after a restart, in which
// case the writer's view of the services is restored from them.
func Open(opts Options) (*Datapath, error) {
	if opts.PinDir == "" {
		return nil, errors.New("open datapath: no pin directory")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	if err := EnsureBPFFS(filepath.Dir(opts.PinDir)); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	d := &Datapath{
		pinDir: opts.PinDir,
		progs:  make(map[string]*ebpf.Program),
		specs:  make(map[string]*ebpf.ProgramSpec),
		maps:   make(map[string]*ebpf.Map),
	}
	if err := d.load(opts); err != nil {
		d.Close()
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	return d, nil
}

func (d *Datapath) load(opts Options) error {
	sizes := map[string]int{
		"sm_services": opts.MaxServiceEntries,
		"sm_backends": opts.MaxBackends,
		"sm_counters": opts.MaxCounters,
	}
	carried, err := retirePerCPUCounters(d.pinDir)
	if err != nil {
		return err
	}
	for _, obj := range objects {
		spec, err := obj.load()
		if err != nil {
			return err
		}
		for name, m := range spec.Maps {
			// Every object declares the same maps; pinning by name makes
			// the first object create them and the others reuse them.
			m.Pinning = ebpf.PinByName
			if n := sizes[name]; n > 0 {
				m.MaxEntries = uint32(n)
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
			Maps: ebpf.MapOptions{PinPath: d.pinDir},
		})
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("load %s: the maps pinned in %s are from an incompatible version (run 'sockmesh down' to remove them): %w", obj.name, d.pinDir, err)
		}
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				return fmt.Errorf("load %s: %+v", obj.name, ve)
			}
			return fmt.Errorf("load %s: %w", obj.name, err)
		}
		d.colls = append(d.colls, coll)
		for name, p := range coll.Programs {
			d.progs[name] = p
			d.specs[name] = spec.Programs[name]
		}
		for name, m := range coll.Maps {
			d.maps[name] = m
		}
	}
	meta, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name:       metaMapName,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: 1,
		Pinning:    ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: d.pinDir})
	if err != nil {
		return fmt.Errorf("create %s: %w", metaMapName, err)
	}
	d.meta = meta
	d.tables = tables{
		services:   kernelTable[svcKey, svcValue]{d.maps["sm_services"]},
		backends:   kernelTable[uint32, backendValue]{d.maps["sm_backends"]},
		counters:   kernelTable[uint32, counterValue]{d.maps["sm_counters"]},
		localNames: kernelTable[localKey, localValue]{d.maps["sm_local_names"]},
		filter:     kernelTable[uint32, vipFilter]{d.maps["sm_vip_filter"]},
		opts:       kernelTable[uint32, optsValue]{d.maps["sm_svc_opts"]},
		meta:       kernelTable[uint32, uint64]{meta},
	}
	lim := Limits{
		ServiceEntries: int(d.maps["sm_services"].MaxEntries()),
		Backends:       int(d.maps["sm_backends"].MaxEntries()),
		Counters:       int(d.maps["sm_counters"].MaxEntries()),
		LocalNames:     int(d.maps["sm_local_names"].MaxEntries()),
		Options:        int(d.maps["sm_svc_opts"].MaxEntries()),
	}
	if err := carryCounters(d.tables.counters, carried); err != nil {
		return err
	}
	d.w, err = newWriter(d.tables, lim)
	return err
}

// ProgramNames lists the programs in the order Attach attaches them.
func (d *Datapath) ProgramNames() []string {
	return slices.Sorted(maps.Keys(d.progs))
}

func linkPin(pinDir, prog string) string {
	return filepath.Join(pinDir, "link_"+strings.TrimPrefix(prog, "sm_"))
}

// Attach attaches every program to the cgroup v2 at cgroupPath with BPF
// links and pins the links. Links pinned by an earlier process are kept and
// switched to this process's programs with an atomic replace: traffic never
// sees a moment without a program.
func (d *Datapath) Attach(cgroupPath string) error {
	id, err := cgroupv2.ID(cgroupPath)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	for _, name := range d.ProgramNames() {
		l, err := d.attachOne(name, cgroupPath, id)
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", name, cgroupPath, err)
		}
		d.links = append(d.links, l)
	}
	return nil
}

func (d *Datapath) attachOne(name, cgroupPath string, cgroupID uint64) (link.Link, error) {
	prog, spec := d.progs[name], d.specs[name]
	pin := linkPin(d.pinDir, name)
	if _, err := os.Stat(pin); err == nil {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned link: %w", err)
		}
		info, err := l.Info()
		if err != nil {
			l.Close()
			return nil, err
		}
		if cg := info.Cgroup(); cg == nil || cg.CgroupId != cgroupID {
			l.Close()
			return nil, fmt.Errorf("%s is attached to another cgroup: run 'sockmesh down' first to move it", pin)
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("replace program: %w", err)
		}
		return l, nil
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: spec.AttachType, Program: prog})
	if err != nil {
		return nil, err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin link: %w", err)
	}
	return l, nil
}

// Apply converges the maps to services: what is not listed is removed,
// what is listed is added or updated, and nothing unchanged is written.
// An invalid set is refused whole, before any write.
func (d *Datapath) Apply(services []Service) (ApplyStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.apply(services)
}

// Services returns what the maps serve now (after a restart: what the
// previous process left).
func (d *Datapath) Services() []Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.Services()
}

// Dump returns a stable, sorted text picture of the maps.
func (d *Datapath) Dump() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dump(d.tables)
}

// ProgramStats is how often a program ran and for how long in all, as the
// kernel counts it while BPF stats are enabled (EnableProgramStats).
type ProgramStats struct {
	Runs    uint64
	Runtime time.Duration
}

// PerRun is the mean run time.
func (s ProgramStats) PerRun() time.Duration {
	if s.Runs == 0 {
		return 0
	}
	return s.Runtime / time.Duration(s.Runs)
}

// ProgramStats reads the kernel's run counters of every program.
func (d *Datapath) ProgramStats() (map[string]ProgramStats, error) {
	out := make(map[string]ProgramStats)
	for name, p := range d.progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("read stats of %s: %w", name, err)
		}
		out[name] = ProgramStats{Runs: st.RunCount, Runtime: st.Runtime}
	}
	return out, nil
}

// EnableProgramStats turns on the kernel's per-program run time accounting
// (kernel.bpf_stats_enabled) until the returned closer is closed.
func EnableProgramStats() (interface{ Close() error }, error) {
	c, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable bpf stats: %w", err)
	}
	return c, nil
}

// Close releases this process's handles. Pinned maps and links stay, and
// with them the datapath.
func (d *Datapath) Close() error {
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	for _, c := range d.colls {
		c.Close()
	}
	d.colls = nil
	if d.meta != nil {
		errs = append(errs, d.meta.Close())
		d.meta = nil
	}
	return errors.Join(errs...)
}

// Remove detaches the programs pinned in pinDir and deletes every pin and
// the directory: the host is as before. A missing directory is not an
// error.
func Remove(pinDir string) error {
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove datapath: %w", err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(pinDir, e.Name())
		if strings.HasPrefix(e.Name(), "link_") {
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("open link %s: %w", p, err))
				continue
			}
			// Unpin, then close the last reference: the link detaches.
			errs = append(errs, l.Unpin(), l.Close())
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("remove pin: %w", err))
		}
	}
	if err := os.Remove(pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove datapath: %w", err)
	}
	return nil
}

// IsBPFFS reports whether dir is on a bpffs.
func IsBPFFS(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && fs.Type == unix.BPF_FS_MAGIC
}

// EnsureBPFFS mounts a bpffs at dir unless dir already is on one.
func EnsureBPFFS(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}
