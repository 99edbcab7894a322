package lb

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// ServiceStats counts what the programs did for one service, summed over
// CPUs.
type ServiceStats struct {
	Key ServiceKey
	// Translations counts connects and datagrams sent to a backend.
	Translations uint64
	// Refused counts connects and datagrams refused for want of backends.
	Refused  uint64
	Backends []BackendStats
}

// BackendStats counts the translations that chose one backend.
type BackendStats struct {
	Addr         netip.AddrPort
	Translations uint64
}

// Stats reads the counters of every live service and backend.
func (d *Datapath) Stats() ([]ServiceStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.stats()
}

func (w *writer) stats() ([]ServiceStats, error) {
	counters, err := w.t.counters.All()
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	var out []ServiceStats
	for k, ms := range w.services {
		if !ms.hasMaster {
			continue
		}
		c := counters[ms.master.Id]
		st := ServiceStats{Key: keyOf(k), Translations: c.Translations, Refused: c.Refused}
		for _, id := range slices.Sorted(maps.Keys(w.bySvc[ms.master.Id])) {
			st.Backends = append(st.Backends, BackendStats{Addr: backendOf(w.backends[id]), Translations: counters[id].Translations})
		}
		slices.SortFunc(st.Backends, func(a, b BackendStats) int { return a.Addr.Compare(b.Addr) })
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ServiceStats) int { return a.Key.compare(b.Key) })
	return out, nil
}
