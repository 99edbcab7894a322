package lb

import (
	"hash/fnv"
	"net/netip"
	"slices"
)

// eligible returns the backends that take new connections: the active
// ones, or the draining ones when none is active (none when neither).
func eligible(backends []Backend) []Backend {
	for _, want := range []BackendState{Active, Draining} {
		var out []Backend
		for _, b := range backends {
			if b.State == want {
				out = append(out, b)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// layout returns the slot set of a canonical service: the backend of each
// slot, in slot order. Only eligible backends appear. The programs pick a
// slot per connection (bpf/sockmesh.h, select_backend):
//   - random: each backend fills as many slots as its (reduced) weight and
//     a random slot is taken;
//   - round-robin: the same multiset, interleaved so that consecutive
//     tickets spread the weights smoothly (nginx's smooth weighted order);
//   - maglev: the Maglev lookup table (maglevTable), indexed by a hash of
//     the client.
func layout(s Service) []netip.AddrPort {
	bs := eligible(s.Backends)
	if len(bs) == 0 {
		return nil
	}
	switch s.Policy {
	case RoundRobin:
		return smoothOrder(bs)
	case Maglev:
		return maglevTable(bs, s.maglevTable())
	}
	ws := reducedWeights(bs)
	out := make([]netip.AddrPort, 0, sumWeights(ws))
	for i, b := range bs {
		for range ws[i] {
			out = append(out, b.Addr)
		}
	}
	return out
}

func sumWeights(ws []uint32) int {
	n := 0
	for _, w := range ws {
		n += int(w)
	}
	return n
}

func (s Service) maglevTable() int {
	if s.MaglevTable == 0 {
		return DefaultMaglevTable
	}
	return s.MaglevTable
}

// smoothOrder interleaves the backends by weight: at each step every
// backend gains its weight in credit and the richest, which pays the total,
// is next. Weights 5,1,1 give a a b a c a a, not a a a a a b c.
func smoothOrder(bs []Backend) []netip.AddrPort {
	ws := reducedWeights(bs)
	total := sumWeights(ws)
	credit := make([]int, len(bs))
	out := make([]netip.AddrPort, 0, total)
	for range total {
		best := 0
		for i := range bs {
			credit[i] += int(ws[i])
			if credit[i] > credit[best] {
				best = i
			}
		}
		credit[best] -= total
		out = append(out, bs[best].Addr)
	}
	return out
}

// maglevTable fills a lookup table of size m (a prime) as Maglev does
// (Eisenbud et al., NSDI 2016, section 3.4): each backend walks its own
// permutation of the table, derived from its address alone, and in turn
// claims the next entry still free. A backend of weight w takes w turns
// per round. Removing one of N backends frees only its own entries, which
// the others claim: about 1/N of the table changes.
func maglevTable(bs []Backend, m int) []netip.AddrPort {
	bs = slices.Clone(bs)
	slices.SortFunc(bs, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	ws := reducedWeights(bs)
	offset := make([]uint64, len(bs))
	skip := make([]uint64, len(bs))
	next := make([]uint64, len(bs))
	for i, b := range bs {
		h1, h2 := maglevHashes(b.Addr)
		offset[i] = h1 % uint64(m)
		skip[i] = h2%uint64(m-1) + 1
	}
	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	filled := 0
	for filled < m {
		for i := range bs {
			for range ws[i] {
				c := (offset[i] + next[i]*skip[i]) % uint64(m)
				for table[c] >= 0 {
					next[i]++
					c = (offset[i] + next[i]*skip[i]) % uint64(m)
				}
				table[c] = i
				next[i]++
				if filled++; filled == m {
					break
				}
			}
			if filled == m {
				break
			}
		}
	}
	out := make([]netip.AddrPort, m)
	for i, b := range table {
		out[i] = bs[b].Addr
	}
	return out
}

// maglevHashes are the two independent hashes of a backend that place its
// permutation: FNV-1a of its address with two different prefixes.
func maglevHashes(a netip.AddrPort) (uint64, uint64) {
	key, _ := a.MarshalBinary()
	h := fnv.New64a()
	h.Write([]byte("offset"))
	h.Write(key)
	h1 := h.Sum64()
	h.Reset()
	h.Write([]byte("skip"))
	h.Write(key)
	return h1, h.Sum64()
}
