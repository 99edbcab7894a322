package health

import (
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestMachine(t *testing.T) {
	for _, tc := range []struct {
		results string // p: pass, f: fail
		states  string // after each: u(p), d(own)
	}{
		{"p", "u"},
		{"f", "d"},
		{"pfffp", "uuudd"},
		{"pffpfff", "uuuuuud"},
		{"fpp", "ddu"},
		{"fpfpp", "ddddu"},
		{"pfffpffpp", "uuudddddu"},
	} {
		var m machine
		var got strings.Builder
		changes := 0
		for _, r := range tc.results {
			if m.observe(r == 'p', 2, 3) {
				changes++
			}
			got.WriteByte(m.state.String()[0])
		}
		if got.String() != tc.states {
			t.Errorf("%s: states %s, want %s", tc.results, got.String(), tc.states)
		}
		want := 1
		for i := 1; i < len(tc.states); i++ {
			if tc.states[i] != tc.states[i-1] {
				want++
			}
		}
		if changes != want {
			t.Errorf("%s: %d changes, want %d", tc.results, changes, want)
		}
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Unknown: "unknown", Up: "up", Down: "down", 7: "state(7)"} {
		if s.String() != want {
			t.Errorf("%d: %q, want %q", s, s.String(), want)
		}
	}
}

// tcpBackend is a TCP listener on loopback that can go away and come back
// on the same port.
type tcpBackend struct {
	t        testing.TB
	addr     netip.AddrPort
	mu       sync.Mutex
	ln       net.Listener
	accepted atomic.Int64
}

func startTCP(t testing.TB) *tcpBackend {
	t.Helper()
	b := &tcpBackend{t: t}
	b.ln = listen(t, "127.0.0.1")
	b.addr = addrOf(t, b.ln.Addr())
	acceptInto(b.ln, &b.accepted)
	return b
}

func (b *tcpBackend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ln.Close()
}

func (b *tcpBackend) restart() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	ln, err := net.Listen("tcp", b.addr.String())
	if err != nil {
		b.t.Fatalf("listen again on %v: %v", b.addr, err)
	}
	b.t.Cleanup(func() { ln.Close() })
	b.ln = ln
	acceptInto(ln, &b.accepted)
}

// change is what OnChange saw: its argument, and the target's status and
// Down answer at the time.
type change struct {
	services []string
	status   Status
	listed   bool
	down     bool
}

// watched is a monitor whose OnChange reports what it saw of one target.
type watched struct {
	*Monitor
	changes chan change
}

func newWatched(t *testing.T, service, backend string, log *slog.Logger) *watched {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &watched{changes: make(chan change, 100)}
	w.Monitor = NewMonitor(Options{Logger: log, OnChange: func(services []string) {
		c := change{services: services, down: w.Down(service, backend)}
		for _, s := range w.Statuses() {
			if s.Service == service && s.Backend == backend {
				c.status, c.listed = s, true
			}
		}
		w.changes <- c
	}})
	t.Cleanup(w.Close)
	return w
}

// next waits for OnChange.
func (w *watched) next(t *testing.T) change {
	t.Helper()
	select {
	case c := <-w.changes:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no OnChange in 5 s")
	}
	panic("unreachable")
}

func (w *watched) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case c := <-w.changes:
		t.Fatalf("unexpected OnChange: %+v", c)
	case <-time.After(d):
	}
}

// lockedBuffer is a log destination safe for the monitor's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var backendA = "10.0.0.1:80"

func fastTCP() Check {
	return Check{Kind: TCP, Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 3}
}

func TestMonitorFallRise(t *testing.T) {
	b := startTCP(t)
	var logs lockedBuffer
	w := newWatched(t, "web", backendA, slog.New(slog.NewTextHandler(&logs, nil)))
	check := fastTCP()
	start := time.Now()
	w.Sync([]Target{{Service: "web", Backend: backendA, Addr: b.addr, Check: check}})
	if sts := w.Statuses(); len(sts) != 1 || sts[0].State != Unknown || w.Down("web", backendA) || !sts[0].LastCheck.IsZero() {
		t.Fatalf("before the first check: %+v", sts)
	}

	// The first check decides at once.
	c := w.next(t)
	if !slices.Equal(c.services, []string{"web"}) || c.status.State != Up || c.down || c.status.Passes != 1 || c.status.Failures != 0 {
		t.Fatalf("first change: %+v", c)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("first check after %v, want at once", took)
	}

	// Gone: down after exactly Fall failures, not before.
	b.stop()
	stopped := time.Now()
	c = w.next(t)
	took := time.Since(stopped)
	if c.status.State != Down || !c.down || c.status.Failures != uint64(check.Fall) || c.status.LastOK ||
		c.status.LastError != "connect: connection refused" || c.status.Since != c.status.LastCheck {
		t.Fatalf("after stop: %+v", c)
	}
	if minimum := time.Duration(check.Fall-1) * check.Interval * 8 / 10; took < minimum || took > 3*time.Second {
		t.Errorf("down %v after the backend stopped, want at least %v", took, minimum)
	}
	passes := c.status.Passes

	// Back: up after exactly Rise passes.
	b.restart()
	restarted := time.Now()
	c = w.next(t)
	took = time.Since(restarted)
	if c.status.State != Up || c.down || c.status.Passes != passes+uint64(check.Rise) || !c.status.LastOK || c.status.LastError != "" {
		t.Fatalf("after restart: %+v (passes before %d)", c, passes)
	}
	if minimum := time.Duration(check.Rise-1) * check.Interval * 8 / 10; took < minimum || took > 3*time.Second {
		t.Errorf("up %v after the backend came back, want at least %v", took, minimum)
	}
	w.quiet(t, 3*check.Interval)

	out := logs.String()
	for _, want := range []string{
		`level=WARN msg="backend down" service=web backend=10.0.0.1:80 probe=` + b.addr.String() + ` check=tcp failures=3 err="connect: connection refused"`,
		`level=INFO msg="backend up" service=web backend=10.0.0.1:80 probe=` + b.addr.String() + ` check=tcp passes=2`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

func TestMonitorDeadAtStart(t *testing.T) {
	w := newWatched(t, "web", backendA, nil)
	w.Sync([]Target{{Service: "web", Backend: backendA, Addr: closedPort(t, "127.0.0.1"), Check: fastTCP()}})
	c := w.next(t)
	if !slices.Equal(c.services, []string{"web"}) || c.status.State != Down || !c.down || c.status.Failures != 1 || c.status.Passes != 0 {
		t.Fatalf("first change: %+v", c)
	}
}

func TestMonitorRemove(t *testing.T) {
	b := startTCP(t)
	dead := closedPort(t, "127.0.0.1")
	backendB := "10.0.0.2"
	w := newWatched(t, "db", backendB, nil)
	w.Sync([]Target{
		{Service: "web", Backend: backendA, Addr: b.addr, Check: fastTCP()},
		{Service: "db", Backend: backendB, Addr: dead, Check: fastTCP()},
	})
	waitFor(t, "checks", func() bool {
		sts := w.Statuses()
		return len(sts) == 2 && sts[0].Failures >= 2 && sts[1].Passes >= 2
	})
	if !w.Down("db", backendB) {
		t.Fatal("dead backend not down")
	}
	for len(w.changes) > 0 {
		<-w.changes
	}

	// Removing a target that was down brings it back (no checks hold it
	// down any more): OnChange says so.
	w.Sync(nil)
	if sts := w.Statuses(); len(sts) != 0 {
		t.Fatalf("removed targets still listed: %+v", sts)
	}
	c := w.next(t)
	if !slices.Equal(c.services, []string{"db"}) || c.down || c.listed {
		t.Fatalf("after removal: %+v", c)
	}
	// No more checks (once the one in flight when Sync ran, if any, is
	// done).
	time.Sleep(2 * fastTCP().Interval)
	accepted := b.accepted.Load()
	time.Sleep(5 * fastTCP().Interval)
	if n := b.accepted.Load() - accepted; n > 0 {
		t.Errorf("%d checks after removal", n)
	}
	w.quiet(t, 0)
}

func TestMonitorRestart(t *testing.T) {
	live := startTCP(t)
	dead := closedPort(t, "127.0.0.1")
	w := newWatched(t, "web", backendA, nil)
	target := Target{Service: "web", Backend: backendA, Addr: dead, Check: fastTCP()}
	w.Sync([]Target{target})
	if c := w.next(t); c.status.State != Down {
		t.Fatalf("first change: %+v", c)
	}
	waitFor(t, "failures", func() bool { return w.Statuses()[0].Failures >= 3 })

	// The same target again: nothing restarts.
	before := w.Statuses()[0]
	w.Sync([]Target{target})
	after := w.Statuses()[0]
	if after.State != Down || after.Failures < before.Failures || after.Since != before.Since {
		t.Fatalf("unchanged target restarted: before %+v, after %+v", before, after)
	}

	// A changed check: Unknown again (taken as up, said by OnChange),
	// counts from zero, and the first check decides again.
	target.Check.Fall = 4
	synced := time.Now()
	w.Sync([]Target{target})
	sts := w.Statuses()
	if len(sts) != 1 || sts[0].State != Unknown || sts[0].Failures+sts[0].Passes != 0 || sts[0].Since.Before(synced) || sts[0].Check.Fall != 4 {
		t.Fatalf("after a changed check: %+v", sts)
	}
	// OnChange tells of the restart (unless the first check came first:
	// then one call tells of both).
	c := w.next(t)
	if !slices.Equal(c.services, []string{"web"}) {
		t.Fatalf("OnChange after restart: %+v", c)
	}
	if c.status.State == Unknown {
		if c.down {
			t.Fatalf("restarted target down: %+v", c)
		}
		c = w.next(t)
	}
	if c.status.State != Down || c.status.Failures != 1 || c.status.Passes != 0 {
		t.Fatalf("first check after restart: %+v", c)
	}

	// A changed address: restarts too, and the new one is up at once.
	target.Addr = live.addr
	w.Sync([]Target{target})
	c = w.next(t)
	if c.status.State == Unknown {
		if c.down {
			t.Fatalf("restarted target down: %+v", c)
		}
		c = w.next(t)
	}
	if c.status.State != Up || c.status.Passes != 1 || c.status.Failures != 0 {
		t.Fatalf("first check of the new address: %+v", c)
	}
}

func TestMonitorKinds(t *testing.T) {
	web := startHTTP(t, "127.0.0.1")
	ns := startDNS(t, "127.0.0.1")
	ns6 := startDNS(t, "::1")
	ok, fail := Defaults(HTTP), Defaults(HTTP)
	ok.Path, fail.Path = "/ok", "/fail"
	dnsCheck := Defaults(DNS)
	for _, c := range []*Check{&ok, &fail, &dnsCheck} {
		c.Interval, c.Timeout = 50*time.Millisecond, 40*time.Millisecond
	}
	b1, b2, b3 := "10.0.0.2", "10.0.0.10", "[fd00::1]:53"
	m := NewMonitor(Options{Logger: slog.New(slog.DiscardHandler)})
	defer m.Close()
	m.Sync([]Target{
		{Service: "web", Backend: b2, Addr: web.addr, Check: ok},
		{Service: "web", Backend: b1, Addr: web.addr, Check: fail},
		{Service: "dns", Backend: b3, Addr: ns6.addr, Check: dnsCheck},
		{Service: "dns", Backend: b2, Addr: ns.addr, Check: dnsCheck},
	})
	waitFor(t, "first checks", func() bool {
		for _, s := range m.Statuses() {
			if s.State == Unknown {
				return false
			}
		}
		return true
	})
	var got []string
	for _, s := range m.Statuses() {
		got = append(got, fmt.Sprintf("%s %s %s %q", s.Service, s.Backend, s.State, s.LastError))
	}
	want := []string{
		`dns 10.0.0.10 up ""`,
		`dns [fd00::1]:53 up ""`,
		`web 10.0.0.2 down "status 503, want 200-399"`,
		`web 10.0.0.10 up ""`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("statuses:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !m.Down("web", b1) || m.Down("web", b2) || m.Down("dns", b1) || m.Down("nothing", b1) {
		t.Error("Down answers wrong")
	}
}

// TestMonitorInterval checks the pace: one check per interval, not more.
func TestMonitorInterval(t *testing.T) {
	b := startTCP(t)
	m := NewMonitor(Options{Logger: slog.New(slog.DiscardHandler)})
	defer m.Close()
	check := fastTCP()
	check.Interval = 40 * time.Millisecond
	m.Sync([]Target{{Service: "web", Backend: backendA, Addr: b.addr, Check: check}})
	time.Sleep(410 * time.Millisecond)
	// 11 checks at most (at 0 to 4 ms, then every 40 ms); fewer on a
	// loaded machine.
	if s := m.Statuses()[0]; s.Passes+s.Failures < 3 || s.Passes+s.Failures > 11 {
		t.Errorf("%d checks in 410 ms at a 40 ms interval", s.Passes+s.Failures)
	}
}

// TestMonitorClose stops checks in flight (a slow HTTP server, a DNS
// server that never answers, both with long timeouts) at once, and leaves
// no goroutine behind.
func TestMonitorClose(t *testing.T) {
	web := startHTTP(t, "127.0.0.1")
	silent := udpResponder(t, func([]byte) []byte { return nil })
	live := startTCP(t)
	before := runtime.NumGoroutine()

	slow, dnsCheck := Defaults(HTTP), Defaults(DNS)
	slow.Path = "/slow"
	for _, c := range []*Check{&slow, &dnsCheck} {
		c.Interval, c.Timeout = 10*time.Second, 10*time.Second
	}
	var targets []Target
	for i := range 100 {
		backend := fmt.Sprintf("10.1.0.%d", i)
		targets = append(targets, Target{Service: "tcp", Backend: backend, Addr: live.addr, Check: fastTCP()})
		if i < 5 {
			targets = append(targets,
				Target{Service: "slow", Backend: backend, Addr: web.addr, Check: slow},
				Target{Service: "silent", Backend: backend, Addr: silent, Check: dnsCheck})
		}
	}
	m := NewMonitor(Options{Logger: slog.New(slog.DiscardHandler), OnChange: func([]string) {}})
	m.Sync(targets)
	if n := runtime.NumGoroutine(); n < before+len(targets) {
		t.Fatalf("%d goroutines for %d targets (%d before)", n, len(targets), before)
	}
	waitFor(t, "checks", func() bool { return m.Statuses()[len(targets)-1].Passes > 0 })
	time.Sleep(100 * time.Millisecond) // slow checks in flight

	start := time.Now()
	m.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v", took)
	}
	m.Close() // again: nothing happens
	m.Sync(targets)
	// Server goroutines end as the checks' connections close.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestMonitorMany: a thousand targets start within the first tenth of
// their interval (give or take the scheduling of a thousand goroutines),
// spread over it.
func TestMonitorMany(t *testing.T) {
	if testing.Short() {
		t.Skip("many connections")
	}
	b := startTCP(t)
	m := NewMonitor(Options{Logger: slog.New(slog.DiscardHandler)})
	defer m.Close()
	check := Check{Kind: TCP, Interval: 2 * time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 3}
	var targets []Target
	for i := range 1000 {
		targets = append(targets, Target{Service: fmt.Sprintf("svc-%03d", i%100), Backend: fmt.Sprintf("10.2.%d.%d", i>>8, i&255), Addr: b.addr, Check: check})
	}
	start := time.Now()
	m.Sync(targets)
	var sts []Status
	deadline := time.Now().Add(8 * time.Second)
	for {
		sts = m.Statuses()
		states := map[string]int{}
		for _, s := range sts {
			states[s.State.String()+" "+s.LastError]++
		}
		if states["up "] == len(sts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 8 s: %v", states)
		}
		time.Sleep(10 * time.Millisecond)
	}
	first, last := sts[0].LastCheck, sts[0].LastCheck
	for _, s := range sts {
		if s.LastCheck.Before(first) {
			first = s.LastCheck
		}
		if s.LastCheck.After(last) {
			last = s.LastCheck
		}
	}
	// At most 200 ms apart, the tenth of the interval, and well before
	// a whole interval even when the machine is busy.
	if spread := last.Sub(first); spread < 10*time.Millisecond || last.Sub(start) > check.Interval*3/4 {
		t.Errorf("first checks from %v to %v after Sync", first.Sub(start), last.Sub(start))
	}
	if !slices.IsSortedFunc(sts, func(a, b Status) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), compareBackends(a.Backend, b.Backend))
	}) {
		t.Error("statuses not sorted")
	}
}

// TestNotifyCoalesces: changes during an OnChange call come in the next
// one, deduplicated and sorted.
func TestNotifyCoalesces(t *testing.T) {
	calls := make(chan []string)
	release := make(chan struct{})
	m := NewMonitor(Options{OnChange: func(s []string) {
		calls <- s
		<-release
	}})
	defer m.Close()
	m.notify("b")
	if got := <-calls; !slices.Equal(got, []string{"b"}) {
		t.Fatalf("first call %q", got)
	}
	m.notify("web", "dns")
	m.notify("web")
	release <- struct{}{}
	if got := <-calls; !slices.Equal(got, []string{"dns", "web"}) {
		t.Fatalf("second call %q", got)
	}
	close(release)
}
