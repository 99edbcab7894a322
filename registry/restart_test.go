package registry

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"sockmesh/lb"
)

// putOld writes a file whose last change is long past, so its errors are
// reported at once rather than after the in-place-write grace.
func putOld(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLastGoodSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	web := putOld(t, dir, "web.yaml", "name: web\nports: [80\n") // broken
	putOld(t, dir, "api.yaml", svcYAML("api", "10.0.0.9:80"))
	later := filepath.Join(dir, "later.yaml")
	r := startWith(t, Options{Dir: dir, LastGood: map[string][]byte{
		web:   []byte(svcYAML("web", "10.0.0.1:80")),
		later: []byte(svcYAML("later", "10.0.0.2:80")),
	}}, &fakeDP{})

	s := r.Snapshot()
	sv, ok := s.Lookup("web")
	if !ok || !sv.Stale || !slices.Equal(backendsOf(s, "web"), []string{"10.0.0.1:80"}) {
		t.Fatalf("web after restart with a broken file: %s", describeSnap(s))
	}
	if len(errorsOf(s, web)) == 0 {
		t.Fatalf("the broken file is not reported: %s", describeSnap(s))
	}
	if !hasBackends("api", "10.0.0.9:80")(s) {
		t.Fatalf("api: %s", describeSnap(s))
	}

	// Fixing the file replaces the last good version.
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.3:80"))
	waitFor(t, r, within, "fixed", func(s *Snapshot) bool {
		sv, ok := s.Lookup("web")
		return ok && !sv.Stale && hasBackends("web", "10.0.0.3:80")(s)
	})

	// A broken file that turns up after the start gets nothing from the
	// previous run.
	putOld(t, dir, "later.yaml", "name: later\nports: [80\n")
	s = waitFor(t, r, within, "later file", func(s *Snapshot) bool { return len(errorsOf(s, later)) > 0 })
	if _, ok := s.Lookup("later"); ok {
		t.Fatalf("a file that appeared after the start got a last good version: %s", describeSnap(s))
	}
}

func TestReloadRereadsAndConverges(t *testing.T) {
	dir := t.TempDir()
	putOld(t, dir, "web.yaml", svcYAML("web", "10.0.0.1:80"))
	dp := &fakeDP{}
	r := startWith(t, Options{Dir: dir}, dp)
	gen := r.Snapshot().Generation

	// Someone emptied the maps behind the registry's back; the file is
	// unchanged on disk.
	dp.mu.Lock()
	dp.set = nil
	applies := dp.applies
	dp.mu.Unlock()

	r.Reload()
	waitFor(t, r, 2*time.Second, "reload", func(s *Snapshot) bool { return s.Generation > gen })
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.applies != applies+1 || len(dp.set) != 2 || dp.set[0].Key.Proto != lb.TCP { // one per VIP family
		t.Fatalf("after reload: %d applies (want %d), datapath %+v", dp.applies, applies+1, dp.set)
	}
}

func TestLastGoodWaitsForTheDirectory(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "services.d")
	web := filepath.Join(dir, "web.yaml")
	mode := filepath.Join(dir, "mode.yaml")
	r := startWith(t, Options{Dir: dir, LastGood: map[string][]byte{
		web:  []byte(svcYAML("web", "10.0.0.1:80")),
		mode: []byte(svcYAML("mode", "10.0.0.2:80")),
	}}, &fakeDP{})
	if s := r.Snapshot(); len(s.Errors) != 1 || len(s.Services) != 0 {
		t.Fatalf("missing directory: %s", describeSnap(s))
	}
	// The directory turns up with one broken file and one whose mode is
	// refused: both keep the previous run's version.
	tmp := filepath.Join(parent, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	putOld(t, tmp, "web.yaml", "name: web\nports: [80\n")
	putOld(t, tmp, "mode.yaml", svcYAML("mode", "10.0.0.3:80"))
	if err := os.Chmod(filepath.Join(tmp, "mode.yaml"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	s := waitFor(t, r, 2*time.Second, "directory read", func(s *Snapshot) bool { return len(s.Errors) == 2 })
	for name, backend := range map[string]string{"web": "10.0.0.1:80", "mode": "10.0.0.2:80"} {
		if sv, ok := s.Lookup(name); !ok || !sv.Stale || !hasBackends(name, backend)(s) {
			t.Errorf("%s: want the last good version, stale: %s", name, describeSnap(s))
		}
	}
}
