package hostnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Label marks the IPv4 addresses sockmesh puts on lo (`ip addr` shows it
// as the address's label). IPv6 addresses have no labels.
const Label = "lo:sockmesh"

// EnsureLocal makes addr local to the host: if it is assigned to an
// interface or covered by a local route in the local table (127.0.0.0/8,
// say), it does nothing and returns false; otherwise it adds addr to lo as
// a host address and returns true. IPv4 addresses get [Label]; IPv6 ones
// skip duplicate address detection so they are usable at once. The
// wildcard addresses are never added.
func EnsureLocal(addr netip.Addr) (added bool, err error) {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return false, errors.New("add local address: invalid address")
	}
	if addr.IsUnspecified() {
		return false, nil
	}
	local, err := isLocal(addr)
	if err != nil || local {
		return false, err
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.AddrAdd(lo, loAddr(addr)); err != nil {
		return false, fmt.Errorf("add address %s to lo: %w", addr, err)
	}
	return true, nil
}

// RemoveLocal removes addr, as added by [EnsureLocal], from lo. An IPv4
// address is removed only if it carries [Label]. A missing address is not
// an error.
func RemoveLocal(addr netip.Addr) error {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsUnspecified() {
		return nil
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	err = netlink.AddrDel(lo, loAddr(addr))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove address %s from lo: %w", addr, err)
	}
	return nil
}

// OurLocalAddrs lists the IPv4 addresses on lo that carry [Label], so a
// cleanup without state finds what [EnsureLocal] added. IPv6 addresses
// cannot be told apart this way; callers must remember those.
func OurLocalAddrs() ([]netip.Addr, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(lo, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses on lo: %w", err)
	}
	var ours []netip.Addr
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && a.Label == Label {
			ours = append(ours, p.Addr())
		}
	}
	return ours, nil
}

// isLocal reports whether addr is assigned to an interface or covered by
// a local route in the local table.
func isLocal(addr netip.Addr) (bool, error) {
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, family(addr)) })
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p.Addr() == addr {
			return true, nil
		}
	}
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL}
	routes, err := listRoutes(family(addr), filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if err != nil {
		return false, err
	}
	for _, rt := range routes {
		if p, ok := prefixOf(rt.Dst); ok && p.Contains(addr) {
			return true, nil
		}
	}
	return false, nil
}

// loAddr is addr as a host address on lo, marked as ours.
func loAddr(addr netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, addr.BitLen()))}
	if addr.Is4() {
		a.Label = Label
	} else {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}
