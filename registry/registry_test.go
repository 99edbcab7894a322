package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"sockmesh/lb"
	"sockmesh/servicefile"
)

// fakeDP records what the registry applies; it can be told to fail.
type fakeDP struct {
	mu      sync.Mutex
	set     []lb.Service
	applies int
	fail    error
}

func (f *fakeDP) Apply(s []lb.Service) (lb.ApplyStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	if f.fail != nil {
		return lb.ApplyStats{}, f.fail
	}
	f.set = slices.Clone(s)
	return lb.ApplyStats{Added: 1}, nil
}

func (f *fakeDP) Update(put []lb.Service, remove []lb.ServiceKey) (lb.ApplyStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	if f.fail != nil {
		return lb.ApplyStats{}, f.fail
	}
	f.set = slices.DeleteFunc(f.set, func(s lb.Service) bool {
		return slices.Contains(remove, s.Key) || slices.ContainsFunc(put, func(p lb.Service) bool { return p.Key == s.Key })
	})
	f.set = append(f.set, put...)
	return lb.ApplyStats{Added: len(put)}, nil
}

func (f *fakeDP) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func testLimits() lb.Limits {
	return lb.Limits{ServiceEntries: 1 << 18, Backends: 1 << 18, Counters: 1 << 18, LocalNames: 1 << 16}
}

func quietLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// tempDir makes a services directory with the mode StrictModes wants.
func tempDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "services.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// put writes a file the way config managers do: a hidden temp file,
// renamed into place.
func put(t testing.TB, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func svcYAML(name string, backends ...string) string {
	return fmt.Sprintf("name: %s\nports: [80]\nbackends: [%s]\n", name, strings.Join(backends, ", "))
}

// recorder keeps every snapshot a registry publishes.
type recorder struct {
	mu    sync.Mutex
	snaps []*Snapshot
}

func (rc *recorder) add(s *Snapshot) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.snaps = append(rc.snaps, s)
}

func (rc *recorder) all() []*Snapshot {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.snaps)
}

func startRegistry(t testing.TB, dir string, dp Applier) *Registry {
	r, _ := startRecorded(t, dir, dp)
	return r
}

func startRecorded(t testing.TB, dir string, dp Applier) (*Registry, *recorder) {
	t.Helper()
	rec := &recorder{}
	return startWith(t, Options{Dir: dir, OnApply: rec.add}, dp), rec
}

// startWith runs a registry with opts (Limits and Logger filled in) until
// the test ends, and waits until it is ready.
func startWith(t testing.TB, opts Options, dp Applier) *Registry {
	t.Helper()
	opts.Limits, opts.Logger = testLimits(), quietLogger(t)
	r, err := New(opts, dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("registry: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		t.Fatalf("registry stopped: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("registry not ready after 5s")
	}
	return r
}

// waitFor polls the live snapshot until cond holds, failing after within.
func waitFor(t testing.TB, r *Registry, within time.Duration, what string, cond func(*Snapshot) bool) *Snapshot {
	t.Helper()
	start := time.Now()
	for {
		s := r.Snapshot()
		if cond(s) {
			return s
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v; snapshot %d: %s", what, within, s.Generation, describeSnap(s))
		}
		time.Sleep(time.Millisecond)
	}
}

func describeSnap(s *Snapshot) string {
	var b strings.Builder
	for _, sv := range s.Services {
		fmt.Fprintf(&b, "[%s %v %d backends stale=%v] ", sv.Name, sv.VIPs, len(sv.Backends), sv.Stale)
	}
	for _, e := range s.Errors {
		fmt.Fprintf(&b, "\n  error: %v", e)
	}
	return b.String()
}

func backendsOf(s *Snapshot, name string) []string {
	sv, ok := s.Lookup(name)
	if !ok {
		return nil
	}
	var out []string
	for _, b := range sv.Backends {
		out = append(out, netip.AddrPortFrom(b.Addr, b.Port).String())
	}
	return out
}

func hasBackends(name string, want ...string) func(*Snapshot) bool {
	return func(s *Snapshot) bool { return slices.Equal(backendsOf(s, name), want) }
}

func errorsOf(s *Snapshot, file string) []string {
	var out []string
	for _, e := range s.Errors {
		if e.File == file {
			out = append(out, e.Error())
		}
	}
	return out
}

// --- checking a directory without a datapath ---

func TestCheckExamples(t *testing.T) {
	s, err := Check(Options{Dir: "../services.d", Limits: testLimits()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Err(); err != nil {
		t.Fatalf("example files have errors:\n%v", err)
	}
	var names []string
	for _, sv := range s.Services {
		names = append(names, sv.Name)
		for _, v := range sv.VIPs {
			if !DefaultRanges.contains(v) {
				t.Errorf("%s: VIP %s outside the default ranges", sv.Name, v)
			}
		}
	}
	if !slices.Equal(names, []string{"api", "hello", "web"}) {
		t.Fatalf("services %v", names)
	}
	hello, _ := s.Lookup("hello")
	if !hello.Derived || len(hello.VIPs) != 2 {
		t.Fatalf("hello: %+v", hello)
	}
}

// TestCandidateVectors pins the derivation: VIPs are the same on every
// host and release, so this function must never change. The vectors were
// computed with Python's hashlib, independently of this code.
func TestCandidateVectors(t *testing.T) {
	for _, tc := range []struct {
		prefix, name string
		attempt      int
		want         string
	}{
		{"198.18.0.0/15", "hello", 0, "198.19.35.89"},
		{"fd6d:6573:6800::/64", "hello", 0, "fd6d:6573:6800:0:3ab6:f8c8:4f74:1355"},
	} {
		got := Candidate(netip.MustParsePrefix(tc.prefix), tc.name, tc.attempt)
		if got.String() != tc.want {
			t.Errorf("Candidate(%s, %s, %d) = %s, want %s", tc.prefix, tc.name, tc.attempt, got, tc.want)
		}
	}
}

// TestDeriveCollisions forces collisions in a tiny range: every name gets
// a distinct address, the result does not depend on input order, and each
// collision is reported.
func TestDeriveCollisions(t *testing.T) {
	ranges := Ranges{V4: netip.MustParsePrefix("10.0.0.0/27"), V6: DefaultRanges.V6}
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("svc%d", i))
	}
	taken := map[netip.Addr]string{netip.MustParseAddr("10.0.0.7"): "pinned"}
	run := func(order []string) (map[string]netip.Addr, []Collision) {
		var ds []dkey
		for _, n := range order {
			ds = append(ds, dkey{name: n, family: servicefile.IPv4})
		}
		vt := newVIPTable(ranges)
		exp := map[netip.Addr][]string{}
		for a, n := range taken {
			exp[a] = []string{n}
		}
		vt.rebuild(ds, exp)
		out := map[string]netip.Addr{}
		for _, d := range ds {
			out[d.name] = vt.assign[d]
		}
		return out, vt.collisions()
	}
	first, cs := run(names)
	seen := map[netip.Addr]string{}
	for n, a := range first {
		if !a.IsValid() || !ranges.V4.Contains(a) || reserved(ranges.V4, a) || a == netip.MustParseAddr("10.0.0.7") {
			t.Fatalf("%s got %s", n, a)
		}
		if other, dup := seen[a]; dup {
			t.Fatalf("%s and %s share %s", n, other, a)
		}
		seen[a] = n
	}
	if len(cs) == 0 {
		t.Fatal("20 names in 30 addresses and no collision reported")
	}
	for _, c := range cs {
		if c.Got != first[c.Name] || c.Wanted == c.Got || c.Holder == "" {
			t.Fatalf("bad collision report %+v", c)
		}
	}
	for range 10 {
		shuffled := slices.Clone(names)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		again, _ := run(shuffled)
		for n, a := range first {
			if again[n] != a {
				t.Fatalf("order changed %s: %s vs %s", n, a, again[n])
			}
		}
	}
}

// --- validation across files ---

func check(t *testing.T, dir string) *Snapshot {
	t.Helper()
	s, err := Check(Options{Dir: dir, Limits: testLimits()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCrossFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		serve []string // services served
		want  []string // errors
	}{
		{
			name: "duplicate name",
			files: map[string]string{
				"a.yaml": svcYAML("web", "10.0.0.1:80"),
				"b.yaml": "# the same name again\n" + svcYAML("web", "10.0.0.2:80"),
			},
			serve: []string{"web"},
			want:  []string{`DIR/b.yaml:2:7: name: "web" is already the name of the service in DIR/a.yaml: names are unique across files`},
		},
		{
			name: "same vip port proto",
			files: map[string]string{
				"a.yaml": "name: a\nvip: 198.18.0.10\nports: [80, 53/udp]\nbackends: [10.0.0.1]\n",
				"b.yaml": "name: b\nvip: 198.18.0.10\nports: [53/udp]\nbackends: [10.0.0.2]\n",
				"c.yaml": "name: c\nvip: 198.18.0.10\nports: [53/tcp]\nbackends: [10.0.0.3]\n",
			},
			serve: []string{"a", "c"},
			want:  []string{`DIR/b.yaml:2:6: vip: 198.18.0.10 port 53/udp is already served by service "a": two services cannot share a VIP, port and protocol`},
		},
		{
			name: "vip outside ranges",
			files: map[string]string{
				"a.yaml": "name: a\nvip: [10.1.2.3, 'fd00::1']\nports: [80]\nbackends: [10.0.0.1]\n",
			},
			want: []string{
				`DIR/a.yaml:2:7: vip: 10.1.2.3 is outside the VIP ranges (198.18.0.0/15, fd6d:6573:6800::/64): pick an address inside, or leave vip out to derive one`,
				`DIR/a.yaml:2:17: vip: fd00::1 is outside the VIP ranges (198.18.0.0/15, fd6d:6573:6800::/64): pick an address inside, or leave vip out to derive one`,
			},
		},
		{
			name: "local name claimed twice",
			files: map[string]string{
				"a.yaml": "name: a\nvip: 198.18.0.1\nports: [80]\nbackends: [10.0.0.1:8080]\nlocal_name: true\n",
				"b.yaml": "name: b\nvip: 198.18.0.2\nports: [80]\nbackends: [10.0.0.1:8080]\nlocal_name: true\n",
			},
			serve: []string{"a"},
			want:  []string{`DIR/b.yaml:4:12: local_name: backend 10.0.0.1:8080/tcp already reports service "a" to getsockname: only one service can`},
		},
		{
			name: "file errors and ignored files",
			files: map[string]string{
				"a.yaml":        "name: a\nports: [80]\n",
				"b.yml":         svcYAML("b", "10.0.0.1:80"),
				"README.md":     "not a service",
				".hidden.yaml":  "not: read",
				"backup.yaml~":  "not: read",
				"c.yaml.swp":    "not: read",
				"d.yaml.rpmnew": "not: read",
			},
			serve: []string{"b"},
			want:  []string{`DIR/a.yaml:1:1: backends: missing: every service needs name, ports and backends (backends: [] refuses connections)`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			for n, c := range tc.files {
				put(t, dir, n, c)
			}
			s := check(t, dir)
			var served []string
			for _, sv := range s.Services {
				served = append(served, sv.Name)
			}
			if !slices.Equal(served, tc.serve) {
				t.Errorf("served %v, want %v", served, tc.serve)
			}
			var got []string
			for _, e := range s.Errors {
				got = append(got, strings.ReplaceAll(e.Error(), dir, "DIR"))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestCapacityBlamesTheFileThatOverflows(t *testing.T) {
	dir := tempDir(t)
	for i := range 5 {
		put(t, dir, fmt.Sprintf("s%d.yaml", i), fmt.Sprintf("name: s%d\nvip: 198.18.0.%d\nports: [80]\nbackends: [10.0.0.1:80, 10.0.0.2:80]\n", i, i+1))
	}
	// Each service takes 1 master + 2 slots; room for 3 services plus the
	// peak of 2 is 11 entries.
	s, err := Check(Options{Dir: dir, Limits: lb.Limits{ServiceEntries: 11, Backends: 100, Counters: 100, LocalNames: 10}})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Services) != 3 || len(s.Errors) != 2 {
		t.Fatalf("%s", describeSnap(s))
	}
	if e := s.Errors[0]; e.File != filepath.Join(dir, "s3.yaml") || !strings.Contains(e.Msg, "does not fit the datapath maps") || !strings.Contains(e.Msg, "the map holds 11") {
		t.Fatalf("error %v", e)
	}
}

func TestCheckMissingDir(t *testing.T) {
	_, err := Check(Options{Dir: filepath.Join(t.TempDir(), "nope"), Limits: testLimits()})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("err %v", err)
	}
}

func TestStrictModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root") // not privileged in the CI sense: runs as root there
	}
	dir := tempDir(t)
	put(t, dir, "ok.yaml", svcYAML("ok", "10.0.0.1:80"))
	put(t, dir, "open.yaml", svcYAML("open", "10.0.0.1:80"))
	put(t, dir, "theirs.yaml", svcYAML("theirs", "10.0.0.1:80"))
	if err := os.Chmod(filepath.Join(dir, "open.yaml"), 0o664); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(dir, "theirs.yaml"), 4242, 4242); err != nil {
		t.Fatal(err)
	}
	s := check(t, dir)
	if len(s.Services) != 1 || s.Services[0].Name != "ok" {
		t.Fatalf("%s", describeSnap(s))
	}
	want := []string{
		dir + "/open.yaml: " + dir + "/open.yaml is writable by group or others (mode 0664): refused, since a service file decides where traffic goes (chmod go-w " + dir + "/open.yaml)",
		dir + "/theirs.yaml: " + dir + "/theirs.yaml is owned by uid 4242, not by root: refused, since a service file decides where traffic goes (chown root " + dir + "/theirs.yaml)",
	}
	if got := strings.Split(s.Err().Error(), "\n"); !slices.Equal(got, want) {
		t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := Check(Options{Dir: dir, Limits: testLimits()})
	if err == nil || !strings.Contains(err.Error(), "is writable by group or others (mode 0777)") {
		t.Fatalf("group-writable directory: %v", err)
	}
}

// --- the live registry: last good state, watching ---

func TestLastGoodVersionStaysLive(t *testing.T) {
	dir := tempDir(t)
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.1:80"))
	put(t, dir, "api.yaml", svcYAML("api", "10.0.0.9:80"))
	dp := &fakeDP{}
	r := startRegistry(t, dir, dp)
	waitFor(t, r, time.Second, "initial", hasBackends("web", "10.0.0.1:80"))

	// Break web: its old version stays, api is untouched, the error shows.
	put(t, dir, "web.yaml", "name: web\nports: [80]\nbackends: [10.0.0.300:80]\n")
	s := waitFor(t, r, time.Second, "error reported", func(s *Snapshot) bool { return len(s.Errors) > 0 })
	if got := backendsOf(s, "web"); !slices.Equal(got, []string{"10.0.0.1:80"}) {
		t.Fatalf("web serves %v after a bad edit", got)
	}
	if sv, _ := s.Lookup("web"); !sv.Stale {
		t.Fatal("web not marked stale")
	}
	if got := backendsOf(s, "api"); !slices.Equal(got, []string{"10.0.0.9:80"}) {
		t.Fatalf("api serves %v", got)
	}
	if e := errorsOf(s, filepath.Join(dir, "web.yaml")); len(e) != 1 || !strings.Contains(e[0], "web.yaml:3:12: backends[0]") {
		t.Fatalf("errors %v", e)
	}
	// A new file that takes web's name while web.yaml is broken loses: web
	// keeps its last good version.
	put(t, dir, "a-web.yaml", svcYAML("web", "10.0.0.7:80"))
	s = waitFor(t, r, time.Second, "clash reported", func(s *Snapshot) bool {
		return len(errorsOf(s, filepath.Join(dir, "a-web.yaml"))) == 1
	})
	if got := backendsOf(s, "web"); !slices.Equal(got, []string{"10.0.0.1:80"}) {
		t.Fatalf("web serves %v after a clashing file", got)
	}
	if err := os.Remove(filepath.Join(dir, "a-web.yaml")); err != nil {
		t.Fatal(err)
	}
	// Fixed: the new version is served and the error is gone.
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.2:80"))
	waitFor(t, r, time.Second, "fixed", func(s *Snapshot) bool {
		return len(s.Errors) == 0 && slices.Equal(backendsOf(s, "web"), []string{"10.0.0.2:80"})
	})
}

func TestApplyFailureKeepsLiveAndRetries(t *testing.T) {
	dir := tempDir(t)
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.1:80"))
	dp := &fakeDP{}
	r := startRegistry(t, dir, dp)
	dp.setFail(errors.New("map full"))
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.2:80"))
	s := waitFor(t, r, time.Second, "apply error reported", func(s *Snapshot) bool { return len(s.Errors) > 0 })
	if !strings.Contains(s.Errors[0].Error(), "map full") || !slices.Equal(backendsOf(s, "web"), []string{"10.0.0.1:80"}) {
		t.Fatalf("%s", describeSnap(s))
	}
	dp.setFail(nil)
	waitFor(t, r, 3*retryDelay, "retried", func(s *Snapshot) bool {
		return len(s.Errors) == 0 && slices.Equal(backendsOf(s, "web"), []string{"10.0.0.2:80"})
	})
}

// within bounds how long a file operation may take to reach the live set
// before the test calls it missed. It is a liveness bound, loose enough for
// a loaded CI machine, not a speed target: BenchmarkFileToVIP measures that.
const within = 2 * time.Second

func TestWatchFileOperations(t *testing.T) {
	dir := tempDir(t)
	dp := &fakeDP{}
	r := startRegistry(t, dir, dp)
	path := filepath.Join(dir, "web.yaml")

	// create (open, write, close)
	if err := os.WriteFile(path, []byte(svcYAML("web", "10.0.0.1:80")), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "create", hasBackends("web", "10.0.0.1:80"))

	// write in place: truncate and rewrite the same inode
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(f, svcYAML("web", "10.0.0.2:80")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	waitFor(t, r, within, "write in place", hasBackends("web", "10.0.0.2:80"))

	// rename into place (mv)
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.3:80"))
	waitFor(t, r, within, "rename into place", hasBackends("web", "10.0.0.3:80"))

	// a file moved in from elsewhere
	other := filepath.Join(t.TempDir(), "api.yaml")
	if err := os.WriteFile(other, []byte(svcYAML("api", "10.0.0.4:80")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, filepath.Join(dir, "api.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "move in", hasBackends("api", "10.0.0.4:80"))

	// rename to a name that is not a service file: the service goes
	if err := os.Rename(filepath.Join(dir, "api.yaml"), filepath.Join(dir, "api.yaml.disabled")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "rename away", func(s *Snapshot) bool { _, ok := s.Lookup("api"); return !ok })

	// chmod to group-writable: refused, the last good version stays
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	s := waitFor(t, r, within, "chmod", func(s *Snapshot) bool { return len(s.Errors) == 1 })
	if sv, ok := s.Lookup("web"); !ok || !sv.Stale {
		t.Fatalf("web after chmod: %s", describeSnap(s))
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "chmod back", func(s *Snapshot) bool { return len(s.Errors) == 0 })

	// delete
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "delete", func(s *Snapshot) bool { return len(s.Services) == 0 })
	if len(dp.set) != 0 {
		t.Fatalf("datapath still has %d services", len(dp.set))
	}
}

func TestWatchDirectoryLifecycle(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "etc", "sockmesh")
	dir := filepath.Join(parent, "services.d")
	dp := &fakeDP{}
	r := startRegistry(t, dir, dp)
	// Neither the directory nor its parent exists yet.
	s := r.Snapshot()
	if len(s.Errors) != 1 || !strings.Contains(s.Errors[0].Msg, "does not exist") {
		t.Fatalf("missing dir: %s", describeSnap(s))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.1:80"))
	waitFor(t, r, within, "directory created", hasBackends("web", "10.0.0.1:80"))

	// Replace the directory: move the old one away, a new one in.
	next := filepath.Join(parent, "services.d.new")
	if err := os.Mkdir(next, 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, next, "api.yaml", svcYAML("api", "10.0.0.2:80"))
	if err := os.Rename(dir, filepath.Join(parent, "services.d.old")); err != nil {
		t.Fatal(err)
	}
	// While the directory is gone, what is live stays live.
	s = waitFor(t, r, within, "directory gone", func(s *Snapshot) bool { return len(s.Errors) == 1 })
	if _, ok := s.Lookup("web"); !ok {
		t.Fatal("web dropped while the directory was away")
	}
	if err := os.Rename(next, dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "directory replaced", func(s *Snapshot) bool {
		_, web := s.Lookup("web")
		return !web && slices.Equal(backendsOf(s, "api"), []string{"10.0.0.2:80"}) && len(s.Errors) == 0
	})
	// Later changes in the new directory are seen.
	put(t, dir, "web.yaml", svcYAML("web", "10.0.0.3:80"))
	waitFor(t, r, within, "change in the new directory", hasBackends("web", "10.0.0.3:80"))

	// Symlink swap, as Kubernetes does with ConfigMaps: services.d is a
	// link to a versioned directory, replaced atomically.
	v1, v2 := filepath.Join(parent, "v1"), filepath.Join(parent, "v2")
	for _, v := range []string{v1, v2} {
		if err := os.Mkdir(v, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	put(t, v1, "one.yaml", svcYAML("one", "10.0.1.1:80"))
	put(t, v2, "two.yaml", svcYAML("two", "10.0.2.2:80"))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("v1", dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "symlinked directory", hasBackends("one", "10.0.1.1:80"))
	if err := os.Symlink("v2", filepath.Join(parent, ".next")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(parent, ".next"), dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r, within, "symlink swapped", func(s *Snapshot) bool {
		_, one := s.Lookup("one")
		return !one && slices.Equal(backendsOf(s, "two"), []string{"10.0.2.2:80"})
	})
}

// TestWatchBurst writes 1,000 versions of 50 files as fast as it can; the
// live set must converge to the last version of each.
func TestWatchBurst(t *testing.T) {
	dir := tempDir(t)
	dp := &fakeDP{}
	r := startRegistry(t, dir, dp)
	const files, writes = 50, 1000
	last := map[string]string{}
	for i := range writes {
		name := fmt.Sprintf("s%02d", i%files)
		backend := fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1)
		if i%2 == 0 {
			put(t, dir, name+".yaml", svcYAML(name, backend))
		} else if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(svcYAML(name, backend)), 0o644); err != nil {
			t.Fatal(err)
		}
		last[name] = backend
	}
	s := waitFor(t, r, 2*time.Second, "burst converged", func(s *Snapshot) bool {
		if len(s.Services) != files || len(s.Errors) > 0 {
			return false
		}
		for n, b := range last {
			if !slices.Equal(backendsOf(s, n), []string{b}) {
				return false
			}
		}
		return true
	})
	dp.mu.Lock()
	applies := dp.applies
	dp.mu.Unlock()
	t.Logf("1,000 writes converged in %d applies (generation %d)", applies, s.Generation)
}

// TestWatchOverflow makes the kernel drop events (the registry is paused
// while 20,000 events queue up, more than fs.inotify.max_queued_events);
// the registry must notice and read everything again.
func TestWatchOverflow(t *testing.T) {
	raw, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Fatal(err)
	}
	var maxQueued int
	fmt.Sscan(string(raw), &maxQueued)
	if maxQueued > 100000 {
		t.Fatalf("max_queued_events is %d: this test cannot overflow it in bounded time", maxQueued)
	}
	dir := tempDir(t)
	dp := &fakeDP{}
	r, err := New(Options{Dir: dir, Limits: testLimits(), Logger: quietLogger(t)}, dp)
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	var once sync.Once
	var paused sync.WaitGroup
	paused.Add(1)
	r.pause = func() {
		once.Do(func() { paused.Done(); <-gate })
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-r.Ready()

	put(t, dir, "first.yaml", svcYAML("first", "10.0.0.1:80"))
	paused.Wait()
	// Each create makes several events (create, modify, close); the
	// service file among them lands after the queue is full.
	for i := range maxQueued/2 + 1000 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("junk%05d.txt", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put(t, dir, "late.yaml", svcYAML("late", "10.0.0.2:80"))
	close(gate)
	waitFor(t, r, 5*time.Second, "overflow recovered", func(s *Snapshot) bool {
		return slices.Equal(backendsOf(s, "first"), []string{"10.0.0.1:80"}) && slices.Equal(backendsOf(s, "late"), []string{"10.0.0.2:80"})
	})
}

// TestHalfWrittenFileNotReported: a file caught empty mid-write is not
// reported when the writer finishes within the grace period.
func TestHalfWrittenFileNotReported(t *testing.T) {
	dir := tempDir(t)
	dp := &fakeDP{}
	r, rec := startRecorded(t, dir, dp)
	path := filepath.Join(dir, "web.yaml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Chmod(0o644)
	io.WriteString(f, "name: web\n")
	time.Sleep(errorGrace / 4)
	io.WriteString(f, "ports: [80]\nbackends: [10.0.0.1:80]\n")
	f.Close()
	waitFor(t, r, within, "written", hasBackends("web", "10.0.0.1:80"))
	time.Sleep(2 * errorGrace)
	for _, s := range rec.all() {
		if len(s.Errors) != 0 {
			t.Fatalf("a half-written file was reported: %s", describeSnap(s))
		}
	}
}
