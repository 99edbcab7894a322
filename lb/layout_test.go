package lb

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestSmoothOrder(t *testing.T) {
	a, b, c := ap("10.0.0.1:80"), ap("10.0.0.2:80"), ap("10.0.0.3:80")
	got := smoothOrder([]Backend{{Addr: a, Weight: 5}, {Addr: b, Weight: 1}, {Addr: c, Weight: 1}})
	want := []netip.AddrPort{a, a, b, a, c, a, a}
	if !slices.Equal(got, want) {
		t.Errorf("weights 5,1,1: %v, want %v", got, want)
	}
}

func TestEligible(t *testing.T) {
	a, b, c := ap("10.0.0.1:80"), ap("10.0.0.2:80"), ap("10.0.0.3:80")
	for _, tc := range []struct {
		states []BackendState
		want   []netip.AddrPort
	}{
		{[]BackendState{Active, Draining, Down}, []netip.AddrPort{a}},
		{[]BackendState{Down, Draining, Draining}, []netip.AddrPort{b, c}},
		{[]BackendState{Down, Down, Down}, nil},
		{[]BackendState{Active, Active, Draining}, []netip.AddrPort{a, b}},
	} {
		bs := []Backend{{Addr: a, State: tc.states[0]}, {Addr: b, State: tc.states[1]}, {Addr: c, State: tc.states[2]}}
		var got []netip.AddrPort
		for _, x := range eligible(bs) {
			got = append(got, x.Addr)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("states %v: eligible %v, want %v", tc.states, got, tc.want)
		}
	}
}

// The writer keeps sm_svc_opts in step with the policies, rewrites
// nothing when a restarted writer finds the same services, and reports
// down and removed backends (not draining ones) as gone.
func TestWriterPoliciesAndStates(t *testing.T) {
	f := newFake(100000)
	w, err := newWriter(f.tables(), f.limits())
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := ap("127.0.0.1:1"), ap("127.0.0.2:1"), ap("127.0.0.3:1")
	rr := svc("198.18.0.1", 80, TCP, a, b, c)
	rr.Policy, rr.Affinity, rr.CloseConnections = RoundRobin, time.Minute, true
	mg := svc("198.18.0.2", 80, TCP, a, b)
	mg.Policy, mg.Client = Maglev, ClientNetns
	if _, err := w.apply([]Service{rr, mg}); err != nil {
		t.Fatal(err)
	}
	if len(f.opts.m) != 1 {
		t.Fatalf("options entries %v, want one (the round-robin service)", f.opts.m)
	}
	got := w.Services()
	if got[0].Policy != RoundRobin || got[0].Affinity != time.Minute || got[1].Policy != Maglev || got[1].Client != ClientNetns || got[1].MaglevTable != DefaultMaglevTable {
		t.Errorf("read back %+v", got)
	}

	// A restarted writer finds the same services: nothing to write.
	w2, err := newWriter(f.tables(), f.limits())
	if err != nil {
		t.Fatal(err)
	}
	st, err := w2.apply([]Service{rr, mg})
	if err != nil || st.Writes != 0 || st.Unchanged != 2 {
		t.Fatalf("restart: %+v, %v; want 0 writes", st, err)
	}

	// b drains, c goes down: only c is gone; the round-robin ticket
	// entry survives (it is rewritten only when the timeout changes).
	rrID := w2.services[masterKey(rr.Key)].master.Id
	f.opts.m[rrID] = optsValue{RrNext: 42, AffinityNs: f.opts.m[rrID].AffinityNs}
	rr.Backends[1].State, rr.Backends[2].State = Draining, Down
	st, err = w2.apply([]Service{rr, mg})
	if err != nil {
		t.Fatal(err)
	}
	if want := []GoneBackend{{Service: rr.Key, Backend: c, CloseConnections: true}}; !slices.Equal(st.Gone, want) {
		t.Errorf("gone %+v, want %+v", st.Gone, want)
	}
	if f.opts.m[rrID].RrNext != 42 {
		t.Errorf("round-robin ticket reset by a backend change: %+v", f.opts.m[rrID])
	}
	if got := w2.Services()[0].Backends; len(got) != 1 || got[0].Addr != a {
		t.Errorf("served backends %+v, want only the active %s", got, a)
	}
	// The draining b, never in the slots, is removed: it is gone too, and
	// so is a draining backend that goes down.
	rr.Backends = rr.Backends[:1]
	st, err = w2.apply([]Service{rr, mg})
	if err != nil {
		t.Fatal(err)
	}
	if want := []GoneBackend{{Service: rr.Key, Backend: b, CloseConnections: true}}; !slices.Equal(st.Gone, want) || st.Unchanged != 2 {
		t.Errorf("draining backend removed: %+v, want gone %+v and nothing written", st, want)
	}

	// Back to random: the options entry goes; the service's removal
	// lists its slotted backends as gone.
	rr.Policy, rr.Affinity = Random, 0
	if _, err := w2.apply([]Service{rr, mg}); err != nil {
		t.Fatal(err)
	}
	if len(f.opts.m) != 0 {
		t.Errorf("options entries %v after going random, want none", f.opts.m)
	}
	st, err = w2.apply([]Service{mg})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Gone) != 1 || st.Gone[0].Backend != a {
		t.Errorf("removal: gone %+v, want %s", st.Gone, a)
	}
}
