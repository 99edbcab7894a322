package lb

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The VIP filter (struct vip_filter in bpf/sockmesh.h): a few prefixes per
// family that cover every live VIP, checked by connect and sendmsg before
// the service lookup. It has two banks of entries and matches when any
// entry of either matches. The writer keeps it covering every master in
// the service map at every moment:
//  1. before writing services, it widens the filter to cover them and
//     what is live (the prefixes go into the spare bank first, then the
//     old bank is cleared);
//  2. after removing services, it narrows the filter the same way.
//
// An all-zero filter (a new map) matches everything.

type vipFilter = connectVipFilter

// Prefixes per bank, per family, as in bpf/sockmesh.h.
const (
	filterV4 = 4
	filterV6 = 2
)

// coverPrefixes returns at most n prefixes that together cover addrs, all
// of one family. Sorted, neighbours that share the shortest prefix are
// split apart; each group becomes the common prefix of its first and last
// address (which covers everything between them).
func coverPrefixes(addrs []netip.Addr, n int) []netip.Prefix {
	if len(addrs) == 0 {
		return nil
	}
	a := slices.Clone(addrs)
	slices.SortFunc(a, netip.Addr.Compare)
	a = slices.Compact(a)
	type cut struct{ at, common int }
	cuts := make([]cut, 0, len(a)-1)
	for i := 1; i < len(a); i++ {
		cuts = append(cuts, cut{i, commonBits(a[i-1], a[i])})
	}
	slices.SortStableFunc(cuts, func(x, y cut) int { return cmp.Compare(x.common, y.common) })
	cuts = cuts[:min(len(cuts), n-1)]
	starts := []int{0}
	for _, c := range cuts {
		starts = append(starts, c.at)
	}
	slices.Sort(starts)
	var out []netip.Prefix
	for i, s := range starts {
		end := len(a) - 1
		if i+1 < len(starts) {
			end = starts[i+1] - 1
		}
		p, _ := a[s].Prefix(commonBits(a[s], a[end]))
		out = append(out, p)
	}
	return out
}

// commonBits is the length of the prefix a and b (one family) share.
func commonBits(a, b netip.Addr) int {
	x, y := a.AsSlice(), b.AsSlice()
	for i := range x {
		if d := x[i] ^ y[i]; d != 0 {
			n := i * 8
			for d&0x80 == 0 {
				n++
				d <<= 1
			}
			return n
		}
	}
	return len(x) * 8
}

// filterBank is what one bank of the filter holds.
type filterBank struct {
	v4, v6 []netip.Prefix
}

// bankFor covers vips with the prefixes one bank holds.
func bankFor(vips []netip.Addr) filterBank {
	var v4, v6 []netip.Addr
	for _, a := range vips {
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	return filterBank{coverPrefixes(v4, filterV4), coverPrefixes(v6, filterV6)}
}

// maskWords is the mask of a prefix of bits bits over n bytes, as the
// native-endian words the maps hold.
func maskWords(bits, n int) [4]uint32 {
	var b [16]byte
	for i := range n {
		switch {
		case bits >= 8:
			b[i] = 0xff
		case bits > 0:
			b[i] = byte(0xff << (8 - bits))
		}
		bits = max(bits-8, 0)
	}
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// never is the net of an unused entry: with mask 0 nothing matches it.
const never = ^uint32(0)

// setBank writes b into bank i of f; entries it does not use never match.
func setBank(f *vipFilter, i int, b filterBank) {
	for j := range filterV4 {
		e := &f.V4[i*filterV4+j]
		e.Net, e.Mask = never, 0
		if j < len(b.v4) {
			p := b.v4[j]
			e.Mask = maskWords(p.Bits(), 4)[0]
			e.Net = addrWords(p.Addr())[3] & e.Mask
		}
	}
	for j := range filterV6 {
		e := &f.V6[i*filterV6+j]
		e.Net, e.Mask = [4]uint32{never}, [4]uint32{}
		if j < len(b.v6) {
			p := b.v6[j]
			e.Mask = maskWords(p.Bits(), 16)
			e.Net = addrWords(p.Addr())
			for k := range e.Net {
				e.Net[k] &= e.Mask[k]
			}
		}
	}
}

// bankCovers reports whether bank i of f matches a, as may_be_vip in
// bpf/sockmesh.h does.
func bankCovers(f *vipFilter, i int, a netip.Addr) bool {
	w := addrWords(a)
	if a.Unmap().Is4() {
		for _, e := range f.V4[i*filterV4 : (i+1)*filterV4] {
			if w[3]&e.Mask == e.Net {
				return true
			}
		}
		return false
	}
	for _, e := range f.V6[i*filterV6 : (i+1)*filterV6] {
		if w[0]&e.Mask[0] == e.Net[0] && w[1]&e.Mask[1] == e.Net[1] && w[2]&e.Mask[2] == e.Net[2] && w[3]&e.Mask[3] == e.Net[3] {
			return true
		}
	}
	return false
}

// filterCovers reports whether the programs let a through to the lookup.
func filterCovers(f *vipFilter, a netip.Addr) bool {
	return bankCovers(f, 0, a) || bankCovers(f, 1, a)
}

// liveVIPs are the VIPs of the masters in the maps, and those of extra.
func (w *writer) liveVIPs(extra []Service) []netip.Addr {
	var out []netip.Addr
	for k, ms := range w.services {
		if ms.hasMaster {
			out = append(out, wordsAddr(k.Addr))
		}
	}
	for _, s := range extra {
		out = append(out, s.Key.VIP)
	}
	return out
}

func bankCoversAll(f *vipFilter, i int, vips []netip.Addr) bool {
	return !slices.ContainsFunc(vips, func(a netip.Addr) bool { return !bankCovers(f, i, a) })
}

// coveringBank is the bank that alone covers vips, or -1.
func coveringBank(f *vipFilter, vips []netip.Addr) int {
	for i := range 2 {
		if bankCoversAll(f, i, vips) {
			return i
		}
	}
	return -1
}

// widenFilter makes the filter cover the live VIPs and those of put,
// before put is written. The bank in use covers every live VIP already,
// so only put's are checked: a change inside the filter costs nothing
// per service loaded (with 10,000 services, gathering and sorting every
// VIP on each change was most of the daemon's time per change).
func (w *writer) widenFilter(put []Service) error {
	if w.bank >= 0 && !slices.ContainsFunc(put, func(s Service) bool { return !bankCovers(&w.filter, w.bank, s.Key.VIP) }) {
		return nil
	}
	return w.switchFilter(bankFor(w.liveVIPs(put)))
}

// narrowFilter fits the filter to the live VIPs, after removals.
func (w *writer) narrowFilter() error {
	want := w.filter
	if w.bank >= 0 {
		setBank(&want, w.bank, bankFor(w.liveVIPs(nil)))
		setBank(&want, 1-w.bank, filterBank{})
		if want == w.filter {
			return nil
		}
	}
	return w.switchFilter(bankFor(w.liveVIPs(nil)))
}

// switchFilter puts b into the spare bank, then clears the other: at every
// moment one bank alone covers what is live.
func (w *writer) switchFilter(b filterBank) error {
	if w.t.filter == nil {
		return nil
	}
	v := w.filter
	next := 1 - w.bank
	if w.bank < 0 {
		// Neither bank alone covers what is live: a filter this writer
		// never wrote. Put b into both banks at once.
		next = 0
		setBank(&v, 1, b)
	}
	setBank(&v, next, b)
	if err := w.t.filter.Put(0, v); err != nil {
		return fmt.Errorf("write vip filter: %w", err)
	}
	w.writes++
	w.filter, w.bank = v, next
	setBank(&v, 1-next, filterBank{})
	if v == w.filter {
		return nil
	}
	if err := w.t.filter.Put(0, v); err != nil {
		return fmt.Errorf("write vip filter: %w", err)
	}
	w.writes++
	w.filter = v
	return nil
}

// filterPrefixes lists what bank i of f matches, for the dump.
func filterPrefixes(f *vipFilter, i int) string {
	var parts []string
	for _, e := range f.V4[i*filterV4 : (i+1)*filterV4] {
		if e.Net == never && e.Mask == 0 {
			continue
		}
		parts = append(parts, prefixOf([4]uint32{0, 0, addrWords(netip.IPv4Unspecified())[2], e.Net}, [4]uint32{^uint32(0), ^uint32(0), ^uint32(0), e.Mask}))
	}
	for _, e := range f.V6[i*filterV6 : (i+1)*filterV6] {
		if e.Net == [4]uint32{never} && e.Mask == [4]uint32{} {
			continue
		}
		parts = append(parts, prefixOf(e.Net, e.Mask))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func prefixOf(net, mask [4]uint32) string {
	a := wordsAddr(net)
	bits := 0
	for _, m := range mask {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], m)
		for _, x := range b {
			for ; x&0x80 != 0; x <<= 1 {
				bits++
			}
		}
	}
	if a.Is4() {
		bits -= 96
	}
	return netip.PrefixFrom(a, bits).String()
}
