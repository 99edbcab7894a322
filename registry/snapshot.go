package registry

import (
	"cmp"
	"fmt"
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
	// HealthDown are the backends (by Backend.Name) the health checks
	// held down when the service was last applied: the datapath treats
	// them as down whatever the file says.
	HealthDown []string
	// BackendsDocs are the backends documents for the service, in the
	// order their backends joined it (servicefile.Merge): with the file's
	// own text they rebuild the service.
	BackendsDocs []servicefile.Contribution
}

// Datapath is what the service expands to: one datapath service per VIP
// and port, with the backends the health checks hold down marked down.
func (s Service) Datapath() []lb.Service {
	var down func(string) bool
	if len(s.HealthDown) > 0 {
		down = s.healthDown
	}
	return s.LBServices(s.VIPs, down)
}

// BackendState is backend b's state as served: the file's, or down when
// the health checks hold it down.
func (s Service) BackendState(b servicefile.Backend) lb.BackendState {
	if s.healthDown(b.Name()) {
		return lb.Down
	}
	return b.State
}

func (s Service) healthDown(backend string) bool { return slices.Contains(s.HealthDown, backend) }

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
	// Applied is when the datapath took this snapshot, and ApplyTime how
	// long that took (zero for a snapshot that was only checked).
	Applied   time.Time
	ApplyTime time.Duration
	// Stats are the datapath writes of the last apply.
	Stats lb.ApplyStats
	// Sources are the registry's sources besides the directory, by name.
	Sources []SourceStatus
}

// SourceStatus is the state of one source.
type SourceStatus struct {
	Name string
	SourceHealth
	// Revision is the source's revision the registry has caught up with
	// (0 before the first list).
	Revision int64
	// Docs is how many documents the source holds.
	Docs int
}

// Lookup finds a service by name.
func (s *Snapshot) Lookup(name string) (Service, bool) {
	i, ok := slices.BinarySearchFunc(s.Services, name, func(sv Service, n string) int { return cmp.Compare(sv.Name, n) })
	if !ok {
		return Service{}, false
	}
	return s.Services[i], true
}

// Datapath is what the services expand to: one entry per VIP and port.
func (s *Snapshot) Datapath() []lb.Service {
	var out []lb.Service
	for _, sv := range s.Services {
		out = append(out, sv.Datapath()...)
	}
	return out
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
	// source is the Source a document came from; empty for a file of
	// the services directory.
	source string
	// data is a document's text, to skip one that did not change.
	data []byte
	id   fileID
	// cur is the file's contents when they are valid on their own.
	cur *servicefile.Service
	// errs are the file's own problems (parse, owner, mode).
	errs []*servicefile.Error
	// live is the version the datapath serves, nil if none.
	live *servicefile.Service
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
	for _, s := range svc.LBServices(placeholderVIPs(nvips), nil) {
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

// remove takes an accepted service out again.
func (a *assembler) remove(svc *servicefile.Service) {
	if a.names[svc.Name] != "" {
		delete(a.names, svc.Name)
	}
	for _, vip := range svc.VIPs {
		for _, p := range svc.Ports {
			k := key{vip, p.Number, p.Proto}
			if a.keys[k] == svc.Name {
				delete(a.keys, k)
			}
		}
	}
	if svc.LocalName {
		for _, p := range svc.Ports {
			for _, b := range svc.Backends {
				lk := localKey{netip.AddrPortFrom(b.Addr, b.TargetPort(p)), p.Proto}
				if a.locals[lk] == svc.Name {
					delete(a.locals, lk)
				}
			}
		}
	}
	nvips := max(len(svc.VIPs), len(svc.Families))
	for _, s := range svc.LBServices(placeholderVIPs(nvips), nil) {
		a.usage.Remove(s)
	}
}

// placeholderVIPs stand in for VIPs when only the count matters.
func placeholderVIPs(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
	}
	return out
}

func sortErrors(es []*servicefile.Error) {
	slices.SortStableFunc(es, func(a, b *servicefile.Error) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
}
