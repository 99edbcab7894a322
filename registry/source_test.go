package registry

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"sockmesh/servicefile"
)

// fakeSource sends what the test pushes.
type fakeSource struct {
	name string
	ch   chan DocUpdate
}

func newFakeSource(name string) *fakeSource {
	return &fakeSource{name: name, ch: make(chan DocUpdate, 16)}
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Run(ctx context.Context, out chan<- DocUpdate) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u := <-f.ch:
			u.Source = f.name
			select {
			case out <- u:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

func (f *fakeSource) send(u DocUpdate) { f.ch <- u }

func names(s *Snapshot) []string {
	var out []string
	for _, sv := range s.Services {
		out = append(out, sv.Name)
	}
	return out
}

func sourceOf(s *Snapshot, name string) SourceStatus {
	for _, st := range s.Sources {
		if st.Name == name {
			return st
		}
	}
	return SourceStatus{}
}

// Documents from a source are served next to the directory's files; a
// name in both is refused like any clash, the directory's file (live
// first) winning; a full list drops what it no longer has; a stale source
// keeps its documents.
func TestSourceDocuments(t *testing.T) {
	dir := tempDir(t)
	put(t, dir, "web.yaml", svcYAML("web", "127.0.0.1:1"))
	src := newFakeSource("etcd://127.0.0.1:2379/sm")
	src.send(DocUpdate{Full: true, Revision: 5, Docs: map[string][]byte{
		"api": []byte(svcYAML("api", "127.0.0.1:2")),
	}, Health: &SourceHealth{}})
	dp := &fakeDP{}
	r := startWith(t, Options{Dir: dir, Sources: []Source{src}}, dp)
	// The first apply waited for the source's list.
	s := r.Snapshot()
	if got := names(s); !slices.Equal(got, []string{"api", "web"}) {
		t.Fatalf("services %v, want api and web", got)
	}
	if st := sourceOf(s, src.name); st.Stale || st.Revision != 5 || st.Docs != 1 {
		t.Errorf("source status %+v", st)
	}
	if sv, _ := s.Lookup("api"); sv.File != "etcd://127.0.0.1:2379/sm/api" {
		t.Errorf("api's file = %q", sv.File)
	}

	// A document naming a service the directory has: refused, with its
	// key in the error; a bad document: its error names key, line, field.
	src.send(DocUpdate{Revision: 6, Docs: map[string][]byte{
		"web2": []byte(svcYAML("web", "127.0.0.1:3")),
		"bad":  []byte("name: bad\nports: [80]\nbackends: [127.0.0.1:99999]\n"),
	}})
	s = waitFor(t, r, 5*time.Second, "clash reported", func(s *Snapshot) bool { return len(s.Errors) == 2 })
	for _, want := range []string{"etcd://127.0.0.1:2379/sm/web2", "etcd://127.0.0.1:2379/sm/bad:3:"} {
		if !slices.ContainsFunc(s.Errors, func(e *servicefile.Error) bool { return strings.HasPrefix(e.Error(), want) }) {
			t.Errorf("no error starting %q: %v", want, s.Err())
		}
	}
	if got := backendsOf(s, "web"); !slices.Equal(got, []string{"127.0.0.1:1"}) {
		t.Errorf("web's backends %v: the directory's file must stay", got)
	}
	if st := sourceOf(s, src.name); st.Docs != 3 {
		t.Errorf("source holds %d documents, want api, web2 and bad", st.Docs)
	}
	src.send(DocUpdate{Revision: 7, Docs: map[string][]byte{"web2": nil, "bad": nil}})
	s = waitFor(t, r, 5*time.Second, "web2 and bad deleted", func(s *Snapshot) bool { return len(s.Errors) == 0 })
	if st := sourceOf(s, src.name); st.Docs != 1 {
		t.Errorf("after two deletions the source holds %d documents, want api", st.Docs)
	}

	// Unreachable: stale, documents kept.
	src.send(DocUpdate{Health: &SourceHealth{Stale: true, Err: "connection refused", Since: time.Now()}})
	s = waitFor(t, r, 5*time.Second, "stale", func(s *Snapshot) bool { return sourceOf(s, src.name).Stale })
	if got := names(s); !slices.Contains(got, "api") {
		t.Errorf("stale source lost api: %v", got)
	}

	// Back, with a full list without api: api goes.
	src.send(DocUpdate{Full: true, Revision: 9, Docs: map[string][]byte{"db": []byte(svcYAML("db", "127.0.0.1:4"))}, Health: &SourceHealth{}})
	s = waitFor(t, r, 5*time.Second, "relisted", func(s *Snapshot) bool { _, ok := s.Lookup("db"); return ok })
	if got := names(s); !slices.Equal(got, []string{"db", "web"}) {
		t.Errorf("after the list: %v, want db and web", got)
	}
	if st := sourceOf(s, src.name); st.Stale || st.Revision != 9 || st.Docs != 1 {
		t.Errorf("source status %+v", st)
	}
}

// A daemon restarted while its source is unreachable serves the
// documents the previous run served, until the source lists its own.
func TestSourceLastGoodWhileStale(t *testing.T) {
	dir := tempDir(t)
	src := newFakeSource("etcd://127.0.0.1:2379/sm")
	src.send(DocUpdate{Health: &SourceHealth{Stale: true, Err: "connection refused"}})
	last := map[string][]byte{"etcd://127.0.0.1:2379/sm/api": []byte(svcYAML("api", "127.0.0.1:2"))}
	r := startWith(t, Options{Dir: dir, Sources: []Source{src}, LastGood: last}, &fakeDP{})
	if got := names(r.Snapshot()); !slices.Equal(got, []string{"api"}) {
		t.Fatalf("services %v, want the last good api", got)
	}
	src.send(DocUpdate{Full: true, Revision: 3, Docs: map[string][]byte{}, Health: &SourceHealth{}})
	waitFor(t, r, 5*time.Second, "api dropped by the list", func(s *Snapshot) bool { return len(s.Services) == 0 })
}

// With other sources, a services directory that cannot be read does not
// hold them back: their documents apply, and the directory's services of
// the previous run stay.
func TestSourceWithMissingDir(t *testing.T) {
	dir := tempDir(t) + "/missing"
	src := newFakeSource("etcd://127.0.0.1:2379/sm")
	src.send(DocUpdate{Full: true, Revision: 2, Docs: map[string][]byte{"api": []byte(svcYAML("api", "127.0.0.1:2"))}, Health: &SourceHealth{}})
	last := map[string][]byte{dir + "/web.yaml": []byte(svcYAML("web", "127.0.0.1:1"))}
	r := startWith(t, Options{Dir: dir, Sources: []Source{src}, LastGood: last}, &fakeDP{})
	s := r.Snapshot()
	if got := names(s); !slices.Equal(got, []string{"api", "web"}) {
		t.Fatalf("services %v, want api (etcd) and web (the last run's file)", got)
	}
	if len(s.Errors) != 1 || s.Errors[0].File != dir {
		t.Errorf("errors %v, want the missing directory", s.Err())
	}
	src.send(DocUpdate{Revision: 3, Docs: map[string][]byte{"db": []byte(svcYAML("db", "127.0.0.1:3"))}})
	waitFor(t, r, 5*time.Second, "db applied", func(s *Snapshot) bool { _, ok := s.Lookup("db"); return ok })
}

// A broken version of a document keeps its last good one: one served
// before, or one a previous run served (seeded), whose first list brings
// the broken version.
func TestSourceBrokenDocumentKeepsLastGood(t *testing.T) {
	src := newFakeSource("etcd://127.0.0.1:2379/sm")
	broken := []byte("name: api\nports: [80]\nbackends: [127.0.0.1:99999]\n")
	src.send(DocUpdate{Full: true, Revision: 4, Docs: map[string][]byte{"api": broken}, Health: &SourceHealth{}})
	last := map[string][]byte{"etcd://127.0.0.1:2379/sm/api": []byte(svcYAML("api", "127.0.0.1:2"))}
	r := startWith(t, Options{Dir: tempDir(t), Sources: []Source{src}, LastGood: last}, &fakeDP{})
	s := r.Snapshot()
	sv, ok := s.Lookup("api")
	if !ok || !sv.Stale || len(s.Errors) != 1 {
		t.Fatalf("api %+v (ok %v), errors %v: want the seeded version, stale, with the error", sv, ok, s.Err())
	}
	// Fixed, then broken again: the fixed version stays.
	src.send(DocUpdate{Revision: 5, Docs: map[string][]byte{"api": []byte(svcYAML("api", "127.0.0.1:7"))}})
	waitFor(t, r, 5*time.Second, "fixed", hasBackends("api", "127.0.0.1:7"))
	src.send(DocUpdate{Revision: 6, Docs: map[string][]byte{"api": broken}})
	s = waitFor(t, r, 5*time.Second, "broken again", func(s *Snapshot) bool { return len(s.Errors) == 1 })
	if got := backendsOf(s, "api"); !slices.Equal(got, []string{"127.0.0.1:7"}) {
		t.Errorf("api serves %v, want the last good 127.0.0.1:7", got)
	}
	// A deletion alone.
	src.send(DocUpdate{Revision: 7, Docs: map[string][]byte{"api": nil}})
	waitFor(t, r, 5*time.Second, "deleted", func(s *Snapshot) bool { return len(s.Services) == 0 && len(s.Errors) == 0 })
}
