package lb

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func TestCoverPrefixes(t *testing.T) {
	for _, tc := range []struct {
		vips []string
		n    int
		want []string
	}{
		{nil, 4, nil},
		{[]string{"198.18.0.10"}, 4, []string{"198.18.0.10/32"}},
		{[]string{"198.18.0.10", "198.18.0.11"}, 1, []string{"198.18.0.10/31"}},
		{[]string{"198.18.0.1", "198.18.0.2", "10.0.0.1"}, 2, []string{"10.0.0.1/32", "198.18.0.0/30"}},
		{[]string{"198.18.0.1", "198.19.255.1", "10.0.0.1", "10.0.0.2", "172.16.0.1"}, 3, []string{"10.0.0.0/30", "172.16.0.1/32", "198.18.0.0/15"}},
		{[]string{"1.0.0.0", "255.0.0.0"}, 1, []string{"0.0.0.0/0"}},
		{[]string{"fd6d:6573:6800::53", "fd6d:6573:6800::1:53"}, 2, []string{"fd6d:6573:6800::53/128", "fd6d:6573:6800::1:53/128"}},
	} {
		var vips []netip.Addr
		for _, s := range tc.vips {
			vips = append(vips, netip.MustParseAddr(s))
		}
		var got []string
		for _, p := range coverPrefixes(vips, tc.n) {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("cover %v in %d: %v, want %v", tc.vips, tc.n, got, tc.want)
		}
	}
}

// Whatever the VIPs, the filter built from them lets every one through,
// in the bank it was written to, as may_be_vip would read it.
func TestFilterCoversVIPs(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var vips []netip.Addr
		for range 1 + r.IntN(40) {
			var b [16]byte
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			a := netip.AddrFrom16(b)
			if r.IntN(2) == 0 {
				a = netip.AddrFrom4([4]byte{198, byte(18 + r.IntN(2)), b[0], b[1]})
			}
			vips = append(vips, a)
		}
		var f vipFilter
		setBank(&f, 1, bankFor(vips))
		setBank(&f, 0, filterBank{})
		for _, a := range vips {
			if !bankCovers(&f, 1, a) || bankCovers(&f, 0, a) {
				t.Fatalf("filter of %v: %s misses %s", vips, filterPrefixes(&f, 1), a)
			}
			if m := netip.AddrFrom16(a.As16()); !filterCovers(&f, m) {
				t.Fatalf("filter of %v misses the v4-mapped form of %s", vips, a)
			}
		}
	}
	var zero vipFilter
	for _, a := range []string{"0.0.0.0", "127.0.0.1", "::1", "fd00::1"} {
		if !filterCovers(&zero, netip.MustParseAddr(a)) {
			t.Errorf("the all-zero filter hides %s; it must match everything", a)
		}
	}
}
