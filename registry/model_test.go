package registry

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"sockmesh/servicefile"
)

// TestModelIncrementalMatchesFull changes a few files at a time, in a VIP
// range small enough that derived addresses collide often, and checks after
// every step that the incrementally kept model gives exactly what a model
// built from scratch gives: the same services with the same VIPs.
func TestModelIncrementalMatchesFull(t *testing.T) {
	ranges := Ranges{V4: netip.MustParsePrefix("198.18.0.0/24"), V6: DefaultRanges.V6}
	rng := rand.New(rand.NewPCG(1, 2))
	files := map[string]*fileState{}
	m := newModel(ranges, testLimits())
	incremental := 0
	for step := range 400 {
		var changed []string
		for range 1 + rng.IntN(3) {
			i := rng.IntN(80)
			p := fmt.Sprintf("f%02d.yaml", i)
			changed = append(changed, p)
			if rng.IntN(4) == 0 {
				delete(files, p)
				continue
			}
			// Names are unique per file and explicit VIPs per file, so no
			// two files clash and the result must not depend on history.
			vip := ""
			if rng.IntN(5) == 0 {
				vip = fmt.Sprintf("vip: 198.18.0.%d\n", i+1)
			}
			body := fmt.Sprintf("name: s%d-%d\n%sports: [80]\nbackends: [10.0.0.1:80]\n", i, rng.IntN(3), vip)
			svc, err := servicefile.Parse(p, []byte(body))
			if err != nil {
				t.Fatal(err)
			}
			if files[p] == nil {
				files[p] = &fileState{}
			}
			files[p].cur = svc
		}
		before := len(m.vips.lost)
		dl := m.update(files, changed)
		if len(dl.paths) == len(changed) && before == len(m.vips.lost) {
			incremental++
		}
		for p, f := range files {
			f.live = m.accepted[p]
		}
		full := newModel(ranges, testLimits())
		full.update(files, slices.Collect(maps.Keys(files)))
		if got, want := describeServices(m.sorted), describeServices(full.sorted); got != want {
			t.Fatalf("step %d: incremental model\n%s\nfull rebuild\n%s", step, got, want)
		}
		if len(m.clash) != 0 {
			t.Fatalf("step %d: clashes %v", step, m.clash)
		}
	}
	if len(m.vips.lost) == 0 {
		t.Fatal("no collisions: the test range is too big to test them")
	}
	t.Logf("%d of 400 steps incremental", incremental)
}

func describeServices(ss []Service) string {
	out := ""
	for _, s := range ss {
		out += fmt.Sprintf("%s %s %v\n", s.File, s.Name, s.VIPs)
	}
	return out
}
