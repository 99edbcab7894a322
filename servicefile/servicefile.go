// Package servicefile parses one sockmesh service file: a small YAML
// document that names a service, its ports and its backends. Errors name
// the file, line, column and field, say what is wrong and what is allowed.
//
// The smallest useful file is three lines:
//
//	name: web
//	ports: [80]
//	backends: [127.0.0.1:8080]
package servicefile

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"sockmesh/health"
	"sockmesh/lb"
)

// Service is a parsed, self-consistent service file. Checks that need the
// other files or the configuration (duplicate names, VIP ranges, map
// capacity) are the registry's.
type Service struct {
	// Name is the service's name; for a backends document, the name of
	// the service it adds backends to.
	Name string
	// BackendsOnly marks a backends document (backends_for: NAME): it
	// sets only Name and Backends, which Merge adds to the service of
	// that name, defined in another document.
	BackendsOnly bool
	// VIPs are the addresses the file sets (at most one per family). When
	// empty, the registry derives one per family in Families.
	VIPs []netip.Addr
	// Families are the address families of the VIPs: those of VIPs when
	// set, otherwise those the backends can serve.
	Families []Family
	Ports    []Port
	Backends []Backend
	// LocalName makes getsockname on a backend's socket report the VIP.
	LocalName bool
	// Health is how the backends are checked; nil: not checked (every
	// backend is taken as up).
	Health *health.Check
	// Policy, Client, MaglevTable and Affinity say how a backend is
	// picked (see lb.Service).
	Policy      lb.Policy
	Client      lb.ClientKey
	MaglevTable int
	Affinity    time.Duration
	// CloseConnections resets the TCP connections of a backend that is
	// removed or goes down; otherwise they are left to finish.
	CloseConnections bool

	// Where each part was written, for errors found later.
	NamePos Pos
	VIPPos  []Pos

	// Source is the file's text as parsed, kept so a last good version
	// can outlive the file (the daemon's state, restored after a restart).
	Source []byte
}

// Family is an address family of a VIP.
type Family uint8

// The families a service can have a VIP in.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string { return fmt.Sprintf("IPv%d", uint8(f)) }

// FamilyOf returns the family of a.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Port is one port the VIP listens on.
type Port struct {
	Number uint16
	Proto  lb.Proto
	// Name is the port's service name for DNS SRV records (_name._proto),
	// empty when unnamed.
	Name string
	Pos  Pos
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Number, p.Proto) }

// Backend is one destination of the service.
type Backend struct {
	Addr netip.Addr
	// Port is the backend port for every service port, or 0 to use the
	// service port's own number.
	Port   uint16
	Weight uint16
	// Ports maps a service port (by name or number, as written) to the
	// backend port that serves it, overriding Port.
	Ports map[string]uint16
	// State is the operator's state for the backend: active (default),
	// draining or down. A failed health check takes an active or
	// draining backend down; it never brings one up.
	State lb.BackendState
	Pos   Pos
	// From is the backends document that added the backend (see Merge);
	// empty for a backend of the service's own document.
	From string
}

// Name is how the file names the backend: its address, with the port when
// one port serves every service port ("127.0.0.1:8080", "[::1]:53",
// "10.0.0.1"). Two backends of a service never share a name.
func (b Backend) Name() string {
	if b.Port == 0 {
		return b.Addr.String()
	}
	return netip.AddrPortFrom(b.Addr, b.Port).String()
}

// TargetPort is the backend port that serves service port p.
func (b Backend) TargetPort(p Port) uint16 {
	if p.Name != "" {
		if n, ok := b.Ports[p.Name]; ok {
			return n
		}
	}
	if n, ok := b.Ports[fmt.Sprint(p.Number)]; ok {
		return n
	}
	if n, ok := b.Ports[p.String()]; ok {
		return n
	}
	if b.Port != 0 {
		return b.Port
	}
	return p.Number
}

// LBServices expands the service into one datapath service per VIP and
// port. vips are the service's VIPs (given or derived). down, when not nil,
// reports the backends (by Backend.Name) whose health check fails: they
// are lb.Down whatever their own state. It is asked once per backend.
func (s *Service) LBServices(vips []netip.Addr, down func(backend string) bool) []lb.Service {
	states := make([]lb.BackendState, len(s.Backends))
	for i, b := range s.Backends {
		states[i] = b.State
		if down != nil && down(b.Name()) {
			states[i] = lb.Down
		}
	}
	out := make([]lb.Service, 0, len(vips)*len(s.Ports))
	for _, vip := range vips {
		for _, p := range s.Ports {
			ls := lb.Service{
				Key:              lb.ServiceKey{VIP: vip, Port: p.Number, Proto: p.Proto},
				LocalName:        s.LocalName,
				Policy:           s.Policy,
				Client:           s.Client,
				MaglevTable:      s.MaglevTable,
				Affinity:         s.Affinity,
				CloseConnections: s.CloseConnections,
				Backends:         make([]lb.Backend, 0, len(s.Backends)),
			}
			for i, b := range s.Backends {
				ls.Backends = append(ls.Backends, lb.Backend{
					Addr:   netip.AddrPortFrom(b.Addr, b.TargetPort(p)),
					Weight: b.Weight,
					State:  states[i],
				})
			}
			out = append(out, ls)
		}
	}
	return out
}

// HealthTargets are the backends to check, one per backend in file order,
// or nil when the service has no health check. Each is probed on the
// check's port, or else on the backend's port for the service's first port
// of the check's protocol (tcp for tcp and http checks, udp for dns); the
// parser makes sure one of the two exists.
func (s *Service) HealthTargets() []health.Target {
	if s.Health == nil {
		return nil
	}
	proto := lb.TCP
	if s.Health.Kind == health.DNS {
		proto = lb.UDP
	}
	first := slices.IndexFunc(s.Ports, func(p Port) bool { return p.Proto == proto })
	out := make([]health.Target, 0, len(s.Backends))
	for _, b := range s.Backends {
		port := s.Health.Port
		if port == 0 && first >= 0 {
			port = b.TargetPort(s.Ports[first])
		}
		out = append(out, health.Target{
			Service: s.Name,
			Backend: b.Name(),
			Addr:    netip.AddrPortFrom(b.Addr, port),
			Check:   *s.Health,
		})
	}
	return out
}

// Pos is a place in a file (1-based; 0 when unknown).
type Pos struct {
	Line, Column int
}

// Error is one problem in a service file.
type Error struct {
	File string
	Pos
	// Field is the path to the offending value, e.g. "backends[1].weight";
	// empty for problems with the whole file.
	Field string
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors are all the problems found in one file, in file order.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As find each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}
