package registry

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"sockmesh/lb"
	"sockmesh/servicefile"
)

// Service is a service of a snapshot: the contents of one file and the
// VIPs it got.
type Service struct {
	*servicefile.Service
	// File is the path of the file that defines the service.
	File string
	// VIPs are the service's addresses, IPv4 first: those the file sets or,
	// when it sets none, those derived from the name.
	VIPs []netip.Addr
	// Derived is true when the VIPs come from the name.
	Derived bool
	// Stale is true when the file now has errors and this is the last good
	// version, still served.
	Stale bool
}

// Snapshot is an immutable view of the registry: the services being
// served and every problem found. A new one replaces it after each change.
type Snapshot struct {
	// Generation counts the snapshots a registry has made, from 1.
	Generation uint64
	// Dir is the services directory.
	Dir string
	// Services are sorted by name.
	Services []Service
	// Errors are the current problems, sorted by file and line. A file
	// with errors keeps its last good version live (Service.Stale).
	Errors []*servicefile.Error
	// Collisions are names whose derived address went to another service.
	Collisions []Collision
	// Datapath is what the services expand to: one entry per VIP and port.
	Datapath []lb.Service
	// Applied is when the datapath took this snapshot, and ApplyTime how
	// long that took (zero for a snapshot that was only checked).
	Applied   time.Time
	ApplyTime time.Duration
	// Stats are the datapath writes of the last apply.
	Stats lb.ApplyStats
}

// Lookup finds a service by name.
func (s *Snapshot) Lookup(name string) (Service, bool) {
	i, ok := slices.BinarySearchFunc(s.Services, name, func(sv Service, n string) int { return cmp.Compare(sv.Name, n) })
	if !ok {
		return Service{}, false
	}
	return s.Services[i], true
}

// Err joins all errors, or returns nil when there are none.
func (s *Snapshot) Err() error {
	if len(s.Errors) == 0 {
		return nil
	}
	return servicefile.Errors(s.Errors)
}

// fileState is what the registry knows of one file.
type fileState struct {
	id fileID
	// cur is the file's contents when they are valid on their own.
	cur *servicefile.Service
	// errs are the file's own problems (parse, owner, mode).
	errs []*servicefile.Error
	// live is the version the datapath serves, nil if none.
	live *servicefile.Service
}

// plan is a desired state worked out from the files.
type plan struct {
	accepted map[string]*servicefile.Service // by path
	snap     *Snapshot
}

// key is what a client dials: two services cannot share one.
type key struct {
	vip   netip.Addr
	port  uint16
	proto lb.Proto
}

// localKey is a backend address whose getsockname a local-name service
// rewrites: only one service can claim it.
type localKey struct {
	addr  netip.AddrPort
	proto lb.Proto
}

// assembler accepts services one at a time, refusing those that clash with
// what it already accepted or do not fit the maps.
type assembler struct {
	ranges Ranges
	limits lb.Limits
	names  map[string]string // name -> path
	keys   map[key]string    // explicit VIP:port:proto -> name
	locals map[localKey]string
	usage  lb.Usage
}

// check returns why svc cannot join the accepted set (nil if it can), and
// on success adds it.
func (a *assembler) check(path string, svc *servicefile.Service) []*servicefile.Error {
	var errs []*servicefile.Error
	bad := func(pos servicefile.Pos, field, format string, args ...any) {
		errs = append(errs, &servicefile.Error{File: path, Pos: pos, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if other, dup := a.names[svc.Name]; dup {
		bad(svc.NamePos, "name", "%q is already the name of the service in %s: names are unique across files", svc.Name, other)
	}
	for i, vip := range svc.VIPs {
		if !a.ranges.contains(vip) {
			bad(svc.VIPPos[i], "vip", "%s is outside the VIP ranges (%s): pick an address inside, or leave vip out to derive one", vip, a.ranges)
			continue
		}
		for _, p := range svc.Ports {
			if other, dup := a.keys[key{vip, p.Number, p.Proto}]; dup {
				bad(svc.VIPPos[i], "vip", "%s port %s is already served by service %q: two services cannot share a VIP, port and protocol", vip, p, other)
			}
		}
	}
	var locals []localKey
	if svc.LocalName {
		for _, p := range svc.Ports {
			for _, b := range svc.Backends {
				lk := localKey{netip.AddrPortFrom(b.Addr, b.TargetPort(p)), p.Proto}
				if other, dup := a.locals[lk]; dup {
					bad(b.Pos, "local_name", "backend %s/%s already reports service %q to getsockname: only one service can", lk.addr, p.Proto, other)
				}
				locals = append(locals, lk)
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	u := a.usage
	nvips := max(len(svc.VIPs), len(svc.Families))
	for _, s := range svc.LBServices(placeholderVIPs(nvips)) {
		u.Add(s)
	}
	if err := u.Fits(a.limits); err != nil {
		bad(svc.NamePos, "backends", "the service does not fit the datapath maps with the services before it: %v", err)
		return errs
	}
	a.usage = u
	a.names[svc.Name] = path
	for _, vip := range svc.VIPs {
		for _, p := range svc.Ports {
			a.keys[key{vip, p.Number, p.Proto}] = svc.Name
		}
	}
	for _, lk := range locals {
		a.locals[lk] = svc.Name
	}
	return nil
}

// placeholderVIPs stand in for VIPs when only the count matters.
func placeholderVIPs(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
	}
	return out
}

// keep accepts a live version; it can only fail when a file edited or
// added in the same batch took its place (names or keys swapped between
// files), and then the service is reported as no longer served.
func (p *plan) keep(a *assembler, path string, live *servicefile.Service, stale bool) {
	errs := a.check(path, live)
	if errs == nil {
		p.accepted[path] = live
		return
	}
	what := "the service"
	if stale {
		what = "the last good version"
	}
	p.snap.Errors = append(p.snap.Errors, &servicefile.Error{File: path, Msg: fmt.Sprintf("%s (%q) clashes and is no longer served: %v", what, live.Name, servicefile.Errors(errs))})
}

// assemble works out what to serve. Services that are live and stay so are
// placed first, so a new or edited file that clashes with them is the one
// refused; among the rest, files go in path order. A refused file keeps its
// last good version when that still fits.
func assemble(dir string, files map[string]*fileState, ranges Ranges, limits lb.Limits) *plan {
	a := &assembler{
		ranges: ranges,
		limits: limits,
		names:  map[string]string{},
		keys:   map[key]string{},
		locals: map[localKey]string{},
	}
	paths := slices.Sorted(maps.Keys(files))
	p := &plan{accepted: map[string]*servicefile.Service{}, snap: &Snapshot{Dir: dir}}
	stale := map[string]bool{}
	// First what is live and stays so: unchanged files, and the last good
	// version of files whose new contents are invalid on their own.
	var changed []string
	for _, path := range paths {
		f := files[path]
		p.snap.Errors = append(p.snap.Errors, f.errs...)
		switch {
		case f.cur != nil && f.cur != f.live:
			changed = append(changed, path)
		case f.live != nil:
			p.keep(a, path, f.live, f.cur == nil)
			stale[path] = f.cur == nil
		}
	}
	// Then new and edited files; one that clashes keeps its last good
	// version when that still fits.
	for _, path := range changed {
		f := files[path]
		errs := a.check(path, f.cur)
		if errs == nil {
			p.accepted[path] = f.cur
			continue
		}
		p.snap.Errors = append(p.snap.Errors, errs...)
		if f.live != nil {
			p.keep(a, path, f.live, true)
			stale[path] = true
		}
	}

	// Derive addresses for services that set none.
	taken := map[netip.Addr]string{}
	var ds []*derivation
	byName := map[string][]*derivation{}
	for _, svc := range p.accepted {
		for _, vip := range svc.VIPs {
			if _, ok := taken[vip]; !ok {
				taken[vip] = svc.Name
			}
		}
		if len(svc.VIPs) == 0 {
			for _, fam := range svc.Families {
				d := &derivation{name: svc.Name, family: fam}
				ds = append(ds, d)
				byName[svc.Name] = append(byName[svc.Name], d)
			}
		}
	}
	p.snap.Collisions = deriveVIPs(ds, taken, ranges)

	for path, svc := range p.accepted {
		s := Service{Service: svc, File: path, Stale: stale[path], VIPs: slices.Clone(svc.VIPs)}
		if len(svc.VIPs) == 0 {
			s.Derived = true
			for _, d := range byName[svc.Name] {
				if d.addr.IsValid() {
					s.VIPs = append(s.VIPs, d.addr)
				}
			}
		}
		slices.SortFunc(s.VIPs, func(x, y netip.Addr) int { return x.Compare(y) })
		p.snap.Services = append(p.snap.Services, s)
		p.snap.Datapath = append(p.snap.Datapath, svc.LBServices(s.VIPs)...)
	}
	for _, c := range p.snap.Collisions {
		if !c.Got.IsValid() {
			svc := p.snap.Services[slices.IndexFunc(p.snap.Services, func(s Service) bool { return s.Name == c.Name })]
			p.snap.Errors = append(p.snap.Errors, &servicefile.Error{File: svc.File, Pos: svc.NamePos, Field: "vip", Msg: c.String()})
		}
	}
	slices.SortFunc(p.snap.Services, func(x, y Service) int { return cmp.Compare(x.Name, y.Name) })
	sortErrors(p.snap.Errors)
	return p
}

func sortErrors(es []*servicefile.Error) {
	slices.SortStableFunc(es, func(a, b *servicefile.Error) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
}
