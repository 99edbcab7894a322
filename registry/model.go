package registry

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"sockmesh/lb"
	"sockmesh/servicefile"
)

// model is the accepted service set, kept between changes so that one
// edited file costs work in proportion to that file, not to the directory.
type model struct {
	ranges Ranges
	// health holds backends down; nil: none is.
	health HealthSource
	asm    *assembler
	vips   *vipTable

	accepted map[string]*servicefile.Service // by path
	// effective is accepted with the backends of backends documents
	// added (servicefile.Merge): what the assembler holds and is served.
	effective map[string]*servicefile.Service
	// Backends documents in use (their valid version, else their last
	// good one) by path, and their paths by the service they add to (in
	// path order).
	contrib  map[string]*servicefile.Service
	byTarget map[string][]string
	// mergeErrs are, by the path of a served service, the problems of the
	// backends documents' backends it left out.
	mergeErrs map[string][]*servicefile.Error
	stale     map[string]bool                 // accepted is a last good version
	clash     map[string][]*servicefile.Error // refusals found against other files
	blocked   map[string]bool                 // refused for a clash: look again next time
	final     map[string]Service              // accepted, with VIPs
	sorted    []Service                       // final, by name
}

func newModel(ranges Ranges, limits lb.Limits) *model {
	return &model{
		ranges: ranges,
		asm: &assembler{
			ranges: ranges,
			limits: limits,
			names:  map[string]string{},
			keys:   map[key]string{},
			locals: map[localKey]string{},
		},
		vips:      newVIPTable(ranges),
		accepted:  map[string]*servicefile.Service{},
		effective: map[string]*servicefile.Service{},
		contrib:   map[string]*servicefile.Service{},
		byTarget:  map[string][]string{},
		mergeErrs: map[string][]*servicefile.Error{},
		stale:     map[string]bool{},
		clash:     map[string][]*servicefile.Error{},
		blocked:   map[string]bool{},
		final:     map[string]Service{},
	}
}

// delta is what one update changed, per path: the datapath services
// before and after.
type delta struct {
	paths    []string // every path looked at
	old, cur map[string][]lb.Service
}

// change turns a delta into the datapath's put and remove lists.
func (dl delta) change() (put []lb.Service, remove []lb.ServiceKey) {
	now := map[lb.ServiceKey]bool{}
	for _, ss := range dl.cur {
		for _, s := range ss {
			now[s.Key] = true
			put = append(put, s)
		}
	}
	for _, ss := range dl.old {
		for _, s := range ss {
			if !now[s.Key] {
				now[s.Key] = true // listed once
				remove = append(remove, s.Key)
			}
		}
	}
	return put, remove
}

// update looks again at paths (changed files, present or gone) and at the
// files refused last time for clashing, and returns what changed. Services
// that are live and stay so are placed first, so a new or edited file that
// clashes with them is the one refused; among the rest, files go in path
// order. A refused file keeps its last good version when that still fits.
func (m *model) update(files map[string]*fileState, paths []string) delta {
	affected := map[string]bool{}
	for _, p := range paths {
		affected[p] = true
	}
	for _, p := range paths {
		// A backends document changed is a change of the service it
		// names (the one it named before, too).
		for _, name := range m.takeBackendsDoc(p, files[p]) {
			if sp, ok := m.asm.names[name]; ok {
				affected[sp] = true
			}
		}
		if f := files[p]; f != nil {
			for _, svc := range []*servicefile.Service{f.cur, f.live} {
				for _, hp := range m.claimedByDocs(p, svc) {
					affected[hp] = true
				}
			}
		}
	}
	for p := range m.blocked {
		affected[p] = true
	}
	order := slices.Sorted(maps.Keys(affected))
	removed := map[string]*servicefile.Service{}
	for _, p := range order {
		if svc := m.accepted[p]; svc != nil {
			m.asm.remove(m.effective[p])
			removed[p] = svc
		}
		delete(m.accepted, p)
		delete(m.effective, p)
		delete(m.mergeErrs, p)
		delete(m.stale, p)
		delete(m.clash, p)
		delete(m.blocked, p)
	}
	var changed []string
	for _, p := range order {
		f := files[p]
		switch {
		case f == nil || m.contrib[p] != nil:
		case f.cur != nil && f.cur != f.live:
			changed = append(changed, p)
		case f.live != nil:
			m.keep(p, f.live, f.cur == nil)
		}
	}
	for _, p := range changed {
		f := files[p]
		if errs := m.accept(p, f.cur, false); errs != nil {
			m.clash[p] = errs
			m.blocked[p] = true
			if f.live != nil && !f.live.BackendsOnly {
				m.keep(p, f.live, true)
			}
		}
	}
	for _, p := range order {
		if svc := m.accepted[p]; svc != nil {
			m.addBackendsDocs(p, svc)
		}
	}

	// Derived VIPs: change only what the difference touches, or redo all.
	var gone, added []dkey
	goneExp, addedExp := map[netip.Addr][]string{}, map[netip.Addr][]string{}
	for _, svc := range removed {
		collect(svc, &gone, goneExp)
	}
	for _, p := range order {
		if svc := m.accepted[p]; svc != nil {
			collect(svc, &added, addedExp)
		}
	}
	// An edited file that keeps its name and VIPs changes no derivation.
	gone, added = netOut(gone, added)
	netOutExp(goneExp, addedExp)
	before := m.vips.assign
	touched := map[string]bool{}
	for p := range affected {
		touched[p] = true
	}
	if !m.vips.change(gone, added, goneExp, addedExp) {
		var all []dkey
		exp := map[netip.Addr][]string{}
		for _, svc := range m.accepted {
			collect(svc, &all, exp)
		}
		old := before // rebuild makes new maps
		m.vips.rebuild(all, exp)
		for p, svc := range m.accepted {
			for _, f := range svc.Families {
				d := dkey{svc.Name, f}
				if len(svc.VIPs) == 0 && old[d] != m.vips.assign[d] {
					touched[p] = true
				}
			}
		}
	}

	dl := delta{paths: order, old: map[string][]lb.Service{}, cur: map[string][]lb.Service{}}
	var unsorted []string
	var fresh []Service
	for p := range touched {
		if prev, ok := m.final[p]; ok {
			dl.old[p] = prev.Datapath()
			unsorted = append(unsorted, prev.Name)
			delete(m.final, p)
		}
		svc := m.effective[p]
		if svc == nil {
			continue
		}
		s := Service{Service: svc, File: p, Stale: m.stale[p], VIPs: slices.Clone(svc.VIPs), BackendsDocs: m.backendsDocs(svc.Name)}
		if len(svc.VIPs) == 0 {
			s.Derived = true
			for _, f := range svc.Families {
				if a, ok := m.vips.assign[dkey{svc.Name, f}]; ok {
					s.VIPs = append(s.VIPs, a)
				}
			}
		}
		slices.SortFunc(s.VIPs, netip.Addr.Compare)
		if m.health != nil && svc.Health != nil {
			for _, b := range svc.Backends {
				if m.health.Down(svc.Name, b.Name()) {
					s.HealthDown = append(s.HealthDown, b.Name())
				}
			}
		}
		m.final[p] = s
		fresh = append(fresh, s)
		dl.cur[p] = s.Datapath()
	}
	m.resort(unsorted, fresh)
	return dl
}

func netOut(gone, added []dkey) ([]dkey, []dkey) {
	in := map[dkey]int{}
	for _, d := range gone {
		in[d]++
	}
	var a []dkey
	for _, d := range added {
		if in[d] > 0 {
			in[d]--
			continue
		}
		a = append(a, d)
	}
	var g []dkey
	for _, d := range gone {
		if in[d] > 0 {
			in[d]--
			g = append(g, d)
		}
	}
	return g, a
}

func netOutExp(gone, added map[netip.Addr][]string) {
	for a, names := range added {
		for _, n := range slices.Clone(names) {
			if i := slices.Index(gone[a], n); i >= 0 {
				gone[a] = slices.Delete(gone[a], i, i+1)
				added[a] = slices.DeleteFunc(added[a], func(x string) bool { return x == n })
			}
		}
		if len(added[a]) == 0 {
			delete(added, a)
		}
		if len(gone[a]) == 0 {
			delete(gone, a)
		}
	}
}

// collect lists a service's derivations and explicit addresses.
func collect(svc *servicefile.Service, ds *[]dkey, exp map[netip.Addr][]string) {
	for _, vip := range svc.VIPs {
		exp[vip] = append(exp[vip], svc.Name)
	}
	if len(svc.VIPs) == 0 {
		for _, f := range svc.Families {
			*ds = append(*ds, dkey{svc.Name, f})
		}
	}
}

// keep accepts a live version; it can only fail when a file edited or
// added in the same batch took its place (names or keys swapped between
// files), and then the service is reported as no longer served.
func (m *model) keep(path string, live *servicefile.Service, stale bool) {
	errs := m.accept(path, live, stale)
	if errs == nil {
		return
	}
	m.blocked[path] = true // look again once what took its place goes
	what := "the service"
	if stale {
		what = "the last good version"
	}
	m.clash[path] = append(m.clash[path], &servicefile.Error{File: path, Msg: fmt.Sprintf("%s (%q) clashes and is no longer served: %v", what, live.Name, servicefile.Errors(errs))})
}

// takeBackendsDoc indexes the backends document at path p, if it is one
// (its valid version, else its last good one), in place of what p was, and
// returns the names of the services whose backends that changes.
func (m *model) takeBackendsDoc(p string, f *fileState) (names []string) {
	if old := m.contrib[p]; old != nil {
		names = append(names, old.Name)
		m.byTarget[old.Name] = slices.DeleteFunc(m.byTarget[old.Name], func(x string) bool { return x == p })
		if len(m.byTarget[old.Name]) == 0 {
			delete(m.byTarget, old.Name)
		}
		delete(m.contrib, p)
	}
	var doc *servicefile.Service
	switch {
	case f == nil:
	case f.cur != nil:
		if f.cur.BackendsOnly {
			doc = f.cur
		}
	case f.live != nil && f.live.BackendsOnly:
		doc = f.live
	}
	if doc == nil {
		return names
	}
	m.contrib[p] = doc
	ps := m.byTarget[doc.Name]
	i, _ := slices.BinarySearch(ps, p)
	m.byTarget[doc.Name] = slices.Insert(ps, i, p)
	return append(names, doc.Name)
}

// backendsDocs are the backends documents for the service name, in path
// order.
func (m *model) backendsDocs(name string) []servicefile.Contribution {
	ps := m.byTarget[name]
	if len(ps) == 0 {
		return nil
	}
	docs := make([]servicefile.Contribution, len(ps))
	for i, p := range ps {
		docs[i] = servicefile.Contribution{File: p, Doc: m.contrib[p]}
	}
	return docs
}

// accept takes svc at path, with its own backends, into the served set
// and returns why it cannot join (nil if it can).
func (m *model) accept(path string, svc *servicefile.Service, stale bool) []*servicefile.Error {
	if errs := m.asm.check(path, svc); errs != nil {
		return errs
	}
	m.accepted[path], m.effective[path], m.stale[path] = svc, svc, stale
	return nil
}

// addBackendsDocs adds the backends of its backends documents to the
// service accepted at path. It runs once every service has taken its own
// backends, so a document's backend never keeps another service's own
// out, whatever the order of changes. If the documents' backends do not
// fit (a getsockname address another service holds, capacity), the
// service keeps its own, the documents are reported as left out, and it
// is looked at again next time.
func (m *model) addBackendsDocs(path string, svc *servicefile.Service) {
	docs := m.backendsDocs(svc.Name)
	if len(docs) == 0 {
		return
	}
	eff, merrs := servicefile.Merge(svc, docs)
	m.asm.remove(svc)
	if errs := m.asm.check(path, eff); errs != nil {
		if again := m.asm.check(path, svc); again != nil {
			// It held these a moment ago: cannot happen.
			panic(fmt.Sprintf("registry: service %s no longer fits after its backends documents were left out: %v", path, again))
		}
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Msg
		}
		merrs = merrs[:0]
		for _, d := range docs {
			merrs = append(merrs, &servicefile.Error{File: d.File, Pos: d.Doc.NamePos, Field: "backends",
				Msg: fmt.Sprintf("left out, with every backends document of service %q: with them it cannot be served (%s), so it serves its own backends", svc.Name, strings.Join(msgs, "; "))})
		}
		eff = svc
		m.blocked[path] = true
	}
	m.effective[path] = eff
	if len(merrs) > 0 {
		m.mergeErrs[path] = merrs
	}
}

// claimedByDocs lists the paths of services holding, through a backends
// document's backend, a getsockname address that svc's own backends
// claim: looked at again with svc, they give way to it.
func (m *model) claimedByDocs(path string, svc *servicefile.Service) []string {
	if svc == nil || svc.BackendsOnly || !svc.LocalName {
		return nil
	}
	var out []string
	for _, pt := range svc.Ports {
		for _, b := range svc.Backends {
			lk := localKey{netip.AddrPortFrom(b.Addr, b.TargetPort(pt)), pt.Proto}
			hp, ok := m.asm.names[m.asm.locals[lk]]
			if !ok || hp == path {
				continue
			}
			if slices.ContainsFunc(m.effective[hp].Backends, func(x servicefile.Backend) bool { return x.From != "" && x.Addr == b.Addr }) {
				out = append(out, hp)
			}
		}
	}
	return out
}

// resort takes the services named in gone out of the sorted list and puts
// fresh in. A few changes move entries in place; many (a first read, a
// reload, a burst) rebuild the list and sort it once: in place, each costs
// a copy of the list, and 100,000 of them took minutes.
func (m *model) resort(gone []string, fresh []Service) {
	byName := func(a, b Service) int { return cmp.Compare(a.Name, b.Name) }
	if len(gone)+len(fresh) > 64 {
		out := make(map[string]bool, len(gone))
		for _, n := range gone {
			out[n] = true
		}
		m.sorted = slices.DeleteFunc(m.sorted, func(s Service) bool { return out[s.Name] })
		m.sorted = append(m.sorted, fresh...)
		slices.SortFunc(m.sorted, byName)
		return
	}
	for _, name := range gone {
		if i, ok := slices.BinarySearchFunc(m.sorted, name, func(s Service, n string) int { return cmp.Compare(s.Name, n) }); ok {
			m.sorted = slices.Delete(m.sorted, i, i+1)
		}
	}
	for _, s := range fresh {
		i, _ := slices.BinarySearchFunc(m.sorted, s, byName)
		m.sorted = slices.Insert(m.sorted, i, s)
	}
}

// snapshot makes an immutable view of the model and the files' errors.
func (m *model) snapshot(dir string, files map[string]*fileState) *Snapshot {
	s := &Snapshot{Dir: dir, Services: slices.Clone(m.sorted), Collisions: m.vips.collisions()}
	for _, f := range files {
		s.Errors = append(s.Errors, f.errs...)
	}
	for _, es := range m.clash {
		s.Errors = append(s.Errors, es...)
	}
	for _, es := range m.mergeErrs {
		s.Errors = append(s.Errors, es...)
	}
	for p, doc := range m.contrib {
		if _, ok := m.asm.names[doc.Name]; !ok {
			s.Errors = append(s.Errors, &servicefile.Error{File: p, Pos: doc.NamePos, Field: "backends_for",
				Msg: fmt.Sprintf("no service %q is served: its backends here wait for it", doc.Name)})
		}
	}
	for _, c := range s.Collisions {
		if c.Got.IsValid() {
			continue
		}
		if i := slices.IndexFunc(s.Services, func(sv Service) bool { return sv.Name == c.Name }); i >= 0 {
			sv := s.Services[i]
			s.Errors = append(s.Errors, &servicefile.Error{File: sv.File, Pos: sv.NamePos, Field: "vip", Msg: c.String()})
		}
	}
	sortErrors(s.Errors)
	return s
}
