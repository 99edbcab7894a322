package registry

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sockmesh/servicefile"
)

// modelRun applies steps (path -> text; "" deletes) to a fresh model the
// way the registry does, and returns it with the files.
type modelRun struct {
	t     *testing.T
	m     *model
	files map[string]*fileState
}

func newModelRun(t *testing.T) *modelRun {
	ranges := Ranges{V4: netip.MustParsePrefix("198.18.0.0/24"), V6: DefaultRanges.V6}
	return &modelRun{t: t, m: newModel(ranges, testLimits()), files: map[string]*fileState{}}
}

func (r *modelRun) step(changes map[string]string) *Snapshot {
	r.t.Helper()
	var paths []string
	for p, text := range changes {
		paths = append(paths, p)
		if text == "" {
			delete(r.files, p)
			continue
		}
		svc, err := servicefile.Parse(p, []byte(text))
		if r.files[p] == nil {
			r.files[p] = &fileState{}
		}
		r.files[p].cur, r.files[p].errs = svc, nil
		if err != nil {
			r.files[p].errs = err.(servicefile.Errors)
		}
	}
	dl := r.m.update(r.files, paths)
	for _, p := range dl.paths {
		if f := r.files[p]; f != nil {
			f.live = r.m.accepted[p]
			if doc := r.m.contrib[p]; doc != nil {
				f.live = doc
			}
		}
	}
	return r.m.snapshot("", r.files)
}

// served describes the served services with their backends and where
// each came from.
func served(ss []Service) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "%s %s %v", s.File, s.Name, s.VIPs)
		for _, be := range s.Backends {
			fmt.Fprintf(&b, " %s/%d/%s", be.Name(), be.Weight, be.From)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func errorLines(s *Snapshot) []string {
	var out []string
	for _, e := range s.Errors {
		out = append(out, e.Error())
	}
	slices.Sort(out)
	return out
}

// Random histories of services and backends documents without clashes:
// after every step the incrementally kept model serves, and reports,
// exactly what a model built from scratch does.
func TestModelBackendsDocsIncrementalMatchesFull(t *testing.T) {
	for seed := range uint64(100) {
		rng := rand.New(rand.NewPCG(seed, 7))
		r := newModelRun(t)
		var hist []string
		addrs := func() string {
			var bs []string
			for range rng.IntN(3) {
				bs = append(bs, fmt.Sprintf("10.0.0.%d:80", 1+rng.IntN(4)))
			}
			return "[" + strings.Join(slices.Compact(slices.Sorted(slices.Values(bs))), ", ") + "]"
		}
		for step := range 60 {
			changes := map[string]string{}
			for range 1 + rng.IntN(2) {
				i := rng.IntN(12)
				p := fmt.Sprintf("f%02d.yaml", i)
				switch {
				case rng.IntN(4) == 0:
					changes[p] = ""
				case i < 6 && rng.IntN(2) == 0:
					// Services only in f00-f05, one name per file.
					changes[p] = fmt.Sprintf("name: s%d-%d\nports: [80]\nbackends: %s\n", i, rng.IntN(2), addrs())
				default:
					changes[p] = fmt.Sprintf("backends_for: s%d-%d\nbackends: %s\n", rng.IntN(6), rng.IntN(2), addrs())
				}
				hist = append(hist, fmt.Sprintf("%d: %s <- %q", step, p, changes[p]))
			}
			s := r.step(changes)
			full := newModel(r.m.ranges, testLimits())
			full.update(r.files, slices.Collect(maps.Keys(r.files)))
			fs := full.snapshot("", r.files)
			if got, want := served(s.Services), served(fs.Services); got != want {
				t.Fatalf("seed %d step %d: incremental\n%sfull rebuild\n%s\nhistory:\n%s", seed, step, got, want, strings.Join(hist, "\n"))
			}
			if got, want := errorLines(s), errorLines(fs); !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: errors\n%s\nfull rebuild\n%s\nhistory:\n%s", seed, step, strings.Join(got, "\n"), strings.Join(want, "\n"), strings.Join(hist, "\n"))
			}
		}
	}
}

func TestModelBackendsDocsErrors(t *testing.T) {
	t.Run("gone with their service", func(t *testing.T) {
		r := newModelRun(t)
		s := r.step(map[string]string{
			"a.yaml": "name: s\nports: [80]\nbackends: [10.0.0.1:80]\n",
			"b.yaml": "backends_for: s\nbackends: [10.0.0.1:80]\n",
		})
		if got := errorLines(s); len(got) != 1 || !strings.Contains(got[0], "b.yaml:2:12: backends[0]: 10.0.0.1:80 is already a backend") {
			t.Errorf("errors %q", got)
		}
		s = r.step(map[string]string{"a.yaml": ""})
		if got := errorLines(s); len(got) != 1 || !strings.Contains(got[0], `no service "s" is served`) {
			t.Errorf("after the service went: errors %q, want only that b.yaml waits", got)
		}
	})
	t.Run("not from a refused twin", func(t *testing.T) {
		r := newModelRun(t)
		r.step(map[string]string{"a.yaml": "name: s\nports: [80]\nbackends: [10.0.0.1:80]\n"})
		r.step(map[string]string{"c.yaml": "name: s\nports: [80]\nbackends: [10.0.0.2:80]\n"})
		s := r.step(map[string]string{"b.yaml": "backends_for: s\nbackends: [10.0.0.1:80, 10.0.0.2:80]\n"})
		if got := served(s.Services); !strings.HasPrefix(got, "a.yaml s ") || !strings.HasSuffix(got, " 10.0.0.1:80/1/ 10.0.0.2:80/1/b.yaml\n") {
			t.Errorf("served %s", got)
		}
		var bErrs []string
		for _, e := range errorLines(s) {
			if strings.HasPrefix(e, "b.yaml") {
				bErrs = append(bErrs, e)
			}
		}
		if len(bErrs) != 1 || !strings.Contains(bErrs[0], "backends[0]: 10.0.0.1:80 is already a backend") {
			t.Errorf("b.yaml's errors %q, want its backends[0] only", bErrs)
		}
	})
	t.Run("a document that would keep its service out", func(t *testing.T) {
		r := newModelRun(t)
		ln := func(name, vip, backend string) string {
			return fmt.Sprintf("name: %s\nvip: %s\nports: [80]\nlocal_name: true\nbackends: [%s]\n", name, vip, backend)
		}
		r.step(map[string]string{"a.yaml": ln("s1", "198.18.0.5", "10.0.0.1:80"), "c.yaml": ln("s2", "198.18.0.6", "10.0.0.2:80")})
		// 10.0.0.1:80 already reports s1 to getsockname: s2 cannot take
		// it. s2 stays with its own backend, the document is left out.
		s := r.step(map[string]string{"b.yaml": "backends_for: s2\nbackends: [10.0.0.1:80]\n"})
		if got := served(s.Services); got != "a.yaml s1 [198.18.0.5] 10.0.0.1:80/1/\nc.yaml s2 [198.18.0.6] 10.0.0.2:80/1/\n" {
			t.Errorf("served\n%s", got)
		}
		if got := errorLines(s); len(got) != 1 || !strings.HasPrefix(got[0], "b.yaml:1:15: backends: left out") || !strings.Contains(got[0], "already reports service \"s1\" to getsockname") {
			t.Errorf("errors %q", got)
		}
		// The document goes: nothing is left of it.
		s = r.step(map[string]string{"b.yaml": ""})
		if got := served(s.Services); got != "a.yaml s1 [198.18.0.5] 10.0.0.1:80/1/\nc.yaml s2 [198.18.0.6] 10.0.0.2:80/1/\n" || len(s.Errors) != 0 {
			t.Errorf("after the document went: served\n%serrors %q", got, errorLines(s))
		}
		// The same against the first service, in path order before the
		// one holding the address.
		s = r.step(map[string]string{"0.yaml": "backends_for: s1\nbackends: [10.0.0.2:80]\n"})
		if got := served(s.Services); got != "a.yaml s1 [198.18.0.5] 10.0.0.1:80/1/\nc.yaml s2 [198.18.0.6] 10.0.0.2:80/1/\n" {
			t.Errorf("served\n%s", got)
		}
		if got := errorLines(s); len(got) != 1 || !strings.HasPrefix(got[0], "0.yaml:1:15: backends: left out") {
			t.Errorf("errors %q", got)
		}
	})
}

// Services whose own backends claim getsockname addresses (local_name),
// and backends documents whose backends may claim the same addresses:
// a service's own backends always win over documents', so after every
// step of a random history the same services are served as by a model
// built from scratch.
func TestModelOwnBackendsWinOverDocuments(t *testing.T) {
	for seed := range uint64(100) {
		rng := rand.New(rand.NewPCG(seed, 11))
		r := newModelRun(t)
		var hist []string
		for step := range 40 {
			changes := map[string]string{}
			for range 1 + rng.IntN(2) {
				i := rng.IntN(10)
				p := fmt.Sprintf("f%02d.yaml", i)
				switch {
				case rng.IntN(4) == 0:
					changes[p] = ""
				case i < 5:
					changes[p] = fmt.Sprintf("name: s%d\nvip: 198.18.0.%d\nports: [80]\nlocal_name: true\nbackends: [10.0.1.%d:80]\n", i, i+1, i)
				default:
					changes[p] = fmt.Sprintf("backends_for: s%d\nbackends: [10.0.1.%d:80]\n", rng.IntN(5), rng.IntN(10))
				}
				hist = append(hist, fmt.Sprintf("%d: %s <- %q", step, p, changes[p]))
			}
			s := r.step(changes)
			full := newModel(r.m.ranges, testLimits())
			full.update(r.files, slices.Collect(maps.Keys(r.files)))
			var got, want []string
			for _, sv := range s.Services {
				got = append(got, fmt.Sprintf("%s %s", sv.Name, sv.Backends[0].Name()))
			}
			for _, sv := range full.snapshot("", r.files).Services {
				want = append(want, fmt.Sprintf("%s %s", sv.Name, sv.Backends[0].Name()))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: incremental serves %v, a full rebuild %v\nhistory:\n%s", seed, step, got, want, strings.Join(hist, "\n"))
			}
		}
	}
}
