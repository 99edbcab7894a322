package registry

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"sockmesh/servicefile"
)

// dpBackends is what the datapath serves for a service key, by address.
func dpBackends(dp *fakeDP, vip netip.Addr, port uint16) []string {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	for _, s := range dp.set {
		if s.Key.VIP == vip && s.Key.Port == port {
			var out []string
			for _, b := range s.Backends {
				out = append(out, b.Addr.String())
			}
			return out
		}
	}
	return nil
}

func hasError(s *Snapshot, prefix, contains string) bool {
	return slices.ContainsFunc(s.Errors, func(e *servicefile.Error) bool {
		return strings.HasPrefix(e.Error(), prefix) && strings.Contains(e.Error(), contains)
	})
}

// Backends documents add their backends to the service they name, from
// any source, in path order after the service's own; one that changes or
// goes changes the service; a bad one keeps its last good version; a
// backend that cannot join is left out and named; one for a service not
// served waits for it.
func TestBackendsDocuments(t *testing.T) {
	dir := tempDir(t)
	put(t, dir, "web.yaml", "name: web\nvip: 198.18.0.10\nports: [80]\nbackends: [127.0.0.1:8080]\n")
	put(t, dir, "web-local.yaml", "backends_for: web\nbackends: [127.0.0.2:8080]\n")
	src := newFakeSource("etcd://127.0.0.1:2379/sm")
	src.send(DocUpdate{Full: true, Revision: 5, Docs: map[string][]byte{
		"web/backends/hostb": []byte("backends_for: web\nbackends: [127.0.0.3:8080, {address: 127.0.0.4:8080, weight: 2}]\n"),
	}, Health: &SourceHealth{}})
	dp := &fakeDP{}
	r := startWith(t, Options{Dir: dir, Sources: []Source{src}}, dp)
	vip := netip.MustParseAddr("198.18.0.10")
	// Path order: the directory's files ("/...") before etcd's.
	want := []string{"127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080"}
	s := waitFor(t, r, 5*time.Second, "merged", hasBackends("web", want...))
	if len(s.Errors) != 0 {
		t.Errorf("errors: %v", s.Err())
	}
	if got := dpBackends(dp, vip, 80); !slices.Equal(got, []string{"127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.3:8080", "127.0.0.4:8080"}) {
		t.Errorf("datapath backends %v", got)
	}
	sv, _ := s.Lookup("web")
	if sv.Backends[0].From != "" || sv.Backends[2].From != "etcd://127.0.0.1:2379/sm/web/backends/hostb" || sv.Backends[3].Weight != 2 {
		t.Errorf("backends %+v: want each marked with its document, weights kept", sv.Backends)
	}
	if got := names(s); !slices.Equal(got, []string{"web"}) {
		t.Errorf("services %v: a backends document is no service", got)
	}

	// The host's document goes (its lease ran out): its backends go.
	src.send(DocUpdate{Revision: 6, Docs: map[string][]byte{"web/backends/hostb": nil}})
	waitFor(t, r, 5*time.Second, "hostb's backends gone", hasBackends("web", "127.0.0.1:8080", "127.0.0.2:8080"))
	if got := dpBackends(dp, vip, 80); !slices.Equal(got, []string{"127.0.0.1:8080", "127.0.0.2:8080"}) {
		t.Errorf("datapath backends %v after the document went", got)
	}

	// A broken version keeps the last good one; the error names it.
	put(t, dir, "web-local.yaml", "backends_for: web\nbackends: [127.0.0.2:99999]\n")
	s = waitFor(t, r, 5*time.Second, "error", func(s *Snapshot) bool { return len(s.Errors) > 0 })
	if !hasError(s, dir+"/web-local.yaml:2:", "backends[0]") {
		t.Errorf("errors %v, want web-local.yaml:2 backends[0]", s.Err())
	}
	if got := backendsOf(s, "web"); !slices.Equal(got, []string{"127.0.0.1:8080", "127.0.0.2:8080"}) {
		t.Errorf("backends %v: the last good document must stay", got)
	}

	// Backends that cannot join: one the service has, one of the other
	// family; the rest join.
	put(t, dir, "web-local.yaml", "backends_for: web\nbackends: [127.0.0.1:8080, \"[::1]:8080\", 127.0.0.5:8080]\n")
	s = waitFor(t, r, 5*time.Second, "left out", hasBackends("web", "127.0.0.1:8080", "127.0.0.5:8080"))
	if !hasError(s, dir+"/web-local.yaml:2:", "backends[0]: 127.0.0.1:8080 is already a backend of service \"web\"") ||
		!hasError(s, dir+"/web-local.yaml:2:", "backends[1]: IPv6 backend ::1 cannot serve the IPv4 VIP") {
		t.Errorf("errors %v, want the duplicate and the IPv6 backend named", s.Err())
	}

	// For a service not served: it waits, and joins when the service comes.
	src.send(DocUpdate{Revision: 7, Docs: map[string][]byte{"api/backends/hostb": []byte("backends_for: api\nbackends: [127.0.0.6:9090]\n")}})
	waitFor(t, r, 5*time.Second, "waiting", func(s *Snapshot) bool {
		return hasError(s, "etcd://127.0.0.1:2379/sm/api/backends/hostb:1:", `backends_for: no service "api" is served`)
	})
	src.send(DocUpdate{Revision: 8, Docs: map[string][]byte{"api": []byte("name: api\nports: [9090]\nbackends: []\n")}})
	s = waitFor(t, r, 5*time.Second, "api with hostb's backend", hasBackends("api", "127.0.0.6:9090"))
	if hasError(s, "etcd://127.0.0.1:2379/sm/api/backends/hostb", "") {
		t.Errorf("errors %v: api is served now", s.Err())
	}

	// The service goes: its backends documents wait again; it comes back
	// with them.
	src.send(DocUpdate{Revision: 9, Docs: map[string][]byte{"api": nil}})
	waitFor(t, r, 5*time.Second, "api gone", func(s *Snapshot) bool { _, ok := s.Lookup("api"); return !ok })
	src.send(DocUpdate{Revision: 10, Docs: map[string][]byte{"api": []byte("name: api\nports: [9090]\nbackends: [127.0.0.7:9090]\n")}})
	waitFor(t, r, 5*time.Second, "api back with both", hasBackends("api", "127.0.0.7:9090", "127.0.0.6:9090"))
}
