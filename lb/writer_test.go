package lb

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fakeMaps backs the writer with Go maps that can fail a share of
// operations on purpose and call a check after every operation that took.
type fakeMaps struct {
	ops       int
	failEvery int // every n-th operation fails; 0: none
	afterOp   func()
}

var errInjected = errors.New("injected failure")

func (f *fakeMaps) op() error {
	f.ops++
	if f.failEvery > 0 && f.ops%f.failEvery == 0 {
		return errInjected
	}
	return nil
}

type fakeTable[K comparable, V any] struct {
	f   *fakeMaps
	m   map[K]V
	cap int
}

func (t *fakeTable[K, V]) Put(k K, v V) error {
	if err := t.f.op(); err != nil {
		return err
	}
	if _, ok := t.m[k]; !ok && len(t.m) >= t.cap {
		return errors.New("map full")
	}
	t.m[k] = v
	if t.f.afterOp != nil {
		t.f.afterOp()
	}
	return nil
}

func (t *fakeTable[K, V]) Delete(k K) error {
	if err := t.f.op(); err != nil {
		return err
	}
	delete(t.m, k)
	if t.f.afterOp != nil {
		t.f.afterOp()
	}
	return nil
}

func (t *fakeTable[K, V]) All() (map[K]V, error) { return maps.Clone(t.m), nil }

type fake struct {
	fakeMaps
	services *fakeTable[svcKey, svcValue]
	backends *fakeTable[uint32, backendValue]
	counters *fakeTable[uint32, counterValue]
	locals   *fakeTable[localKey, localValue]
	meta     *fakeTable[uint32, uint64]
	filter   *fakeTable[uint32, vipFilter]
	opts     *fakeTable[uint32, optsValue]
}

func newFake(capacity int) *fake {
	f := &fake{}
	f.services = &fakeTable[svcKey, svcValue]{&f.fakeMaps, map[svcKey]svcValue{}, capacity}
	f.backends = &fakeTable[uint32, backendValue]{&f.fakeMaps, map[uint32]backendValue{}, capacity}
	f.counters = &fakeTable[uint32, counterValue]{&f.fakeMaps, map[uint32]counterValue{}, 2 * capacity}
	f.locals = &fakeTable[localKey, localValue]{&f.fakeMaps, map[localKey]localValue{}, capacity}
	f.meta = &fakeTable[uint32, uint64]{&f.fakeMaps, map[uint32]uint64{}, 1}
	f.filter = &fakeTable[uint32, vipFilter]{&f.fakeMaps, map[uint32]vipFilter{}, 1}
	f.opts = &fakeTable[uint32, optsValue]{&f.fakeMaps, map[uint32]optsValue{}, capacity}
	return f
}

func (f *fake) tables() tables {
	return tables{services: f.services, backends: f.backends, counters: f.counters, localNames: f.locals, meta: f.meta, filter: f.filter, opts: f.opts}
}

func (f *fake) limits() Limits {
	c := f.services.cap
	return Limits{ServiceEntries: c, Backends: c, Counters: 2 * c, LocalNames: c, Options: c}
}

// resolve is what a connect() reading the maps right now can reach, per
// service: the backends and how many slots each has, as select_backend
// would see them. A service whose active slots do not all resolve is
// reported as "HALF-WRITTEN".
func (f *fake) resolve() map[ServiceKey]string {
	out := make(map[ServiceKey]string)
	for k, m := range f.services.m {
		if k.Slot != 0 {
			continue
		}
		weights := map[netip.AddrPort]int{}
		half := false
		if _, ok := f.counters.m[m.Id]; !ok {
			half = true
		}
		for s := m.Base + 1; s <= m.Base+m.Count; s++ {
			sk := k
			sk.Slot = s
			sv, ok := f.services.m[sk]
			if !ok {
				half = true
				break
			}
			b, ok := f.backends.m[sv.Id]
			_, counted := f.counters.m[sv.Id]
			if !ok || !counted || b.SvcId != m.Id {
				half = true
				break
			}
			weights[backendOf(b)]++
		}
		if half {
			out[keyOf(k)] = "HALF-WRITTEN"
			continue
		}
		if Policy((m.Flags&flagPolicyMask)>>flagPolicyBit) == RoundRobin || m.Flags&flagAffinity != 0 {
			// Round-robin and affinity read sm_svc_opts.
			if _, ok := f.opts.m[m.Id]; !ok {
				out[keyOf(k)] = "HALF-WRITTEN"
				continue
			}
		}
		var parts []string
		for _, a := range slices.SortedFunc(maps.Keys(weights), netip.AddrPort.Compare) {
			parts = append(parts, fmt.Sprintf("%s*%d", a, weights[a]))
		}
		out[keyOf(k)] = strings.Join(parts, ",") + flagNames(m.Flags)
	}
	return out
}

func resolveSet(ds []Service) map[ServiceKey]string {
	f := newFake(1 << 20)
	w, _ := newWriter(f.tables(), f.limits())
	if _, err := w.apply(ds); err != nil {
		panic(err)
	}
	return f.resolve()
}

// hidden finds a service the VIP filter keeps connect() from looking up.
func (f *fake) hidden() (ServiceKey, bool) {
	v := f.filter.m[0]
	for k := range f.services.m {
		if k.Slot == 0 && !filterCovers(&v, wordsAddr(k.Addr)) {
			return keyOf(k), true
		}
	}
	return ServiceKey{}, false
}

// strays counts entries no live service references.
func (f *fake) strays() int {
	w, _ := newWriter(f.tables(), f.limits())
	live := 0
	for _, s := range w.Services() {
		live += 1 + s.slotsNeeded() + len(s.Backends)*2 + 1
		if s.LocalName {
			live += len(s.Backends)
		}
		if s.needsOpts() {
			live++
		}
	}
	return len(f.services.m) + len(f.backends.m) + len(f.counters.m) + len(f.locals.m) + len(f.opts.m) - live
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func weighted(s Service, weights ...uint16) Service {
	for i := range s.Backends {
		s.Backends[i].Weight = weights[i]
	}
	return s
}

// The scenario both the golden test and the fault-injection test replay.
func scenario() [][]Service {
	web := func(bs ...netip.AddrPort) Service { return svc("198.18.0.10", 80, TCP, bs...) }
	dnsSvc := svc("fd6d:6573:6800::53", 53, UDP, ap("[::1]:5353"), ap("[fd00::2]:53"))
	dnsSvc.LocalName = true
	return [][]Service{
		{weighted(web(ap("127.0.0.1:8080"), ap("127.0.0.2:8080"), ap("127.0.0.3:8080")), 1, 1, 2), dnsSvc},
		// reweight, drop one, add one: a region flip, kept ids for kept backends
		{weighted(web(ap("127.0.0.1:8080"), ap("127.0.0.3:8080"), ap("127.0.0.4:8080")), 2, 2, 1), dnsSvc},
		// no backends: refuse
		{web(), dnsSvc},
		// the DNS service goes, web comes back
		{web(ap("127.0.0.5:8080"))},
		{},
	}
}

// scenarioPolicies replays policies and backend states: round-robin with
// affinity whose backends drain and go down, Maglev whose set shrinks and
// which turns random, and back.
func scenarioPolicies() [][]Service {
	a, b, c := ap("127.0.0.1:80"), ap("127.0.0.2:80"), ap("127.0.0.3:80")
	rr := func(states ...BackendState) Service {
		s := svc("198.18.0.20", 80, TCP, a, b, c)
		s.Policy, s.Affinity = RoundRobin, time.Minute
		for i := range states {
			s.Backends[i].State = states[i]
		}
		return s
	}
	mg := func(policy Policy, bs ...netip.AddrPort) Service {
		s := svc("198.18.0.21", 80, TCP, bs...)
		s.Policy = policy
		if policy == Maglev {
			s.MaglevTable = 251
		}
		return s
	}
	plain := rr(Active, Active, Active)
	plain.Policy, plain.Affinity = Random, 0
	return [][]Service{
		{rr(Active, Active, Draining), mg(Maglev, a, b, c)},
		{rr(Down, Active, Draining), mg(Maglev, a, b)},
		{rr(Down, Down, Draining), mg(Random, a, b)},
		{rr(Down, Down, Down), mg(Maglev, c)},
		{plain},
		{},
	}
}

func TestWriterGolden(t *testing.T) {
	f := newFake(1024)
	w, err := newWriter(f.tables(), f.limits())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i, step := range scenario() {
		st, err := w.apply(step)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		d, err := dump(f.tables())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "# step %d: %+v\n%s\n", i, st, d)
		// Idempotent: the same set again writes nothing.
		if st, err := w.apply(step); err != nil || st.Writes != 0 {
			t.Fatalf("step %d again: %+v, %v; want no writes", i, st, err)
		}
	}
	golden(t, "writer.golden", b.String())
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it); got:\n%s", path, got)
	}
}

// Every single map operation leaves each service either as it was or as it
// is meant to be: never half-written, never a mix. With failures injected,
// the maps still never show a half state, and one clean Apply converges
// with nothing left over.
func TestWriterNoHalfStateUnderFailures(t *testing.T) {
	for _, sc := range []struct {
		name  string
		steps [][]Service
	}{{"basic", scenario()}, {"policies", scenarioPolicies()}} {
		t.Run(sc.name, func(t *testing.T) { noHalfState(t, sc.steps) })
	}
}

func noHalfState(t *testing.T, steps [][]Service) {
	for failEvery := 0; failEvery <= 13; failEvery++ {
		if failEvery == 1 {
			continue // nothing could ever succeed
		}
		t.Run(fmt.Sprintf("fail-every-%d", failEvery), func(t *testing.T) {
			f := newFake(1024)
			w, err := newWriter(f.tables(), f.limits())
			if err != nil {
				t.Fatal(err)
			}
			for i, step := range steps {
				before := f.resolve()
				want := resolveSet(step)
				f.afterOp = func() {
					if k, ok := f.hidden(); ok {
						t.Fatalf("step %d op %d: the vip filter hides live service %s", i, f.ops, k)
					}
					for k, now := range f.resolve() {
						if now != before[k] && now != want[k] {
							t.Fatalf("step %d op %d: %s serves %q, neither before (%q) nor after (%q)", i, f.ops, k, now, before[k], want[k])
						}
					}
				}
				_, err := w.apply(step)
				if failEvery == 0 && err != nil {
					t.Fatal(err)
				}
				if err != nil && !errors.Is(err, errInjected) {
					t.Fatalf("step %d: %v", i, err)
				}
				// Converge with failures off, then check.
				saved := f.failEvery
				f.failEvery = 0
				if _, err := w.apply(step); err != nil {
					t.Fatalf("step %d retry: %v", i, err)
				}
				f.failEvery = saved
				f.afterOp = nil
				if got := f.resolve(); !maps.Equal(got, want) {
					t.Fatalf("step %d: serves %v, want %v", i, got, want)
				}
				if n := f.strays(); n != 0 {
					d, _ := dump(f.tables())
					t.Fatalf("step %d: %d stray entries left:\n%s", i, n, d)
				}
			}
		})
		if t.Failed() {
			return
		}
	}
}

// A new writer on maps an earlier process filled sees the same services and
// has nothing to write for them.
func TestWriterRestore(t *testing.T) {
	f := newFake(1024)
	w, _ := newWriter(f.tables(), f.limits())
	steps := scenario()
	if _, err := w.apply(steps[1]); err != nil {
		t.Fatal(err)
	}
	next := w.nextID
	w2, err := newWriter(f.tables(), f.limits())
	if err != nil {
		t.Fatal(err)
	}
	if w2.nextID != next {
		t.Errorf("restored next id %d, want %d", w2.nextID, next)
	}
	want, _ := validateSet(steps[1])
	if got := w2.Services(); !slices.EqualFunc(got, want, Service.equal) {
		t.Errorf("restored %+v, want %+v", got, want)
	}
	if st, err := w2.apply(steps[1]); err != nil || st.Writes != 0 || st.Unchanged != 2 {
		t.Errorf("apply after restore: %+v, %v; want 2 unchanged, no writes", st, err)
	}
}

func TestValidate(t *testing.T) {
	many := svc("198.18.0.1", 80, TCP)
	for i := range 300 {
		many.Backends = append(many.Backends, Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), 80), Weight: 65000})
	}
	many.Backends[0].Weight = 1
	ln1 := svc("198.18.0.1", 80, TCP, ap("127.0.0.1:80"))
	ln1.LocalName = true
	ln2 := svc("198.18.0.2", 80, TCP, ap("127.0.0.1:80"))
	ln2.LocalName = true
	for _, tc := range []struct {
		name string
		set  []Service
		want string
	}{
		{"port 0", []Service{svc("198.18.0.1", 0, TCP)}, "port 0 is not allowed"},
		{"bad proto", []Service{svc("198.18.0.1", 80, 1)}, "protocol must be tcp or udp"},
		{"unspecified vip", []Service{svc("0.0.0.0", 80, TCP)}, "not a usable address"},
		{"v6 backend of v4 vip", []Service{svc("198.18.0.1", 80, TCP, ap("[::1]:80"))}, "IPv4 VIP cannot have IPv6 backend"},
		{"v4 backend of v6 udp vip", []Service{svc("fd6d:6573:6800::1", 53, UDP, ap("127.0.0.1:53"))}, "IPv6 UDP VIP cannot have IPv4 backend"},
		{"backend twice", []Service{svc("198.18.0.1", 80, TCP, ap("127.0.0.1:80"), ap("127.0.0.1:80"))}, "listed twice"},
		{"backend port 0", []Service{svc("198.18.0.1", 80, TCP, ap("127.0.0.1:0"))}, "has port 0"},
		{"service twice", []Service{svc("198.18.0.1", 80, TCP), svc("::ffff:198.18.0.1", 80, TCP)}, "defined twice"},
		{"too many slots", []Service{many}, "need"},
		{"local name clash", []Service{ln1, ln2}, "already shows service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(1024)
			w, _ := newWriter(f.tables(), f.limits())
			_, err := w.apply(tc.set)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("apply: %v, want an error containing %q", err, tc.want)
			}
			if f.ops != 0 {
				t.Errorf("%d map operations for an invalid set, want none", f.ops)
			}
		})
	}
}

func TestCapacity(t *testing.T) {
	f := newFake(8)
	w, _ := newWriter(f.tables(), f.limits())
	big := svc("198.18.0.1", 80, TCP, ap("127.0.0.1:1"), ap("127.0.0.1:2"), ap("127.0.0.1:3"), ap("127.0.0.1:4"))
	_, err := w.apply([]Service{big})
	if err == nil || !strings.Contains(err.Error(), "service-map entries") {
		t.Fatalf("apply: %v, want a capacity error", err)
	}
	if f.ops != 0 {
		t.Errorf("%d map operations, want none", f.ops)
	}
}

func TestWeightsReduced(t *testing.T) {
	a := weighted(svc("198.18.0.1", 80, TCP, ap("127.0.0.1:1"), ap("127.0.0.1:2")), 2, 4).canonical()
	b := weighted(svc("198.18.0.1", 80, TCP, ap("127.0.0.1:2"), ap("127.0.0.1:1")), 2, 1).canonical()
	if !a.equal(b) {
		t.Errorf("weights 2,4 and 1,2 should serve alike: %+v vs %+v", a, b)
	}
}

// equal compares two services field by field (the writer compares what
// the maps serve instead: serves).
func (s Service) equal(o Service) bool {
	return s.Key == o.Key && s.LocalName == o.LocalName && s.Policy == o.Policy &&
		s.Client == o.Client && s.MaglevTable == o.MaglevTable && s.Affinity == o.Affinity &&
		s.CloseConnections == o.CloseConnections && slices.Equal(s.Backends, o.Backends)
}
