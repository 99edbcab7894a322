package registry

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"sockmesh/servicefile"
)

// dkey is one derived VIP: a service name in one family.
type dkey struct {
	name   string
	family servicefile.Family
}

func compareDkey(a, b dkey) int {
	if c := strings.Compare(a.name, b.name); c != 0 {
		return c
	}
	return int(a.family) - int(b.family)
}

// vipTable holds the derived VIPs and what it takes to change them by one
// service without redoing them all: which addresses someone tried and
// lost (contested). Adding or removing a service whose addresses nobody
// contests changes nothing else, so the result stays the one the full
// round-based assignment would give; anything else is redone in full.
type vipTable struct {
	ranges Ranges
	cache  map[dkey][]netip.Addr // candidates computed so far

	assign    map[dkey]netip.Addr
	tries     map[dkey]int // candidates lost before the one assigned
	holder    map[netip.Addr]dkey
	explicit  map[netip.Addr][]string // services that set the address
	contested map[netip.Addr]int
	lost      map[dkey]bool // derivations not on their first candidate
}

func newVIPTable(ranges Ranges) *vipTable {
	t := &vipTable{ranges: ranges, cache: map[dkey][]netip.Addr{}}
	t.reset()
	return t
}

func (t *vipTable) reset() { t.resetFor(0) }

func (t *vipTable) resetFor(n int) {
	t.assign = make(map[dkey]netip.Addr, n)
	t.tries = make(map[dkey]int, n)
	t.holder = make(map[netip.Addr]dkey, n)
	t.explicit = map[netip.Addr][]string{}
	t.contested = map[netip.Addr]int{}
	t.lost = map[dkey]bool{}
}

func (t *vipTable) candidate(d dkey, i int) netip.Addr {
	cs := t.cache[d]
	for len(cs) <= i {
		cs = append(cs, Candidate(t.ranges.of(d.family), d.name, len(cs)))
	}
	t.cache[d] = cs
	return cs[i]
}

func (t *vipTable) busy(a netip.Addr, prefix netip.Prefix) bool {
	_, derived := t.holder[a]
	return derived || len(t.explicit[a]) > 0 || reserved(prefix, a)
}

// rebuild assigns every derivation from scratch, in rounds: in round k
// every unplaced name tries its k-th candidate, names in sorted order. A
// name placed in an earlier round is never displaced by a later one, and
// the result depends only on the set of names and explicit addresses.
func (t *vipTable) rebuild(ds []dkey, explicit map[netip.Addr][]string) {
	t.resetFor(len(ds))
	for a, names := range explicit {
		t.explicit[a] = slices.Clone(names)
	}
	pending := slices.Clone(ds)
	slices.SortFunc(pending, compareDkey)
	for attempt := 0; attempt < maxAttempts && len(pending) > 0; attempt++ {
		next := pending[:0]
		for _, d := range pending {
			prefix := t.ranges.of(d.family)
			c := t.candidate(d, attempt)
			if t.busy(c, prefix) {
				t.contested[c]++
				next = append(next, d)
				continue
			}
			t.holder[c] = d
			t.assign[d] = c
			t.tries[d] = attempt
			if attempt > 0 {
				t.lost[d] = true
			}
		}
		pending = next
	}
	for _, d := range pending {
		t.tries[d] = maxAttempts // no address: the range is full
		t.lost[d] = true
	}
}

// change applies a difference: derivations and explicit addresses removed
// and added. When the difference touches an address someone contests (or
// might), it changes nothing and reports false; the caller then rebuilds.
// The checks come first, so a refusal leaves the table as it was.
func (t *vipTable) change(removed, added []dkey, removedExp, addedExp map[netip.Addr][]string) bool {
	left := map[netip.Addr][]string{}
	for a, names := range removedExp {
		rest := slices.DeleteFunc(slices.Clone(t.explicit[a]), func(n string) bool { return slices.Contains(names, n) })
		if len(rest) == 0 && t.contested[a] > 0 {
			return false
		}
		left[a] = rest
	}
	for _, d := range removed {
		a, ok := t.assign[d]
		if !ok || t.contested[a] > 0 || t.lost[d] {
			return false
		}
	}
	for a := range addedExp {
		if _, derived := t.holder[a]; derived {
			return false
		}
	}
	firsts := map[netip.Addr]bool{}
	for _, d := range added {
		c := t.candidate(d, 0)
		if t.busy(c, t.ranges.of(d.family)) || firsts[c] || len(addedExp[c]) > 0 {
			return false
		}
		firsts[c] = true
	}

	for a, rest := range left {
		if len(rest) == 0 {
			delete(t.explicit, a)
		} else {
			t.explicit[a] = rest
		}
	}
	for _, d := range removed {
		delete(t.holder, t.assign[d])
		delete(t.assign, d)
		delete(t.tries, d)
	}
	for a, names := range addedExp {
		t.explicit[a] = append(t.explicit[a], names...)
	}
	for _, d := range added {
		c := t.candidate(d, 0)
		t.holder[c] = d
		t.assign[d] = c
		t.tries[d] = 0
	}
	return true
}

// collisions lists the derivations that did not get their first candidate.
func (t *vipTable) collisions() []Collision {
	var out []Collision
	for _, d := range slices.SortedFunc(maps.Keys(t.lost), compareDkey) {
		want := t.candidate(d, 0)
		c := Collision{Name: d.name, Wanted: want, Got: t.assign[d]}
		if h, ok := t.holder[want]; ok {
			c.Holder = h.name
		} else if names := t.explicit[want]; len(names) > 0 {
			c.Holder, c.Explicit = names[0], true
		} else {
			c.Holder = "the range's reserved first or last address"
		}
		out = append(out, c)
	}
	return out
}
