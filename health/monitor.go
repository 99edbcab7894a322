package health

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// State of a target as the checks see it.
type State uint8

// The states of a target.
const (
	// Unknown is a target not checked yet: taken as up.
	Unknown State = iota
	Up
	Down
)

func (s State) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Up:
		return "up"
	case Down:
		return "down"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Status is what status output and metrics show of one target.
type Status struct {
	Target
	State State
	// Since is when State last changed: when the target was added (or
	// restarted by a changed check) while Unknown, else the start of the
	// check that changed it.
	Since time.Time
	// LastCheck is when the last check started; zero before the first.
	LastCheck time.Time
	LastOK    bool
	// LastError is why the last check failed, "" when it passed.
	LastError    string
	LastDuration time.Duration
	// Passes and Failures count the checks since the target was added.
	Passes, Failures uint64
}

// Options configure a Monitor.
type Options struct {
	// Logger receives the changes of state (Warn when a backend goes
	// down, Info when it comes back, Debug for the first pass of a new
	// target); nil means slog.Default.
	Logger *slog.Logger
	// OnChange is called, from the monitor's goroutine, after targets
	// changed state (by a check, or because Sync removed or restarted a
	// target that was down), with the names of the services concerned,
	// sorted and without duplicates. When it is called, Down already
	// answers the new states. Calls never overlap; changes that happen
	// during a call are reported by the next one. It must not block long
	// nor call Close.
	OnChange func(services []string)
}

// Monitor checks targets and holds the state of each.
type Monitor struct {
	log      *slog.Logger
	onChange func([]string)
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu      sync.RWMutex
	targets map[targetKey]*target
	closed  bool

	pendingMu sync.Mutex
	pending   map[string]struct{} // services changed, not yet told
	wake      chan struct{}
}

// targetKey identifies a target.
type targetKey struct {
	service string
	backend string
}

// target is one checked target and the goroutine checking it.
type target struct {
	Target
	cfg    Check // Target.Check with the defaults filled in
	ctx    context.Context
	cancel context.CancelFunc
	down   atomic.Bool // state == Down, read by Monitor.Down

	mu      sync.Mutex
	status  Status
	machine machine
	stopped bool // removed by Sync: results are dropped
}

// NewMonitor returns a monitor checking nothing until Sync.
func NewMonitor(opts Options) *Monitor {
	m := &Monitor{
		log:      opts.Logger,
		onChange: opts.OnChange,
		targets:  map[targetKey]*target{},
		pending:  map[string]struct{}{},
		wake:     make(chan struct{}, 1),
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if m.onChange != nil {
		m.wg.Add(1)
		go m.notifier()
	}
	return m
}

// Sync makes the monitor check exactly targets. New ones start (their
// first check at once, after a random offset of at most a tenth of the
// interval to spread many targets); targets no longer listed stop and are
// forgotten; targets whose Check or Addr changed restart from Unknown. A
// target is identified by (Service, Backend); of several with the same
// identity, the last counts. After Close, Sync does nothing.
func (m *Monitor) Sync(targets []Target) {
	want := make(map[targetKey]Target, len(targets))
	for _, t := range targets {
		want[targetKey{t.Service, t.Backend}] = t
	}
	var changed []string
	now := time.Now()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	for k, t := range m.targets {
		if w, ok := want[k]; ok && w.Addr == t.Addr && w.Check == t.Check {
			continue
		}
		if t.stop() {
			changed = append(changed, k.service)
		}
		delete(m.targets, k)
	}
	for k, w := range want {
		if _, ok := m.targets[k]; ok {
			continue
		}
		t := m.newTarget(w, now)
		m.targets[k] = t
		m.wg.Add(1)
		go m.run(t, rand.N(t.cfg.Interval/10+1))
	}
	m.mu.Unlock()
	m.notify(changed...)
}

// Down reports whether the checks hold the backend of the service down.
// A target not checked, or not checked yet, is not down.
func (m *Monitor) Down(service, backend string) bool {
	m.mu.RLock()
	t := m.targets[targetKey{service, backend}]
	m.mu.RUnlock()
	return t != nil && t.down.Load()
}

// Statuses returns every target's status, sorted by service then backend.
func (m *Monitor) Statuses() []Status {
	m.mu.RLock()
	out := make([]Status, 0, len(m.targets))
	for _, t := range m.targets {
		t.mu.Lock()
		out = append(out, t.status)
		t.mu.Unlock()
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), compareBackends(a.Backend, b.Backend))
	})
	return out
}

// Close stops every check and waits for the monitor's goroutines to end.
// OnChange is not called after Close returns. Statuses and Down keep
// answering the last states.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// Check.Interval and Check.Timeout are the Defaults' when zero; a timeout
// is never longer than the interval.
func (m *Monitor) newTarget(w Target, now time.Time) *target {
	c, d := w.Check, Defaults(w.Check.Kind)
	if c.Interval <= 0 {
		c.Interval = d.Interval
	}
	if c.Timeout <= 0 {
		c.Timeout = d.Timeout
	}
	c.Timeout = min(c.Timeout, c.Interval)
	if c.Rise <= 0 {
		c.Rise = d.Rise
	}
	if c.Fall <= 0 {
		c.Fall = d.Fall
	}
	t := &target{Target: w, cfg: c, status: Status{Target: w, Since: now}}
	t.ctx, t.cancel = context.WithCancel(m.ctx)
	return t
}

// stop ends t's checks and reports whether it was down.
func (t *target) stop() (wasDown bool) {
	t.mu.Lock()
	t.stopped = true
	wasDown = t.status.State == Down
	t.mu.Unlock()
	t.cancel()
	return wasDown
}

// run checks t until it stops: the first check after first, then each
// Interval after the previous one started (at once after one that took
// longer). Checks of one target never overlap.
func (m *Monitor) run(t *target, first time.Duration) {
	defer m.wg.Done()
	defer t.cancel()
	timer := time.NewTimer(first)
	defer timer.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		err := Probe(t.ctx, t.Addr, t.cfg)
		took := time.Since(start)
		if t.ctx.Err() != nil {
			return
		}
		m.record(t, start, took, err)
		timer.Reset(max(t.cfg.Interval-took, 0))
	}
}

// record takes the result of one check of t.
func (m *Monitor) record(t *target, start time.Time, took time.Duration, err error) {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	s := &t.status
	s.LastCheck, s.LastDuration, s.LastOK, s.LastError = start, took, err == nil, ""
	if err != nil {
		s.LastError = err.Error()
		s.Failures++
	} else {
		s.Passes++
	}
	old := s.State
	changed := t.machine.observe(err == nil, t.cfg.Rise, t.cfg.Fall)
	if changed {
		s.State, s.Since = t.machine.state, start
		t.down.Store(s.State == Down)
	}
	state, streak, why := s.State, max(t.machine.passes, t.machine.fails), s.LastError
	t.mu.Unlock()
	if !changed {
		return
	}
	attrs := []any{"service", t.Service, "backend", t.Backend, "probe", t.Addr, "check", t.cfg.Kind}
	switch {
	case state == Down:
		m.log.Warn("backend down", append(attrs, "failures", streak, "err", why)...)
	case old == Unknown:
		m.log.Debug("backend up", attrs...)
	default:
		m.log.Info("backend up", append(attrs, "passes", streak)...)
	}
	m.notify(t.Service)
}

// notify has OnChange called for services.
func (m *Monitor) notify(services ...string) {
	if m.onChange == nil || len(services) == 0 {
		return
	}
	m.pendingMu.Lock()
	for _, s := range services {
		m.pending[s] = struct{}{}
	}
	m.pendingMu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// notifier calls OnChange with the services changed since its last call,
// until Close.
func (m *Monitor) notifier() {
	defer m.wg.Done()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.wake:
		}
		m.pendingMu.Lock()
		pending := m.pending
		m.pending = map[string]struct{}{}
		m.pendingMu.Unlock()
		if len(pending) == 0 || m.ctx.Err() != nil {
			continue
		}
		m.onChange(slices.Sorted(maps.Keys(pending)))
	}
}

// machine turns check results into a state: the first result decides at
// once; then Fall failures in a row take an up target down, Rise passes
// in a row bring a down one up.
type machine struct {
	state         State
	passes, fails int // in a row
}

// observe takes one result and reports whether the state changed.
func (s *machine) observe(ok bool, rise, fall int) bool {
	if ok {
		s.passes, s.fails = s.passes+1, 0
	} else {
		s.passes, s.fails = 0, s.fails+1
	}
	old := s.state
	switch {
	case s.state == Unknown && ok, s.state == Down && s.passes >= rise:
		s.state = Up
	case s.state == Unknown, s.state == Up && s.fails >= fall:
		s.state = Down
	}
	return s.state != old
}

// compareBackends orders backend names by address, then port ("10.0.0.2"
// before "10.0.0.10"); a name that is not an address sorts as text.
func compareBackends(a, b string) int {
	pa, oka := parseBackend(a)
	pb, okb := parseBackend(b)
	if oka && okb {
		return pa.Compare(pb)
	}
	return strings.Compare(a, b)
}

func parseBackend(s string) (netip.AddrPort, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 0), true
	}
	return netip.AddrPort{}, false
}
