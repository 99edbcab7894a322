package lb

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// ApplyStats says what one Apply changed.
type ApplyStats struct {
	Added, Updated, Removed, Unchanged int
	// Writes counts map updates and deletes; 0 when nothing changed.
	Writes int
	// Gone are the backends that took new connections of a service
	// before and no longer do because they were removed (or their service
	// was) or went down. Sockets the datapath connected to them stay
	// connected: the caller may close them (draining backends are not
	// listed: they keep their connections).
	Gone []GoneBackend
}

// GoneBackend is a backend a service no longer sends anything new to.
type GoneBackend struct {
	Service ServiceKey
	Backend netip.AddrPort
	// CloseConnections is the service's wish that TCP connections to the
	// backend be reset too, not only connected UDP sockets.
	CloseConnections bool
}

// writer converges the maps to a desired service set. It keeps a mirror of
// what is in the maps, updated after every successful write, so a failed
// Apply leaves an exact picture and the next one finishes the job.
//
// The order of writes is what keeps a concurrent connect() safe:
//  1. ids come from a counter persisted before use and are never reused;
//  2. new backends (and their counters) are written before any slot names
//     them;
//  3. the new slot set goes into the region the master does not point at;
//  4. the master is flipped in one update: count, region and flags at once;
//  5. only then are the old region's slots deleted, and orphaned backends
//     last of all.
//
// Around all of this, the VIP filter is widened before anything is written
// and narrowed after (filter.go), so it never hides a live VIP.
//
// A reader holding an old master may find a slot or backend gone; the
// programs then re-read the master (select_backend in bpf/sockmesh.h).
type writer struct {
	t      tables
	limits Limits
	nextID uint64

	services map[svcKey]*mirrorService // by master key
	backends map[uint32]backendValue
	bySvc    map[uint32]map[uint32]bool // service id -> its backend ids
	counters map[uint32]bool
	locals   map[localKey]localValue
	// opts are the sm_svc_opts entries: service id -> affinity timeout.
	opts map[uint32]uint64
	// closeConns remembers each service's CloseConnections, and kept the
	// backends of its last applied version that were not down (draining
	// ones included, which the slots do not show). Neither is in the
	// maps: after a restart only the slotted backends are known.
	closeConns map[svcKey]bool
	kept       map[svcKey][]netip.AddrPort
	// entries counts the service-map entries the mirror holds.
	entries int
	// filter is the VIP filter in the map; bank is the bank of it that
	// alone covers every live VIP (-1: neither, see switchFilter).
	filter vipFilter
	bank   int

	writes int
}

type mirrorService struct {
	master    svcValue
	hasMaster bool
	slots     map[uint32]uint32 // slot -> backend id
}

func (ms *mirrorService) active(slot uint32) bool {
	return ms.hasMaster && slot > ms.master.Base && slot <= ms.master.Base+ms.master.Count
}

// newWriter restores the mirror from the maps.
func newWriter(t tables, lim Limits) (*writer, error) {
	w := &writer{
		t:        t,
		limits:   lim,
		services: make(map[svcKey]*mirrorService),
		backends: make(map[uint32]backendValue),
		bySvc:    make(map[uint32]map[uint32]bool),
		counters: make(map[uint32]bool),
		opts:     make(map[uint32]uint64),

		closeConns: make(map[svcKey]bool),
		kept:       make(map[svcKey][]netip.AddrPort),
	}
	svcs, err := t.services.All()
	if err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	w.entries = len(svcs)
	for k, v := range svcs {
		ms := w.service(k)
		if k.Slot == 0 {
			ms.master, ms.hasMaster = v, true
		} else {
			ms.slots[k.Slot] = v.Id
		}
	}
	if w.backends, err = t.backends.All(); err != nil {
		return nil, fmt.Errorf("read backends: %w", err)
	}
	for id, b := range w.backends {
		w.addBySvc(b.SvcId, id)
	}
	counters, err := t.counters.All()
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	for id := range counters {
		w.counters[id] = true
	}
	if w.locals, err = t.localNames.All(); err != nil {
		return nil, fmt.Errorf("read local names: %w", err)
	}
	if t.opts != nil {
		opts, err := t.opts.All()
		if err != nil {
			return nil, fmt.Errorf("read service options: %w", err)
		}
		for id, o := range opts {
			w.opts[id] = o.AffinityNs
		}
	}
	if t.filter != nil {
		f, err := t.filter.All()
		if err != nil {
			return nil, fmt.Errorf("read vip filter: %w", err)
		}
		w.filter = f[0]
	}
	w.bank = coveringBank(&w.filter, w.liveVIPs(nil))
	meta, err := t.meta.All()
	if err != nil {
		return nil, fmt.Errorf("read meta: %w", err)
	}
	w.nextID = max(meta[metaNextIDSlot], 1)
	// Never hand out an id the maps still hold, whatever meta says.
	for id := range w.counters {
		w.nextID = max(w.nextID, uint64(id)+1)
	}
	for id := range w.backends {
		w.nextID = max(w.nextID, uint64(id)+1)
	}
	return w, nil
}

func (w *writer) service(master svcKey) *mirrorService {
	master.Slot = 0
	ms := w.services[master]
	if ms == nil {
		ms = &mirrorService{slots: make(map[uint32]uint32)}
		w.services[master] = ms
	}
	return ms
}

func (w *writer) addBySvc(svc, backend uint32) {
	if w.bySvc[svc] == nil {
		w.bySvc[svc] = make(map[uint32]bool)
	}
	w.bySvc[svc][backend] = true
}

// The write primitives: each updates the mirror only when the map took it.

func (w *writer) putSlot(k svcKey, v svcValue) error {
	if err := w.t.services.Put(k, v); err != nil {
		return fmt.Errorf("write service %s slot %d: %w", keyOf(k), k.Slot, err)
	}
	w.writes++
	ms := w.service(k)
	if k.Slot == 0 {
		if !ms.hasMaster {
			w.entries++
		}
		ms.master, ms.hasMaster = v, true
	} else {
		if _, ok := ms.slots[k.Slot]; !ok {
			w.entries++
		}
		ms.slots[k.Slot] = v.Id
	}
	return nil
}

func (w *writer) deleteSlot(k svcKey) error {
	if err := w.t.services.Delete(k); err != nil {
		return fmt.Errorf("delete service %s slot %d: %w", keyOf(k), k.Slot, err)
	}
	w.writes++
	ms := w.service(k)
	if k.Slot == 0 {
		if ms.hasMaster {
			w.entries--
		}
		ms.master, ms.hasMaster = svcValue{}, false
	} else {
		if _, ok := ms.slots[k.Slot]; ok {
			w.entries--
		}
		delete(ms.slots, k.Slot)
	}
	if !ms.hasMaster && len(ms.slots) == 0 {
		k.Slot = 0
		delete(w.services, k)
	}
	return nil
}

func (w *writer) putBackend(id uint32, b backendValue) error {
	if err := w.t.backends.Put(id, b); err != nil {
		return fmt.Errorf("write backend %d (%s): %w", id, backendOf(b), err)
	}
	w.writes++
	w.backends[id] = b
	w.addBySvc(b.SvcId, id)
	return nil
}

func (w *writer) deleteBackend(id uint32) error {
	b := w.backends[id]
	if err := w.t.backends.Delete(id); err != nil {
		return fmt.Errorf("delete backend %d (%s): %w", id, backendOf(b), err)
	}
	w.writes++
	delete(w.backends, id)
	delete(w.bySvc[b.SvcId], id)
	if len(w.bySvc[b.SvcId]) == 0 {
		delete(w.bySvc, b.SvcId)
	}
	return nil
}

func (w *writer) putCounter(id uint32) error {
	if w.counters[id] {
		return nil
	}
	if err := w.t.counters.Put(id, counterValue{}); err != nil {
		return fmt.Errorf("create counter %d: %w", id, err)
	}
	w.writes++
	w.counters[id] = true
	return nil
}

func (w *writer) deleteCounter(id uint32) error {
	if err := w.t.counters.Delete(id); err != nil {
		return fmt.Errorf("delete counter %d: %w", id, err)
	}
	w.writes++
	delete(w.counters, id)
	return nil
}

func (w *writer) putLocal(k localKey, v localValue) error {
	if err := w.t.localNames.Put(k, v); err != nil {
		return fmt.Errorf("write local name %s: %w", netip.AddrPortFrom(wordsAddr(k.Addr), wordPort(k.Port)), err)
	}
	w.writes++
	w.locals[k] = v
	return nil
}

func (w *writer) deleteLocal(k localKey) error {
	if err := w.t.localNames.Delete(k); err != nil {
		return fmt.Errorf("delete local name %s: %w", netip.AddrPortFrom(wordsAddr(k.Addr), wordPort(k.Port)), err)
	}
	w.writes++
	delete(w.locals, k)
	return nil
}

// putOpts writes a service's options; it resets the round-robin ticket,
// so it is only called when the entry is missing or its timeout changes.
func (w *writer) putOpts(id uint32, affinity uint64) error {
	if w.t.opts == nil {
		return errors.New("write service options: the pinned maps have no sm_svc_opts")
	}
	if err := w.t.opts.Put(id, optsValue{AffinityNs: affinity}); err != nil {
		return fmt.Errorf("write options of service %d: %w", id, err)
	}
	w.writes++
	w.opts[id] = affinity
	return nil
}

func (w *writer) deleteOpts(id uint32) error {
	if _, ok := w.opts[id]; !ok {
		return nil
	}
	if err := w.t.opts.Delete(id); err != nil {
		return fmt.Errorf("delete options of service %d: %w", id, err)
	}
	w.writes++
	delete(w.opts, id)
	return nil
}

// reserveIDs persists next+n before the ids are used, so that no id is ever
// handed out twice, even by a process that restarts after a crash.
func (w *writer) reserveIDs(n int) (first uint32, err error) {
	if n == 0 {
		return 0, nil
	}
	next := w.nextID + uint64(n)
	if next > 1<<32-1 {
		return 0, errors.New("reserve ids: the 32-bit id space is used up; run 'sockmesh down' to start afresh")
	}
	if err := w.t.meta.Put(metaNextIDSlot, next); err != nil {
		return 0, fmt.Errorf("reserve ids: %w", err)
	}
	first = uint32(w.nextID)
	w.nextID = next
	return first, nil
}

// live reads a service back from the mirror as it is served now. What the
// maps do not hold comes back as its zero value: backends that take no new
// connections, and CloseConnections. A Maglev table gives each backend's
// share of the table, not the weight written.
func (w *writer) live(master svcKey) (Service, bool) {
	ms := w.services[master]
	if ms == nil || !ms.hasMaster {
		return Service{}, false
	}
	f := ms.master.Flags
	s := Service{
		Key:       keyOf(master),
		LocalName: f&flagLocalName != 0,
		Policy:    Policy((f & flagPolicyMask) >> flagPolicyBit),
	}
	if f&flagNetns != 0 {
		s.Client = ClientNetns
	}
	if f&flagAffinity != 0 {
		s.Affinity = time.Duration(w.opts[ms.master.Id])
	}
	if s.Policy == Maglev {
		s.MaglevTable = int(ms.master.Count)
	}
	slots, ok := w.liveSlots(ms)
	if !ok {
		return Service{}, false // half-written: treat as changed
	}
	weights := make(map[netip.AddrPort]uint16)
	for _, a := range slots {
		weights[a]++
	}
	for _, a := range slices.SortedFunc(maps.Keys(weights), netip.AddrPort.Compare) {
		s.Backends = append(s.Backends, Backend{Addr: a, Weight: weights[a]})
	}
	return s.canonical(), true
}

// liveSlots returns the backend address of each slot of the active
// region, in order; false if one is missing.
func (w *writer) liveSlots(ms *mirrorService) ([]netip.AddrPort, bool) {
	out := make([]netip.AddrPort, 0, ms.master.Count)
	for slot := ms.master.Base + 1; slot <= ms.master.Base+ms.master.Count; slot++ {
		id, ok := ms.slots[slot]
		if !ok {
			return nil, false
		}
		b, ok := w.backends[id]
		if !ok {
			return nil, false
		}
		out = append(out, backendOf(b))
	}
	return out, true
}

// flagsOf are the master flags of a canonical service.
func flagsOf(s Service) uint32 {
	flags := uint32(s.Policy) << flagPolicyBit
	if s.LocalName {
		flags |= flagLocalName
	}
	if s.Client == ClientNetns {
		flags |= flagNetns
	}
	if s.Affinity > 0 {
		flags |= flagAffinity
	}
	return flags
}

// servedSlots is the slot set a service's maps serve now (see
// liveSlots); false without a master, or when one is half-written.
func (w *writer) servedSlots(ms *mirrorService) ([]netip.AddrPort, bool) {
	if ms == nil || !ms.hasMaster {
		return nil, false
	}
	return w.liveSlots(ms)
}

// serves reports whether the maps already do what s with slot set lay
// asks: same flags, same backend in every slot, same options. slots and
// ok are what servedSlots said of ms.
func (w *writer) serves(ms *mirrorService, s Service, lay, slots []netip.AddrPort, ok bool) bool {
	if !ok || ms.master.Flags != flagsOf(s) || !slices.Equal(slots, lay) {
		return false
	}
	aff, has := w.opts[ms.master.Id]
	if s.needsOpts() {
		return has && aff == uint64(s.Affinity)
	}
	return !has
}

// Services returns what the maps serve now, sorted by key.
func (w *writer) Services() []Service {
	var out []Service
	for k := range w.services {
		if s, ok := w.live(k); ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Service) int { return a.Key.compare(b.Key) })
	return out
}

// apply converges the maps to desired. Nothing is written when desired is
// invalid or does not fit the maps.
func (w *writer) apply(desired []Service) (ApplyStats, error) {
	ds, err := validateSet(desired)
	if err != nil {
		return ApplyStats{}, fmt.Errorf("apply services: %w", err)
	}
	locals := wantedLocals(ds)
	if err := usageOf(ds, len(locals)).Fits(w.limits); err != nil {
		return ApplyStats{}, fmt.Errorf("apply services: %w", err)
	}
	w.writes = 0
	var st ApplyStats
	var errs []error
	if err := w.widenFilter(ds); err != nil {
		return st, fmt.Errorf("apply services: %w", err)
	}

	want := make(map[svcKey]bool, len(ds))
	for _, s := range ds {
		want[masterKey(s.Key)] = true
	}
	// Removals first: their entries make room for what is added.
	var gone []svcKey
	for _, k := range slices.SortedFunc(maps.Keys(w.services), compareSvcKey) {
		if !want[k] {
			gone = append(gone, k)
		}
	}
	errs = w.write(&st, gone, ds)
	if err := w.putLocals(locals); err != nil {
		errs = append(errs, err)
	}
	if err := w.sweep(locals); err != nil {
		errs = append(errs, err)
	}
	if err := w.narrowFilter(); err != nil {
		errs = append(errs, err)
	}
	st.Writes = w.writes
	if err := errors.Join(errs...); err != nil {
		return st, fmt.Errorf("apply services: %w", err)
	}
	return st, nil
}

// write removes the services gone (sorted master keys), then adds or
// updates those in ds that differ from what is live, counting into st.
func (w *writer) write(st *ApplyStats, gone []svcKey, ds []Service) []error {
	var errs []error
	for _, k := range gone {
		ms := w.services[k]
		if ms == nil || !ms.hasMaster {
			continue
		}
		slots, _ := w.servedSlots(ms)
		before := w.before(k, slots)
		id := ms.master.Id
		if err := w.deleteSlot(k); err != nil {
			errs = append(errs, err)
			continue
		}
		st.Removed++
		st.Gone = appendGone(st.Gone, keyOf(k), before, nil, w.closeConns[k])
		delete(w.closeConns, k)
		delete(w.kept, k)
		if err := w.sweepService(k); err != nil {
			errs = append(errs, err)
		}
		if err := w.deleteOpts(id); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range ds {
		mk := masterKey(s.Key)
		ms := w.services[mk]
		lay := layout(s)
		slots, ok := w.servedSlots(ms)
		before := w.before(mk, slots)
		if w.serves(ms, s, lay, slots, ok) {
			// The slots stay; a draining backend may still go.
			st.Unchanged++
		} else {
			if ms != nil && ms.hasMaster {
				st.Updated++
			} else {
				st.Added++
			}
			flipped, err := w.applyService(s, lay)
			if err != nil {
				errs = append(errs, err)
			}
			if !flipped {
				continue // the old version still serves
			}
		}
		st.Gone = appendGone(st.Gone, s.Key, before, s.Backends, s.CloseConnections)
		w.closeConns[mk] = s.CloseConnections
		w.kept[mk] = notDown(s.Backends)
	}
	return errs
}

// before is what took or kept connections of a service before this
// write: its live slots and the backends not down in the version last
// applied.
func (w *writer) before(mk svcKey, slots []netip.AddrPort) []netip.AddrPort {
	return append(slices.Clone(w.kept[mk]), slots...)
}

func notDown(bs []Backend) []netip.AddrPort {
	var out []netip.AddrPort
	for _, b := range bs {
		if b.State != Down {
			out = append(out, b.Addr)
		}
	}
	return out
}

// appendGone adds the backends of before (a slot set) that are not among
// the backends now taking or keeping connections: gone from now, or down.
func appendGone(out []GoneBackend, k ServiceKey, before []netip.AddrPort, now []Backend, closeConns bool) []GoneBackend {
	kept := make(map[netip.AddrPort]bool, len(now))
	for _, b := range now {
		if b.State != Down {
			kept[b.Addr] = true
		}
	}
	seen := make(map[netip.AddrPort]bool)
	for _, a := range before {
		if kept[a] || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, GoneBackend{Service: k, Backend: a, CloseConnections: closeConns})
	}
	return out
}

func compareSvcKey(a, b svcKey) int { return keyOf(a).compare(keyOf(b)) }

// applyService writes one added or changed service, with slot set lay,
// in the safe order. flipped says whether the new version serves (its
// master was written), whatever the error: the clean-up after the flip
// may fail and be retried later.
func (w *writer) applyService(s Service, lay []netip.AddrPort) (flipped bool, err error) {
	mk := masterKey(s.Key)
	ms := w.services[mk]

	var svcID uint32
	var ids map[netip.AddrPort]uint32 // current backends by address, to keep their ids
	region := uint32(0)
	if ms != nil && ms.hasMaster {
		svcID = ms.master.Id
		ids = make(map[netip.AddrPort]uint32)
		for slot, id := range ms.slots {
			if b, ok := w.backends[id]; ok && ms.active(slot) {
				ids[backendOf(b)] = id
			}
		}
		region = slotRegion - ms.master.Base // the other region
	}

	newIDs := 0
	if svcID == 0 {
		newIDs++
	}
	slotted := slices.Compact(slices.SortedFunc(slices.Values(lay), netip.AddrPort.Compare))
	for _, a := range slotted {
		if _, ok := ids[a]; !ok {
			newIDs++
		}
	}
	next, err := w.reserveIDs(newIDs)
	if err != nil {
		return false, err
	}
	take := func() uint32 { id := next; next++; return id }
	if svcID == 0 {
		svcID = take()
	}
	if err := w.putCounter(svcID); err != nil {
		return false, err
	}

	// 2. New backends and their counters, before any slot names them.
	// Only backends in the slot set are in sm_backends: affinity relies
	// on it to tell a backend that still takes new connections.
	for _, a := range slotted {
		if _, ok := ids[a]; ok {
			continue
		}
		id := take()
		bv := backendValue{Addr: addrWords(a.Addr()), Port: portWord(a.Port()), Family: family(a.Addr()), SvcId: svcID}
		if err := w.putCounter(id); err != nil {
			return false, err
		}
		if err := w.putBackend(id, bv); err != nil {
			return false, err
		}
		if ids == nil {
			ids = make(map[netip.AddrPort]uint32)
		}
		ids[a] = id
	}
	slotIDs := make([]uint32, len(lay))
	for i, a := range lay {
		slotIDs[i] = ids[a]
	}

	// 3. The new slot set, in the region nobody reads.
	for i, id := range slotIDs {
		k := mk
		k.Slot = region + uint32(i) + 1
		if err := w.putSlot(k, svcValue{Id: id}); err != nil {
			return false, err
		}
	}

	// Options the new master relies on, before it does.
	if aff, has := w.opts[svcID]; s.needsOpts() && (!has || aff != uint64(s.Affinity)) {
		if err := w.putOpts(svcID, uint64(s.Affinity)); err != nil {
			return false, err
		}
	}

	// 4. The flip.
	if err := w.putSlot(mk, svcValue{Id: svcID, Count: uint32(len(slotIDs)), Base: region, Flags: flagsOf(s)}); err != nil {
		return false, err
	}

	// 5. The old region, orphaned backends, options no longer used.
	if err := w.sweepService(mk); err != nil {
		return true, err
	}
	if !s.needsOpts() {
		return true, w.deleteOpts(svcID)
	}
	return true, nil
}

// sweepService deletes what the service's master no longer references:
// slots outside the active region, then backends, then their counters. A
// service without a master loses everything, its own counter last.
func (w *writer) sweepService(mk svcKey) error {
	ms := w.services[mk]
	if ms == nil {
		return nil
	}
	referenced := make(map[uint32]bool)
	for _, slot := range slices.Sorted(maps.Keys(ms.slots)) {
		if ms.active(slot) {
			referenced[ms.slots[slot]] = true
			continue
		}
		bid := ms.slots[slot]
		k := mk
		k.Slot = slot
		if err := w.deleteSlot(k); err != nil {
			return err
		}
		if !ms.hasMaster {
			// Without a master the backends' service id is only known
			// through them.
			if b, ok := w.backends[bid]; ok {
				if err := w.sweepBackends(b.SvcId, nil); err != nil {
					return err
				}
			}
		}
	}
	if ms.hasMaster {
		return w.sweepBackends(ms.master.Id, referenced)
	}
	return nil
}

// sweepBackends deletes the backends of service svc not in keep, then their
// counters.
func (w *writer) sweepBackends(svc uint32, keep map[uint32]bool) error {
	for _, id := range slices.Sorted(maps.Keys(w.bySvc[svc])) {
		if keep[id] {
			continue
		}
		if err := w.deleteBackend(id); err != nil {
			return err
		}
		if err := w.deleteCounter(id); err != nil {
			return err
		}
	}
	return nil
}

// putLocals writes the getsockname entries of the services that ask for
// them (stale ones go in sweep).
func (w *writer) putLocals(wanted map[localKey]localValue) error {
	for k, v := range wanted {
		if cur, ok := w.locals[k]; ok && cur == v {
			continue
		}
		if err := w.putLocal(k, v); err != nil {
			return err
		}
	}
	return nil
}

func wantedLocals(ds []Service) map[localKey]localValue {
	out := make(map[localKey]localValue)
	for _, s := range ds {
		if !s.LocalName {
			continue
		}
		for _, b := range s.Backends {
			k := localKey{Addr: addrWords(b.Addr.Addr()), Port: portWord(b.Addr.Port()), Proto: uint8(s.Key.Proto)}
			out[k] = localValue{Vip: addrWords(s.Key.VIP), VipPort: portWord(s.Key.Port)}
		}
	}
	return out
}

// sweep deletes whatever no live service references: leftovers of failed
// applies, of removed services, and of what a restart found in the maps.
func (w *writer) sweep(wanted map[localKey]localValue) error {
	for _, k := range slices.SortedFunc(maps.Keys(w.services), compareSvcKey) {
		if err := w.sweepService(k); err != nil {
			return err
		}
	}
	masters := make(map[uint32]bool)
	for _, ms := range w.services {
		if ms.hasMaster {
			masters[ms.master.Id] = true
		}
	}
	for _, svc := range slices.Sorted(maps.Keys(w.bySvc)) {
		if !masters[svc] {
			if err := w.sweepBackends(svc, nil); err != nil {
				return err
			}
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(w.locals), compareLocalKey) {
		if _, ok := wanted[k]; !ok {
			if err := w.deleteLocal(k); err != nil {
				return err
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(w.opts)) {
		if !masters[id] {
			if err := w.deleteOpts(id); err != nil {
				return err
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(w.counters)) {
		if _, ok := w.backends[id]; ok || masters[id] {
			continue
		}
		if err := w.deleteCounter(id); err != nil {
			return err
		}
	}
	return nil
}

func compareLocalKey(a, b localKey) int {
	if c := wordsAddr(a.Addr).Compare(wordsAddr(b.Addr)); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(wordPort(a.Port)) - int(wordPort(b.Port))
	}
	return int(a.Proto) - int(b.Proto)
}
