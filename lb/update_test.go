package lb

import (
	"maps"
	"strings"
	"testing"
)

// TestUpdateMatchesApply drives one writer with whole sets (apply) and
// another with only the differences (update): after every step both serve
// the same, and the update writer's maps hold nothing extra.
func TestUpdateMatchesApply(t *testing.T) {
	fa, fu := newFake(1024), newFake(1024)
	wa, err := newWriter(fa.tables(), fa.limits())
	if err != nil {
		t.Fatal(err)
	}
	wu, err := newWriter(fu.tables(), fu.limits())
	if err != nil {
		t.Fatal(err)
	}
	prev := map[ServiceKey]Service{}
	for i, step := range scenario() {
		if _, err := wa.apply(step); err != nil {
			t.Fatalf("step %d apply: %v", i, err)
		}
		next := map[ServiceKey]Service{}
		var put []Service
		for _, s := range step {
			c := s.canonical()
			next[c.Key] = c
			if old, ok := prev[c.Key]; !ok || !old.equal(c) {
				put = append(put, s)
			}
		}
		var remove []ServiceKey
		for k := range prev {
			if _, ok := next[k]; !ok {
				remove = append(remove, k)
			}
		}
		if _, err := wu.update(put, remove); err != nil {
			t.Fatalf("step %d update: %v", i, err)
		}
		prev = next
		if a, u := fa.resolve(), fu.resolve(); !maps.Equal(a, u) {
			t.Fatalf("step %d: apply serves %v, update serves %v", i, a, u)
		}
		if a, u := len(fa.services.m)+len(fa.backends.m)+len(fa.locals.m), len(fu.services.m)+len(fu.backends.m)+len(fu.locals.m); a != u {
			t.Fatalf("step %d: apply keeps %d entries, update %d", i, a, u)
		}
	}
	// Update refuses what would clash, before writing anything.
	steps := scenario()
	if _, err := wu.update(steps[0], nil); err != nil {
		t.Fatal(err)
	}
	before := fu.resolve()
	if len(before) == 0 {
		t.Fatal("first scenario step is empty")
	}
	s := steps[0][0]
	if _, err := wu.update([]Service{s, s}, nil); err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Fatalf("duplicate put: %v", err)
	}
	if _, err := wu.update([]Service{s}, []ServiceKey{s.Key}); err == nil || !strings.Contains(err.Error(), "both put and removed") {
		t.Fatalf("put and remove: %v", err)
	}
	if !maps.Equal(before, fu.resolve()) {
		t.Fatal("a refused update wrote")
	}
}
