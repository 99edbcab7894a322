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
	if st := sourceOf(s, src.name); st.Stale || st.Revision != 9 {
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
