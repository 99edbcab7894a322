package servicefile

import (
	"fmt"
	"net/netip"
	"slices"

	"sockmesh/lb"
)

// Contribution is a backends document (Service.BackendsOnly) and the file
// it came from.
type Contribution struct {
	File string
	Doc  *Service
}

// Merge returns svc with the backends of the backends documents docs (all
// for svc's name, in the order given) after its own, each marked with the
// document it came from. A backend that cannot join the service is left
// out and reported, naming its document, line and field: one whose
// family cannot serve the service's VIPs, one whose destination the
// service already has, one that would serve two ports of a local_name
// service on one address. A document whose backends would need more
// weight slots than a service can have is left out whole. svc itself is
// not changed; with no documents it is returned as it is.
func Merge(svc *Service, docs []Contribution) (*Service, Errors) {
	if len(docs) == 0 {
		return svc, nil
	}
	out := *svc
	out.Backends = slices.Clone(svc.Backends)
	var errs Errors
	dsts := map[dst]string{} // destination -> who has it
	for _, b := range svc.Backends {
		for _, d := range destinations(svc, b) {
			dsts[d] = "the service's own file"
		}
	}
	for _, c := range docs {
		var add []Backend
		for i, b := range c.Doc.Backends {
			bad := func(format string, args ...any) {
				errs = append(errs, &Error{File: c.File, Pos: b.Pos, Field: fmt.Sprintf("backends[%d]", i), Msg: fmt.Sprintf(format, args...)})
			}
			if why := familyProblem(svc, b.Addr); why != "" {
				bad("%s", why)
				continue
			}
			ds := destinations(svc, b)
			if svc.LocalName && servesTwice(ds) {
				bad("%s would serve several ports of service %q, whose local_name needs one port per backend address: give the backends different addresses", b.Name(), svc.Name)
				continue
			}
			taken := ""
			for _, d := range ds {
				if who, ok := dsts[d]; ok {
					taken = who
					break
				}
			}
			if taken != "" {
				bad("%s is already a backend of service %q (in %s): a destination is listed once", b.Name(), svc.Name, taken)
				continue
			}
			for _, d := range ds {
				dsts[d] = c.File
			}
			b.From = c.File
			add = append(add, b)
		}
		if slots := slotsNeeded(append(slices.Clip(out.Backends), add...)); slots > lb.MaxSlots {
			errs = append(errs, &Error{File: c.File, Pos: c.Doc.NamePos, Field: "backends", Msg: fmt.Sprintf("with these backends service %q needs %d weight slots, at most %d: left out; lower the weights", svc.Name, slots, lb.MaxSlots)})
			for _, b := range add {
				for _, d := range destinations(svc, b) {
					delete(dsts, d)
				}
			}
			continue
		}
		out.Backends = append(out.Backends, add...)
	}
	return &out, errs
}

// dst is where one port of a service goes on one backend.
type dst struct {
	addr  netip.AddrPort
	proto lb.Proto
}

// destinations lists b's destination for each of svc's ports, in port
// order.
func destinations(svc *Service, b Backend) []dst {
	out := make([]dst, 0, len(svc.Ports))
	for _, p := range svc.Ports {
		out = append(out, dst{netip.AddrPortFrom(b.Addr, b.TargetPort(p)), p.Proto})
	}
	return out
}

// servesTwice says whether two ports go to one address and protocol.
func servesTwice(ds []dst) bool {
	for i := range ds {
		for j := range i {
			if ds[i] == ds[j] {
				return true
			}
		}
	}
	return false
}

// familyProblem says why a backend at a cannot serve svc's VIPs (those it
// sets, or the families it derives them in), or "" if it can: the same
// rules the parser applies to a service's own backends.
func familyProblem(svc *Service, a netip.Addr) string {
	hasUDP := slices.ContainsFunc(svc.Ports, func(p Port) bool { return p.Proto == lb.UDP })
	for _, f := range svc.Families {
		switch {
		case f == IPv4 && FamilyOf(a) == IPv6:
			return fmt.Sprintf("IPv6 backend %s cannot serve the IPv4 VIP of service %q: an IPv4 socket cannot be sent to IPv6; use IPv4 backends, or give the service only an IPv6 vip", a, svc.Name)
		case f == IPv6 && FamilyOf(a) == IPv4 && hasUDP:
			return fmt.Sprintf("IPv4 backend %s cannot serve the UDP ports of the IPv6 VIP of service %q: the kernel cannot redirect unconnected IPv6 datagrams to IPv4; use IPv6 backends", a, svc.Name)
		}
	}
	return ""
}
