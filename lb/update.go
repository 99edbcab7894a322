package lb

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// Update changes only the services named: put adds or replaces services,
// remove deletes services by key. It validates put against itself and
// against what is live, and checks capacity, before any write; with the
// same write order as Apply, so no connect() sees a half-written service.
// Its cost grows with the size of the change, not of the whole set, which
// is what a registry applying one edited file needs.
func (d *Datapath) Update(put []Service, remove []ServiceKey) (ApplyStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.update(put, remove)
}

func (w *writer) update(put []Service, remove []ServiceKey) (ApplyStats, error) {
	ps, err := validateSet(put)
	if err != nil {
		return ApplyStats{}, fmt.Errorf("update services: %w", err)
	}
	gone := make(map[svcKey]bool, len(remove)+len(ps))
	for _, k := range remove {
		gone[masterKey(k.Normalize())] = true
	}
	for _, s := range ps {
		if gone[masterKey(s.Key)] {
			return ApplyStats{}, fmt.Errorf("update services: %s is both put and removed", s.Key)
		}
	}
	// Entries of the put services are rewritten: count them as gone too.
	replaced := make(map[svcKey]bool, len(gone)+len(ps))
	for k := range gone {
		replaced[k] = true
	}
	for _, s := range ps {
		replaced[masterKey(s.Key)] = true
	}

	// getsockname entries: a put service may not take one another live
	// service keeps.
	wanted := wantedLocals(ps)
	for k, v := range wanted {
		cur, ok := w.locals[k]
		if !ok || cur == v {
			continue
		}
		owner := svcKey{Addr: cur.Vip, Port: cur.VipPort, Proto: k.Proto}
		if !replaced[owner] {
			return ApplyStats{}, fmt.Errorf("update services: backend %s/%s already shows service %s to getsockname", netip.AddrPortFrom(wordsAddr(k.Addr), wordPort(k.Port)), Proto(k.Proto), keyOf(owner))
		}
	}

	// Capacity: what the maps hold, less what is replaced, plus what is
	// put (the mirror's occupancy, so the cost follows the change).
	now := Usage{
		ServiceEntries: w.entries,
		Backends:       len(w.backends),
		Counters:       len(w.counters),
		LocalNames:     len(w.locals) + len(wanted),
		Options:        len(w.opts),
	}
	for mk := range replaced {
		ms := w.services[mk]
		if ms == nil {
			continue
		}
		now.ServiceEntries -= len(ms.slots)
		if ms.hasMaster {
			now.ServiceEntries--
			n := len(w.bySvc[ms.master.Id])
			now.Backends -= n
			now.Counters -= 1 + n
			if _, ok := w.opts[ms.master.Id]; ok {
				now.Options--
			}
		}
	}
	for _, s := range ps {
		now.Add(s)
	}
	if err := now.Fits(w.limits); err != nil {
		return ApplyStats{}, fmt.Errorf("update services: %w", err)
	}

	w.writes = 0
	var st ApplyStats
	if err := w.widenFilter(ps); err != nil {
		return st, fmt.Errorf("update services: %w", err)
	}
	errs := w.write(&st, slices.SortedFunc(maps.Keys(gone), compareSvcKey), ps)
	if err := w.putLocals(wanted); err != nil {
		errs = append(errs, err)
	}
	// getsockname entries the replaced services no longer want.
	for _, k := range sortedLocals(w.locals, len(w.locals) > 0) {
		v := w.locals[k]
		owner := svcKey{Addr: v.Vip, Port: v.VipPort, Proto: k.Proto}
		if _, keep := wanted[k]; keep || !replaced[owner] {
			continue
		}
		if err := w.deleteLocal(k); err != nil {
			errs = append(errs, err)
		}
	}
	// Only a removal can narrow the filter; a filter left wider than it
	// need be is still correct.
	if len(gone) > 0 {
		if err := w.narrowFilter(); err != nil {
			errs = append(errs, err)
		}
	}
	st.Writes = w.writes
	if err := errors.Join(errs...); err != nil {
		return st, fmt.Errorf("update services: %w", err)
	}
	return st, nil
}

func sortedLocals(m map[localKey]localValue, any bool) []localKey {
	if !any {
		return nil
	}
	return slices.SortedFunc(maps.Keys(m), compareLocalKey)
}
