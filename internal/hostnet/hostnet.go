// Package hostnet prepares the host's network namespace for sockmesh: it
// checks that the VIP ranges are free, routes them nowhere with unreachable
// routes marked as ours, and puts the DNS stub's address on lo when it is
// not local already.
//
// Everything acts on the network namespace of the calling process, through
// rtnetlink. Routes are recognised by their protocol number ([Protocol])
// and IPv4 addresses by their label ([Label]), so a later run, or
// `sockmesh down` after a kill -9, can find and remove them without state.
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Protocol marks the routes sockmesh installs (the rtm_protocol field,
// `proto 158` in `ip route`). The kernel does not interpret values above
// RTPROT_STATIC (4). 158 (0x9e) is used by none of the kernel's RTPROT_*
// constants (0-4, 8-18, 42 babel, 84 ovn, 99 openr, 186-192), FRR's own
// (190-198), or iproute2's rt_protos (which lists the kernel's).
const Protocol netlink.RouteProtocol = 0x9e

// OverlapError reports that a VIP range overlaps an address or a route
// already in the network namespace, so VIPs from it could shadow, or be
// shadowed by, real destinations.
type OverlapError struct {
	Range netip.Prefix
	// With describes what the range overlaps, e.g. "address 198.18.3.1/24
	// on eth0" or "route 198.18.0.0/24 via 10.0.0.1 dev eth0 (table main)".
	With string
}

func (e *OverlapError) Error() string {
	return fmt.Sprintf("VIP range %s overlaps %s", e.Range, e.With)
}

// CheckRanges returns an *OverlapError if a range overlaps an address on
// any interface or a route in any routing table. It ignores default
// routes, routes marked with [Protocol], and unreachable, blackhole and
// prohibit routes, which already send the range nowhere.
func CheckRanges(ranges []netip.Prefix) error {
	ranges, err := canonical(ranges)
	if err != nil {
		return err
	}
	links, err := dump(netlink.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	name := func(index int) string {
		if n, ok := names[index]; ok {
			return n
		}
		return "if" + strconv.Itoa(index)
	}

	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, fam) })
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		for _, a := range addrs {
			p, ok := prefixOf(a.IPNet)
			if !ok {
				continue
			}
			if r, ok := overlapping(ranges, p); ok {
				return &OverlapError{Range: r, With: fmt.Sprintf("address %s on %s", p, name(a.LinkIndex))}
			}
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := listRoutes(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, rt := range routes {
			p, ok := prefixOf(rt.Dst)
			if !ok || p.Bits() == 0 || rt.Protocol == Protocol || isReject(rt.Type) {
				continue
			}
			if r, ok := overlapping(ranges, p); ok {
				// A wider route through a gateway (a VPN's 128.0.0.0/1 or
				// fc00::/7, say) loses to the range's more specific
				// unreachable route and sends nothing of the range anywhere
				// it should go: no conflict. A wider on-link route, or any
				// route inside the range, is one.
				if p.Bits() < r.Bits() && viaGateway(rt) {
					continue
				}
				return &OverlapError{Range: r, With: describeRoute(rt, p, name)}
			}
		}
	}
	return nil
}

// InstallRoutes adds an unreachable route marked with [Protocol] to the
// main table for each range, and returns the ranges that now have such a
// route of ours, including any left by an earlier run. A range that
// already has a foreign unreachable, blackhole or prohibit route for
// exactly that prefix is left to it and not returned. On error, the
// ranges installed so far are returned; [RemoveRoutes] removes them.
func InstallRoutes(ranges []netip.Prefix) ([]netip.Prefix, error) {
	ranges, err := canonical(ranges)
	if err != nil {
		return nil, err
	}
	var ours []netip.Prefix
	for _, r := range ranges {
		filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Dst: ipNet(r)}
		existing, err := listRoutes(family(r.Addr()), filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err != nil {
			return ours, err
		}
		mine, foreign := false, false
		for _, rt := range existing {
			switch {
			case rt.Protocol == Protocol:
				mine = true
			case isReject(rt.Type):
				foreign = true
			}
		}
		if foreign && !mine {
			continue
		}
		if !mine {
			route := &netlink.Route{Dst: ipNet(r), Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNREACHABLE, Protocol: Protocol}
			if err := netlink.RouteAdd(route); err != nil {
				return ours, fmt.Errorf("add unreachable route %s: %w", r, err)
			}
		}
		ours = append(ours, r)
	}
	return ours, nil
}

// RemoveRoutes deletes every route marked with [Protocol], in all tables
// and both families, and returns their destinations. It needs no state, so
// it also cleans up after a run that was killed. Routes that vanish
// meanwhile are not an error.
func RemoveRoutes() ([]netip.Prefix, error) {
	return removeOurRoutes(func(netip.Prefix) bool { return true })
}

// RemoveRoutesFor deletes the routes marked with [Protocol] whose
// destination is one of ranges, leaving those of other instances alone.
func RemoveRoutesFor(ranges []netip.Prefix) ([]netip.Prefix, error) {
	ranges, err := canonical(ranges)
	if err != nil {
		return nil, err
	}
	return removeOurRoutes(func(p netip.Prefix) bool { return slices.Contains(ranges, p) })
}

// removeOurRoutes deletes the routes marked with [Protocol], in all tables
// and both families, whose destination wanted accepts.
func removeOurRoutes(wanted func(netip.Prefix) bool) ([]netip.Prefix, error) {
	var removed []netip.Prefix
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: Protocol}
		routes, err := listRoutes(fam, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return removed, err
		}
		for _, rt := range routes {
			p, _ := prefixOf(rt.Dst)
			if !wanted(p) {
				continue
			}
			if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				return removed, fmt.Errorf("delete route %s (table %s): %w", p, tableName(rt.Table), err)
			}
			removed = append(removed, p)
		}
	}
	return removed, nil
}

// viaGateway reports whether a route forwards through a gateway.
func viaGateway(rt netlink.Route) bool {
	return rt.Gw != nil || len(rt.MultiPath) > 0 || rt.Via != nil
}

// canonical checks the ranges and masks off host bits.
func canonical(ranges []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ranges))
	for _, r := range ranges {
		if !r.IsValid() {
			return nil, fmt.Errorf("check VIP range %s: not a valid prefix", r)
		}
		out = append(out, r.Masked())
	}
	return out, nil
}

func overlapping(ranges []netip.Prefix, p netip.Prefix) (netip.Prefix, bool) {
	for _, r := range ranges {
		if r.Overlaps(p) {
			return r, true
		}
	}
	return netip.Prefix{}, false
}

// isReject reports whether a route type drops what it matches.
func isReject(typ int) bool {
	return typ == unix.RTN_UNREACHABLE || typ == unix.RTN_BLACKHOLE || typ == unix.RTN_PROHIBIT
}

// listRoutes lists routes of one family; see netlink.RouteListFiltered.
func listRoutes(fam int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	routes, err := dump(func() ([]netlink.Route, error) { return netlink.RouteListFiltered(fam, filter, mask) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return routes, nil
}

// dump repeats a netlink dump that a concurrent change interrupted, so
// callers never act on a partial list.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var res []T
		if res, err = list(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return nil, err
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts an address with its prefix length (host bits kept);
// it fails on nil, as for a default route.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 128 && a.Is4In6() {
		a, ones = a.Unmap(), ones-96
	}
	p := netip.PrefixFrom(a, ones)
	return p, p.IsValid()
}

// describeRoute renders a route roughly as `ip route` does.
func describeRoute(rt netlink.Route, dst netip.Prefix, linkName func(int) string) string {
	var b strings.Builder
	b.WriteString("route ")
	if t := typeName(rt.Type); t != "" {
		b.WriteString(t + " ")
	}
	b.WriteString(dst.String())
	hop := func(gw net.IP, link int) {
		if gw != nil {
			b.WriteString(" via " + gw.String())
		}
		if link != 0 {
			b.WriteString(" dev " + linkName(link))
		}
	}
	hop(rt.Gw, rt.LinkIndex)
	for _, nh := range rt.MultiPath {
		b.WriteString(" nexthop")
		hop(nh.Gw, nh.LinkIndex)
	}
	fmt.Fprintf(&b, " (table %s)", tableName(rt.Table))
	return b.String()
}

func typeName(typ int) string {
	switch typ {
	case unix.RTN_UNICAST:
		return ""
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_THROW:
		return "throw"
	}
	return "type " + strconv.Itoa(typ)
}

func tableName(table int) string {
	switch table {
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_LOCAL:
		return "local"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	}
	return strconv.Itoa(table)
}
