// Package lb programs the sockmesh datapath: it loads the cgroup socket
// programs, attaches them to a cgroup v2, pins everything under bpffs so
// traffic keeps flowing without a running process, and converges the
// service and backend maps to a desired set with Apply.
package lb

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Proto is a transport protocol a service listens on.
type Proto uint8

// The protocols a service can use (IANA protocol numbers).
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("parse protocol %q: want tcp or udp", s)
}

// ServiceKey names a service in the datapath: what a client dials.
type ServiceKey struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

func (k ServiceKey) compare(o ServiceKey) int {
	if c := k.VIP.Compare(o.VIP); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Port, o.Port); c != 0 {
		return c
	}
	return cmp.Compare(k.Proto, o.Proto)
}

// BackendState is whether a backend takes new connections.
type BackendState uint8

// The states of a backend. New connections go to active backends; when
// none is active, to draining ones; when none is either, the connect fails
// with ECONNREFUSED. Existing connections are never moved.
const (
	// Active backends take new connections.
	Active BackendState = iota
	// Draining backends keep their connections but take new ones only
	// while the service has no active backend.
	Draining
	// Down backends take nothing new (a failed health check, or an
	// operator's choice).
	Down
)

func (s BackendState) String() string {
	switch s {
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Down:
		return "down"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseBackendState parses "active", "draining" or "down".
func ParseBackendState(s string) (BackendState, error) {
	for _, st := range []BackendState{Active, Draining, Down} {
		if s == st.String() {
			return st, nil
		}
	}
	return 0, fmt.Errorf("parse backend state %q: want active, draining or down", s)
}

// Backend is one destination of a service.
type Backend struct {
	Addr netip.AddrPort
	// Weight is the backend's share relative to the others; 0 means 1.
	Weight uint16
	// State says whether the backend takes new connections.
	State BackendState
}

func (b Backend) weight() uint32 {
	if b.Weight == 0 {
		return 1
	}
	return uint32(b.Weight)
}

// Policy is how a service picks the backend of a new connection.
type Policy uint8

// The load-balancing policies. Every policy honours weights. An
// unconnected UDP socket keeps sending to one backend while the backend set
// holds, whatever the policy (random and round-robin pick it per socket).
const (
	// Random picks a backend at random for each connection.
	Random Policy = iota
	// RoundRobin takes the backends in turn, weights interleaved.
	RoundRobin
	// Maglev hashes the client (see ClientKey) into a Maglev lookup
	// table: a client keeps its backend, and removing one of N backends
	// moves only about 1/N of the clients.
	Maglev
)

func (p Policy) String() string {
	switch p {
	case Random:
		return "random"
	case RoundRobin:
		return "round-robin"
	case Maglev:
		return "maglev"
	}
	return fmt.Sprintf("policy(%d)", uint8(p))
}

// ParsePolicy parses "random", "round-robin" or "maglev".
func ParsePolicy(s string) (Policy, error) {
	for _, p := range []Policy{Random, RoundRobin, Maglev} {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("parse policy %q: want random, round-robin or maglev", s)
}

// ClientKey is what identifies a client to Maglev and to affinity.
type ClientKey uint8

// The client keys.
const (
	// ClientCgroup is the connecting process's cgroup v2 id.
	ClientCgroup ClientKey = iota
	// ClientNetns is the socket's network namespace cookie.
	ClientNetns
)

func (k ClientKey) String() string {
	switch k {
	case ClientCgroup:
		return "cgroup"
	case ClientNetns:
		return "netns"
	}
	return fmt.Sprintf("client(%d)", uint8(k))
}

// ParseClientKey parses "cgroup" or "netns".
func ParseClientKey(s string) (ClientKey, error) {
	for _, k := range []ClientKey{ClientCgroup, ClientNetns} {
		if s == k.String() {
			return k, nil
		}
	}
	return 0, fmt.Errorf("parse client key %q: want cgroup or netns", s)
}

// DefaultMaglevTable is the Maglev lookup table size when a service sets
// none: a prime, about 400 entries per backend for 10 backends. Removing
// one of 10 backends then changes 11.3 % of the table (1/N is 10 %; 1021
// entries give 12.4 %, 16381 give 10.5 %). Each entry is one service-map
// slot, twice over while a change is written.
const DefaultMaglevTable = 4093

// MaglevTables are the table sizes a Maglev service may use (primes).
var MaglevTables = []int{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521}

// Service is one (VIP, port, protocol) and the backends behind it. A service
// with no backends refuses connections (ECONNREFUSED) without sending a
// packet.
type Service struct {
	Key      ServiceKey
	Backends []Backend
	// LocalName makes getsockname on a socket bound to one of the backend
	// addresses report the VIP instead (for backends that announce their
	// own address).
	LocalName bool
	// Policy picks the backend of each new connection.
	Policy Policy
	// Client identifies a client to Maglev and to Affinity.
	Client ClientKey
	// MaglevTable is the Maglev table size (one of MaglevTables); 0 means
	// DefaultMaglevTable. Ignored by the other policies.
	MaglevTable int
	// Affinity, when positive, sends a client's new connections to the
	// backend it last got, for as long as it keeps connecting within
	// Affinity of its last connection and that backend still takes new
	// connections.
	Affinity time.Duration
	// CloseConnections asks that, when a backend is removed or goes down,
	// the TCP connections made to it through this service be reset as
	// well. Connected UDP sockets are always closed (see ApplyStats.Gone).
	CloseConnections bool
}

// Limits of the datapath maps, checked by Apply before it writes anything.
const (
	// MaxSlots is how many slots one service may use: the sum of its
	// backends' weights after dividing them by their greatest common
	// divisor. Each slot region spans SLOT_REGION entries.
	MaxSlots = 0x10000 - 1
)

// validate checks what the datapath cannot express.
func (s *Service) validate() error {
	k := s.Key
	if !k.VIP.IsValid() || k.VIP.IsUnspecified() || k.VIP.Zone() != "" {
		return fmt.Errorf("service %s: vip %q is not a usable address", k, k.VIP)
	}
	if k.Port == 0 {
		return fmt.Errorf("service %s: port 0 is not allowed (1-65535)", k)
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("service %s: protocol must be tcp or udp", k)
	}
	seen := make(map[netip.AddrPort]bool, len(s.Backends))
	for _, b := range s.Backends {
		a := b.Addr.Addr()
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" {
			return fmt.Errorf("service %s: backend %q is not a usable address", k, b.Addr)
		}
		if b.Addr.Port() == 0 {
			return fmt.Errorf("service %s: backend %s has port 0 (1-65535)", k, b.Addr)
		}
		// An AF_INET socket dialling an IPv4 VIP cannot be sent to an
		// IPv6 backend; an IPv6 VIP can reach both (IPv4 as v4-mapped).
		if k.VIP.Unmap().Is4() && !a.Unmap().Is4() {
			return fmt.Errorf("service %s: IPv4 VIP cannot have IPv6 backend %s", k, b.Addr)
		}
		// The kernel refuses an unconnected IPv6 datagram rewritten to a
		// v4-mapped address (sendmsg6 -> ENOTSUPP), so IPv6 UDP VIPs need
		// IPv6 backends.
		if k.Proto == UDP && !k.VIP.Unmap().Is4() && a.Unmap().Is4() {
			return fmt.Errorf("service %s: IPv6 UDP VIP cannot have IPv4 backend %s (unconnected IPv6 sends cannot be redirected to IPv4)", k, b.Addr)
		}
		norm := normalizeAddrPort(b.Addr)
		if seen[norm] {
			return fmt.Errorf("service %s: backend %s is listed twice", k, b.Addr)
		}
		seen[norm] = true
	}
	for _, b := range s.Backends {
		if b.State > Down {
			return fmt.Errorf("service %s: backend %s has unknown state %d", k, b.Addr, b.State)
		}
	}
	switch s.Policy {
	case Random, RoundRobin:
		if s.MaglevTable != 0 {
			return fmt.Errorf("service %s: a Maglev table size needs policy maglev, not %s", k, s.Policy)
		}
	case Maglev:
		if s.MaglevTable != 0 && !slices.Contains(MaglevTables, s.MaglevTable) {
			return fmt.Errorf("service %s: Maglev table size %d is not one of %v", k, s.MaglevTable, MaglevTables)
		}
	default:
		return fmt.Errorf("service %s: unknown policy %d", k, s.Policy)
	}
	if s.Client > ClientNetns {
		return fmt.Errorf("service %s: unknown client key %d", k, s.Client)
	}
	if s.Affinity < 0 {
		return fmt.Errorf("service %s: negative affinity %s", k, s.Affinity)
	}
	if n := slotCount(s.Backends); n > MaxSlots {
		return fmt.Errorf("service %s: backend weights need %d slots, at most %d (lower the weights)", k, n, MaxSlots)
	}
	return nil
}

// slotsNeeded is the most slots the service can take whatever its
// backends' states: its Maglev table, or all its backends' weights.
func (s Service) slotsNeeded() int {
	if s.Policy == Maglev {
		return s.maglevTable()
	}
	return slotCount(s.Backends)
}

// needsOpts reports whether the service has an entry in sm_svc_opts.
func (s Service) needsOpts() bool {
	return s.Policy == RoundRobin || s.Affinity > 0
}

func normalizeAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Normalize spells k's VIP as the datapath keys it: a v4-mapped IPv6
// address as IPv4.
func (k ServiceKey) Normalize() ServiceKey {
	k.VIP = k.VIP.Unmap()
	return k
}

// reducedWeights divides every weight by their greatest common divisor:
// weights 2,2,4 take the same 4 slots as 1,1,2.
func reducedWeights(backends []Backend) []uint32 {
	var g uint32
	for _, b := range backends {
		g = gcd(g, b.weight())
	}
	out := make([]uint32, len(backends))
	for i, b := range backends {
		out[i] = b.weight() / g
	}
	return out
}

// SlotCount is how many service-map slots the backends take: the sum of
// their weights after dividing them by their greatest common divisor.
func SlotCount(backends []Backend) int { return slotCount(backends) }

func slotCount(backends []Backend) int { return sumWeights(reducedWeights(backends)) }

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// canonical returns the service with normalized addresses, backends sorted
// and weights reduced: two services that behave the same compare equal.
func (s Service) canonical() Service {
	out := s
	out.Key = s.Key.Normalize()
	out.Backends = nil
	ws := reducedWeights(s.Backends)
	for i, b := range s.Backends {
		out.Backends = append(out.Backends, Backend{Addr: normalizeAddrPort(b.Addr), Weight: uint16(ws[i]), State: b.State})
	}
	if out.Policy == Maglev && out.MaglevTable == 0 {
		out.MaglevTable = DefaultMaglevTable
	}
	if out.Policy != Maglev && out.Affinity == 0 {
		out.Client = ClientCgroup // used by nothing: one spelling
	}
	slices.SortFunc(out.Backends, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

type localNameKey struct {
	addr  netip.AddrPort
	proto Proto
}

// validateSet checks every service and that no key appears twice.
func validateSet(services []Service) ([]Service, error) {
	out := make([]Service, 0, len(services))
	seen := make(map[ServiceKey]bool, len(services))
	localNames := make(map[localNameKey]ServiceKey)
	var errs []error
	for _, s := range services {
		if err := s.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		c := s.canonical()
		if seen[c.Key] {
			errs = append(errs, fmt.Errorf("service %s: defined twice", c.Key))
			continue
		}
		seen[c.Key] = true
		if c.LocalName {
			for _, b := range c.Backends {
				lk := localNameKey{b.Addr, c.Key.Proto}
				if other, ok := localNames[lk]; ok {
					errs = append(errs, fmt.Errorf("service %s: backend %s/%s already shows service %s to getsockname", c.Key, b.Addr, c.Key.Proto, other))
					continue
				}
				localNames[lk] = c.Key
			}
		}
		out = append(out, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Service) int { return a.Key.compare(b.Key) })
	return out, nil
}
