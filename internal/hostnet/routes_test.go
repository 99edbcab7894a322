package hostnet

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"sockmesh/internal/testenv"
)

func TestDescribeRoute(t *testing.T) {
	names := map[int]string{1: "lo", 2: "eth0", 3: "eth1"}
	name := func(i int) string { return names[i] }
	for _, tc := range []struct {
		route netlink.Route
		want  string
	}{
		{
			netlink.Route{Dst: ipNet(netip.MustParsePrefix("198.18.0.0/24")), Gw: net.ParseIP("10.0.0.1"), LinkIndex: 2, Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN},
			"route 198.18.0.0/24 via 10.0.0.1 dev eth0 (table main)",
		},
		{
			netlink.Route{Dst: ipNet(netip.MustParsePrefix("198.18.0.0/16")), LinkIndex: 1, Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL},
			"route local 198.18.0.0/16 dev lo (table local)",
		},
		{
			netlink.Route{Dst: ipNet(netip.MustParsePrefix("fd6d:6573:6800::/48")), Type: unix.RTN_UNICAST, Table: 100, MultiPath: []*netlink.NexthopInfo{
				{LinkIndex: 2, Gw: net.ParseIP("fe80::1")},
				{LinkIndex: 3, Gw: net.ParseIP("fe80::2")},
			}},
			"route fd6d:6573:6800::/48 nexthop via fe80::1 dev eth0 nexthop via fe80::2 dev eth1 (table 100)",
		},
	} {
		dst, _ := prefixOf(tc.route.Dst)
		if got := describeRoute(tc.route, dst, name); got != tc.want {
			t.Errorf("describeRoute:\n got %s\nwant %s", got, tc.want)
		}
	}
	err := &OverlapError{Range: netip.MustParsePrefix("198.18.0.0/15"), With: "address 198.18.3.1/24 on eth0"}
	if got, want := err.Error(), "VIP range 198.18.0.0/15 overlaps address 198.18.3.1/24 on eth0"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestInvalidRange(t *testing.T) {
	if err := CheckRanges([]netip.Prefix{{}}); err == nil {
		t.Error("CheckRanges accepted an invalid prefix")
	}
	if _, err := InstallRoutes([]netip.Prefix{{}}); err == nil {
		t.Error("InstallRoutes accepted an invalid prefix")
	}
}

func TestCheckRanges(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T)
		ranges []string
		want   string // the error, "" for none
	}{{
		name:   "address on lo",
		setup:  func(t *testing.T) { addAddr(t, "198.51.100.1/24") },
		ranges: []string{"198.51.100.128/25"},
		want:   "VIP range 198.51.100.128/25 overlaps address 198.51.100.1/24 on lo",
	}, {
		name:   "IPv6 address on lo",
		setup:  func(t *testing.T) { addAddr(t, "2001:db8:1::1/64") },
		ranges: []string{"198.51.100.0/24", "2001:db8:1::/64"},
		want:   "VIP range 2001:db8:1::/64 overlaps address 2001:db8:1::1/64 on lo",
	}, {
		name:   "route inside range",
		setup:  func(t *testing.T) { addRoute(t, viaLo(t, "203.0.113.0/24")) },
		ranges: []string{"203.0.0.0/16"},
		want:   "VIP range 203.0.0.0/16 overlaps route 203.0.113.0/24 dev lo (table main)",
	}, {
		name:   "route covering range",
		setup:  func(t *testing.T) { addRoute(t, viaLo(t, "203.0.113.0/24")) },
		ranges: []string{"203.0.113.64/26"},
		want:   "VIP range 203.0.113.64/26 overlaps route 203.0.113.0/24 dev lo (table main)",
	}, {
		name: "route in another table",
		setup: func(t *testing.T) {
			r := viaLo(t, "203.0.113.0/24")
			r.Table = 100
			addRoute(t, r)
		},
		ranges: []string{"203.0.113.0/24"},
		want:   "VIP range 203.0.113.0/24 overlaps route 203.0.113.0/24 dev lo (table 100)",
	}, {
		name:   "IPv6 route",
		setup:  func(t *testing.T) { addRoute(t, viaLo(t, "2001:db8:1::/48")) },
		ranges: []string{"2001:db8:1::/64"},
		want:   "VIP range 2001:db8:1::/64 overlaps route 2001:db8:1::/48 dev lo (table main)",
	}, {
		name: "local route in local table",
		setup: func(t *testing.T) {
			r := viaLo(t, "203.0.113.0/24")
			r.Table, r.Type, r.Scope = unix.RT_TABLE_LOCAL, unix.RTN_LOCAL, netlink.SCOPE_HOST
			addRoute(t, r)
		},
		ranges: []string{"203.0.113.0/24"},
		want:   "VIP range 203.0.113.0/24 overlaps route local 203.0.113.0/24 dev lo (table local)",
	}, {
		name: "disjoint",
		setup: func(t *testing.T) {
			addAddr(t, "198.51.100.1/24")
			addRoute(t, viaLo(t, "203.0.113.0/24"))
			addRoute(t, viaLo(t, "2001:db8:1::/64"))
		},
		ranges: []string{"192.0.2.0/24", "2001:db8:2::/64"},
	}, {
		name: "wider route through a gateway (a VPN's split default)",
		setup: func(t *testing.T) {
			r := viaLo(t, "128.0.0.0/1")
			r.Gw, r.Flags, r.Scope = net.ParseIP("192.0.2.254"), int(netlink.FLAG_ONLINK), netlink.SCOPE_UNIVERSE
			addRoute(t, r)
		},
		ranges: []string{"198.51.100.0/24"},
	}, {
		name: "route through a gateway inside the range",
		setup: func(t *testing.T) {
			r := viaLo(t, "198.51.100.0/25")
			r.Gw, r.Flags, r.Scope = net.ParseIP("192.0.2.254"), int(netlink.FLAG_ONLINK), netlink.SCOPE_UNIVERSE
			addRoute(t, r)
		},
		ranges: []string{"198.51.100.0/24"},
		want:   "VIP range 198.51.100.0/24 overlaps route 198.51.100.0/25 via 192.0.2.254 dev lo (table main)",
	}, {
		name:   "default route",
		setup:  func(t *testing.T) { addRoute(t, viaLo(t, "0.0.0.0/0")) },
		ranges: []string{"198.51.100.0/24"},
	}, {
		name: "foreign reject routes on the ranges",
		setup: func(t *testing.T) {
			addRoute(t, reject(unix.RTN_UNREACHABLE, "198.51.100.0/24"))
			addRoute(t, reject(unix.RTN_BLACKHOLE, "203.0.113.0/24"))
			addRoute(t, reject(unix.RTN_PROHIBIT, "2001:db8:1::/64"))
		},
		ranges: []string{"198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/64"},
	}, {
		name: "our own route",
		setup: func(t *testing.T) {
			r := viaLo(t, "198.51.100.0/24")
			r.Protocol = Protocol
			addRoute(t, r)
		},
		ranges: []string{"198.51.100.0/24"},
	}, {
		name:   "harness ranges",
		ranges: []string{testenv.VIPRange4.String(), testenv.VIPRange6.String()},
	}, {
		name:   "inside a harness range",
		ranges: []string{"198.19.0.0/16", "fd6d:6573:6800::/80"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(t)
			}
			err := CheckRanges(prefixes(tc.ranges...))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckRanges: %v", err)
				}
				return
			}
			var oe *OverlapError
			if !errors.As(err, &oe) {
				t.Fatalf("CheckRanges = %v, want an *OverlapError", err)
			}
			if err.Error() != tc.want {
				t.Errorf("CheckRanges:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestInstallRoutes(t *testing.T) {
	testenv.RequirePrivileged(t)
	removeOursAtEnd(t)
	ranges := prefixes("198.51.100.0/24", "2001:db8:1::/64")
	for run := range 2 { // the second run finds the first run's routes
		got, err := InstallRoutes(ranges)
		if err != nil {
			t.Fatalf("run %d: InstallRoutes: %v", run, err)
		}
		if !slices.Equal(got, ranges) {
			t.Errorf("run %d: InstallRoutes = %v, want %v", run, got, ranges)
		}
		for _, r := range ranges {
			routes := routesTo(t, r)
			if len(routes) != 1 {
				t.Fatalf("run %d: %d routes to %s, want 1: %v", run, len(routes), r, routes)
			}
			rt := routes[0]
			if rt.Type != unix.RTN_UNREACHABLE || rt.Protocol != Protocol || rt.Table != unix.RT_TABLE_MAIN {
				t.Errorf("run %d: route to %s has type %d, protocol %d, table %d", run, r, rt.Type, rt.Protocol, rt.Table)
			}
		}
	}
	if err := CheckRanges(ranges); err != nil {
		t.Errorf("CheckRanges with our routes in place: %v", err)
	}
}

func TestInstallRoutesBesideForeign(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, tc := range []struct {
		name    string
		foreign []*netlink.Route
		ranges  []string
		want    []string
	}{{
		name: "foreign reject routes on exactly the ranges",
		foreign: []*netlink.Route{
			reject(unix.RTN_UNREACHABLE, "203.0.113.0/24"),
			reject(unix.RTN_BLACKHOLE, "2001:db8:1::/64"),
		},
		ranges: []string{"203.0.113.0/24", "2001:db8:1::/64", "198.51.100.0/24"},
		want:   []string{"198.51.100.0/24"},
	}, {
		name:   "harness ranges",
		ranges: []string{testenv.VIPRange4.String(), testenv.VIPRange6.String()},
	}, {
		name:   "inside harness ranges",
		ranges: []string{"198.19.0.0/16", "fd6d:6573:6800::/80"},
		want:   []string{"198.19.0.0/16", "fd6d:6573:6800::/80"},
	}, {
		name:    "inside a foreign prohibit route",
		foreign: []*netlink.Route{reject(unix.RTN_PROHIBIT, "203.0.0.0/16")},
		ranges:  []string{"203.0.113.0/24"},
		want:    []string{"203.0.113.0/24"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range tc.foreign {
				addRoute(t, r)
			}
			removeOursAtEnd(t)
			got, err := InstallRoutes(prefixes(tc.ranges...))
			if err != nil {
				t.Fatalf("InstallRoutes: %v", err)
			}
			if want := prefixes(tc.want...); !slices.Equal(got, want) {
				t.Errorf("InstallRoutes = %v, want %v", got, want)
			}
			for _, r := range tc.foreign {
				p, _ := prefixOf(r.Dst)
				routes := routesTo(t, p)
				if len(routes) != 1 || routes[0].Protocol == Protocol {
					t.Errorf("routes to %s: %v, want just the foreign one", p, routes)
				}
			}
		})
	}
}

func TestRemoveRoutes(t *testing.T) {
	testenv.RequirePrivileged(t)
	removeOursAtEnd(t)
	foreign := []*netlink.Route{reject(unix.RTN_UNREACHABLE, "203.0.113.0/24"), viaLo(t, "192.0.2.0/24")}
	for _, r := range foreign {
		addRoute(t, r)
	}
	if _, err := InstallRoutes(prefixes("198.51.100.0/24", "2001:db8:1::/64")); err != nil {
		t.Fatal(err)
	}
	// Ours in another table, as a future version might add.
	for _, dst := range []string{"192.0.2.0/25", "2001:db8:2::/64"} {
		r := reject(unix.RTN_UNREACHABLE, dst)
		r.Table, r.Protocol = 100, Protocol
		addRoute(t, r)
	}

	removed, err := RemoveRoutes()
	if err != nil {
		t.Fatalf("RemoveRoutes: %v", err)
	}
	want := prefixes("192.0.2.0/25", "198.51.100.0/24", "2001:db8:1::/64", "2001:db8:2::/64")
	if !samePrefixes(removed, want) {
		t.Errorf("RemoveRoutes = %v, want %v", removed, want)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		left, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: Protocol}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("routes of ours left: %v", left)
		}
	}
	for _, p := range prefixes("203.0.113.0/24", "192.0.2.0/24", testenv.VIPRange4.String(), testenv.VIPRange6.String()) {
		if routes := routesTo(t, p); len(routes) != 1 {
			t.Errorf("foreign route to %s: got %v, want it kept", p, routes)
		}
	}

	removed, err = RemoveRoutes()
	if err != nil || len(removed) > 0 {
		t.Errorf("second RemoveRoutes = %v, %v; want nothing, no error", removed, err)
	}
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

func samePrefixes(a, b []netip.Prefix) bool {
	cmp := func(x, y netip.Prefix) int { return x.Compare(y) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

func loIndex(t *testing.T) int {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	return lo.Attrs().Index
}

// viaLo is a route to dst through lo, as `ip route add dst dev lo` makes.
func viaLo(t *testing.T, dst string) *netlink.Route {
	p := netip.MustParsePrefix(dst)
	r := &netlink.Route{Dst: ipNet(p), LinkIndex: loIndex(t)}
	if p.Addr().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

func reject(typ int, dst string) *netlink.Route {
	return &netlink.Route{Dst: ipNet(netip.MustParsePrefix(dst)), Type: typ}
}

// addRoute adds r and removes it when the test ends.
func addRoute(t *testing.T, r *netlink.Route) {
	t.Helper()
	if err := netlink.RouteAdd(r); err != nil {
		t.Fatalf("add route %v: %v", r, err)
	}
	t.Cleanup(func() {
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			t.Errorf("delete route %v: %v", r, err)
		}
	})
}

// addAddr adds an address to lo and removes it when the test ends.
func addAddr(t *testing.T, prefix string) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	a := &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(prefix))} // host bits kept
	if err := netlink.AddrAdd(lo, a); err != nil {
		t.Fatalf("add address %s: %v", prefix, err)
	}
	t.Cleanup(func() {
		if err := netlink.AddrDel(lo, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			t.Errorf("delete address %s: %v", prefix, err)
		}
	})
}

// routesTo lists the routes to exactly p in all tables.
func routesTo(t *testing.T, p netip.Prefix) []netlink.Route {
	t.Helper()
	routes, err := netlink.RouteListFiltered(family(p.Addr()), &netlink.Route{Dst: ipNet(p)}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	return routes
}

// removeOursAtEnd removes our routes when the test ends.
func removeOursAtEnd(t *testing.T) {
	t.Cleanup(func() {
		if _, err := RemoveRoutes(); err != nil {
			t.Errorf("RemoveRoutes: %v", err)
		}
	})
}
