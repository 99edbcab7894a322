package registry

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"sockmesh/lb"
)

// fakeHealth holds backends down as a test says.
type fakeHealth struct {
	mu   sync.Mutex
	down map[string]bool // service/backend
}

func (f *fakeHealth) Down(service, backend string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down[service+"/"+backend]
}

func (f *fakeHealth) set(service, backend string, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[service+"/"+backend] = down
}

// statesOf returns the datapath state of each backend of the one service
// of dp with port 80, by address.
func statesOf(dp *fakeDP) map[string]lb.BackendState {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	out := map[string]lb.BackendState{}
	for _, s := range dp.set {
		for _, b := range s.Backends {
			out[b.Addr.Addr().String()] = b.State
		}
	}
	return out
}

// A backend the health checks hold down goes to the datapath as down
// (only for services that have checks), and comes back when they let go;
// the file's own states stay as written.
func TestHealthOverlay(t *testing.T) {
	dir := tempDir(t)
	put(t, dir, "web.yaml", "name: web\nports: [80]\nhealth: tcp\nbackends:\n  - 127.0.0.1:8080\n  - {address: 127.0.0.2:8080, state: draining}\n  - 127.0.0.3:8080\n")
	put(t, dir, "plain.yaml", "name: plain\nports: [81]\nbackends: [127.0.0.4:8080]\n")
	h := &fakeHealth{down: map[string]bool{"plain/127.0.0.4:8080": true}}
	dp := &fakeDP{}
	r := startWith(t, Options{Dir: dir, Health: h}, dp)

	want := func(what string, w map[string]lb.BackendState) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := statesOf(dp)
			ok := true
			for a, s := range w {
				if st, present := got[a]; !present || st != s {
					ok = false
				}
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: datapath states %v, want %v", what, got, w)
			}
			time.Sleep(time.Millisecond)
		}
	}
	want("start", map[string]lb.BackendState{"127.0.0.1": lb.Active, "127.0.0.2": lb.Draining, "127.0.0.3": lb.Active, "127.0.0.4": lb.Active})

	h.set("web", "127.0.0.3:8080", true)
	h.set("web", "127.0.0.2:8080", true)
	r.HealthChanged([]string{"web"})
	want("down", map[string]lb.BackendState{"127.0.0.1": lb.Active, "127.0.0.2": lb.Down, "127.0.0.3": lb.Down})
	sv, _ := r.Snapshot().Lookup("web")
	if len(sv.HealthDown) != 2 {
		t.Errorf("snapshot HealthDown = %v, want 2 backends", sv.HealthDown)
	}

	h.set("web", "127.0.0.3:8080", false)
	h.set("web", "127.0.0.2:8080", false)
	r.HealthChanged([]string{"web", "no-such-service"})
	want("up again", map[string]lb.BackendState{"127.0.0.2": lb.Draining, "127.0.0.3": lb.Active})
}

// goneDP reports every backend removed by an Update as gone, and fails
// when told to, having written nothing.
type goneDP struct {
	fakeDP
}

func (g *goneDP) Update(put []lb.Service, remove []lb.ServiceKey) (lb.ApplyStats, error) {
	st, err := g.fakeDP.Update(put, remove)
	if err == nil {
		st.Gone = []lb.GoneBackend{{Backend: netip.MustParseAddrPort("127.0.0.9:9")}}
	}
	return st, err
}

// A snapshot republished after a failed apply, or while the directory is
// gone, reports no gone backends of its own: the previous apply's must not
// be closed again.
func TestRepublishedSnapshotHasNoGone(t *testing.T) {
	dir := tempDir(t)
	put(t, dir, "a.yaml", svcYAML("a", "127.0.0.1:1"))
	dp := &goneDP{}
	rc := &recorder{}
	r := startWith(t, Options{Dir: dir, OnApply: rc.add}, dp)
	put(t, dir, "a.yaml", svcYAML("a", "127.0.0.1:2"))
	waitFor(t, r, 5*time.Second, "edit applied", func(s *Snapshot) bool { return len(s.Stats.Gone) == 1 })
	dp.setFail(errors.New("boom"))
	put(t, dir, "a.yaml", svcYAML("a", "127.0.0.1:3"))
	s := waitFor(t, r, 5*time.Second, "failure published", func(s *Snapshot) bool { return len(s.Errors) > 0 })
	if len(s.Stats.Gone) != 0 {
		t.Errorf("the failed apply's snapshot reports gone %v (the previous apply's)", s.Stats.Gone)
	}
}
