package lb

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// dump renders the maps as stable, sorted text: one line per entry, so two
// dumps compare with a plain diff. Counters are left out (they move).
func dump(t tables) (string, error) {
	svcs, err := t.services.All()
	if err != nil {
		return "", fmt.Errorf("dump services: %w", err)
	}
	backends, err := t.backends.All()
	if err != nil {
		return "", fmt.Errorf("dump backends: %w", err)
	}
	locals, err := t.localNames.All()
	if err != nil {
		return "", fmt.Errorf("dump local names: %w", err)
	}
	var b strings.Builder
	if t.filter != nil {
		f, err := t.filter.All()
		if err != nil {
			return "", fmt.Errorf("dump vip filter: %w", err)
		}
		v := f[0]
		fmt.Fprintf(&b, "vip-filter bank0 %s\nvip-filter bank1 %s\n", filterPrefixes(&v, 0), filterPrefixes(&v, 1))
	}
	keys := slices.SortedFunc(maps.Keys(svcs), func(a, b svcKey) int {
		return cmp.Or(compareSvcKey(a, b), cmp.Compare(a.Slot, b.Slot))
	})
	for _, k := range keys {
		v := svcs[k]
		if k.Slot == 0 {
			fmt.Fprintf(&b, "service %s id=%d slots=%d region=%#x flags=%s\n", keyOf(k), v.Id, v.Count, v.Base, flagNames(v.Flags))
			continue
		}
		fmt.Fprintf(&b, "service %s slot=%#x backend=%d\n", keyOf(k), k.Slot, v.Id)
	}
	for _, id := range slices.Sorted(maps.Keys(backends)) {
		v := backends[id]
		fmt.Fprintf(&b, "backend %d %s family=%s service=%d\n", id, backendOf(v), familyName(v.Family), v.SvcId)
	}
	if t.opts != nil {
		opts, err := t.opts.All()
		if err != nil {
			return "", fmt.Errorf("dump service options: %w", err)
		}
		for _, id := range slices.Sorted(maps.Keys(opts)) {
			fmt.Fprintf(&b, "options %d affinity=%s\n", id, time.Duration(opts[id].AffinityNs))
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(locals), compareLocalKey) {
		v := locals[k]
		fmt.Fprintf(&b, "local-name %s/%s -> %s\n",
			netip.AddrPortFrom(wordsAddr(k.Addr), wordPort(k.Port)), Proto(k.Proto),
			netip.AddrPortFrom(wordsAddr(v.Vip), wordPort(v.VipPort)))
	}
	return b.String(), nil
}

func flagNames(f uint32) string {
	if f == 0 {
		return "-"
	}
	var names []string
	if f&flagLocalName != 0 {
		names = append(names, "local-name")
		f &^= flagLocalName
	}
	if p := Policy((f & flagPolicyMask) >> flagPolicyBit); p != Random {
		names = append(names, p.String())
		f &^= flagPolicyMask
	}
	if f&flagNetns != 0 {
		names = append(names, "client-netns")
		f &^= flagNetns
	}
	if f&flagAffinity != 0 {
		names = append(names, "affinity")
		f &^= flagAffinity
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", f))
	}
	return strings.Join(names, ",")
}

func familyName(f uint8) string {
	switch f {
	case afInet:
		return "ipv4"
	case afInet6:
		return "ipv6"
	}
	return fmt.Sprintf("af(%d)", f)
}
