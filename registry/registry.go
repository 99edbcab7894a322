// Package registry turns a directory of service files into the datapath's
// service set and keeps the two in step: it reads services.d/, validates
// every file alone and against the others, derives VIPs, applies the result
// through the lb package, and watches the directory for changes. A bad file
// never costs anything that works: its last good version stays live.
package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"sockmesh/lb"
	"sockmesh/servicefile"
)

// Applier is the datapath as the registry uses it (*lb.Datapath): Apply
// converges to a whole set (at start and after a failure), Update changes
// only what one batch of file changes touched.
type Applier interface {
	Apply([]lb.Service) (lb.ApplyStats, error)
	Update(put []lb.Service, remove []lb.ServiceKey) (lb.ApplyStats, error)
}

// Options configure a Registry.
type Options struct {
	// Dir is the services directory. It need not exist yet. Empty means
	// none: services come from Sources only.
	Dir string
	// Sources are where else services come from (an etcd prefix).
	Sources []Source
	// Ranges are the VIP ranges; zero means DefaultRanges.
	Ranges Ranges
	// Limits are the datapath map sizes; zero means lb.DefaultLimits.
	Limits lb.Limits
	// Logger receives changes and problems; nil means slog.Default.
	Logger *slog.Logger
	// OnApply, if set, is called with each new snapshot once the datapath
	// serves it (never before), from the registry's goroutine.
	OnApply func(*Snapshot)
	// LastGood are the texts of the versions a previous run served, by
	// file path (Service.Source of its last snapshot). A file found in
	// error by the first read keeps serving its last good version, as it
	// would have had the daemon not restarted.
	LastGood map[string][]byte
	// Health, if set, holds backends down (failed health checks): the
	// datapath gets them as down. Call Registry.HealthChanged when its
	// answers change.
	Health HealthSource
}

// HealthSource says which backends the health checks hold down.
type HealthSource interface {
	Down(service, backend string) bool
}

func (o *Options) setDefaults() error {
	if o.Dir == "" && len(o.Sources) == 0 {
		return errors.New("no services directory and no other source")
	}
	if o.Dir != "" {
		o.Dir = filepath.Clean(o.Dir)
	}
	if o.Ranges == (Ranges{}) {
		o.Ranges = DefaultRanges
	}
	if err := o.Ranges.Validate(); err != nil {
		return err
	}
	if o.Limits == (lb.Limits{}) {
		l, err := lb.DefaultLimits()
		if err != nil {
			return err
		}
		o.Limits = l
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// errorGrace is how long a file that fails to parse may still be in the
// middle of being written in place: its error is held back that long after
// its last modification, so a half-written file is not reported. Valid
// contents are never held back.
const errorGrace = 100 * time.Millisecond

// retryDelay is how long the registry waits before applying again after
// the datapath refused a write.
const retryDelay = time.Second

// Registry serves one services directory into a datapath.
type Registry struct {
	opts Options
	dp   Applier
	log  *slog.Logger

	files map[string]*fileState
	// dirErr is why the directory cannot be read (missing, bad owner or
	// mode); while set, nothing is applied and the live set stays.
	dirErr *servicefile.Error
	// recheck holds files to read again once their error grace is over.
	recheck map[string]time.Time
	// dirty means the last apply failed and must be retried.
	dirty bool
	// model is the accepted set as applied; nil forces a full rebuild and
	// a whole-set Apply (at start, and after a failed apply).
	model *model
	// pending are the files changed since the last apply.
	pending map[string]bool
	gen     uint64

	snap      atomic.Pointer[Snapshot]
	readyOnce sync.Once
	ready     chan struct{}

	// reload asks Run to read everything again (Reload).
	reload chan struct{}

	// pause, when set by a test, is waited on before each batch of events.
	pause func()

	// healthMu guards healthChanged: services whose backends' health
	// changed since Run last looked; healthSig wakes Run.
	healthMu      sync.Mutex
	healthChanged map[string]bool
	healthSig     chan struct{}

	// docs carries the sources' updates to Run; sources holds what the
	// registry knows of each.
	docs    chan DocUpdate
	sources map[string]*SourceStatus
}

// New makes a registry for opts.Dir that applies to dp.
func New(opts Options, dp Applier) (*Registry, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("create registry: %w", err)
	}
	r := &Registry{
		opts:    opts,
		dp:      dp,
		log:     opts.Logger,
		files:   map[string]*fileState{},
		recheck: map[string]time.Time{},
		pending: map[string]bool{},
		ready:   make(chan struct{}),
		reload:  make(chan struct{}, 1),

		healthChanged: map[string]bool{},
		healthSig:     make(chan struct{}, 1),
		docs:          make(chan DocUpdate, 64),
		sources:       map[string]*SourceStatus{},
	}
	for _, s := range opts.Sources {
		r.sources[s.Name()] = &SourceStatus{Name: s.Name(), SourceHealth: SourceHealth{Stale: true, Err: "not read yet", Since: time.Now()}}
	}
	r.snap.Store(&Snapshot{Dir: opts.Dir})
	return r, nil
}

// HealthChanged tells Run that the health of some backends of the named
// services changed: their datapath services are applied again, as a
// changed file would be. Safe from any goroutine; never blocks.
func (r *Registry) HealthChanged(services []string) {
	r.healthMu.Lock()
	for _, s := range services {
		r.healthChanged[s] = true
	}
	r.healthMu.Unlock()
	select {
	case r.healthSig <- struct{}{}:
	default:
	}
}

// takeHealthChanged marks the files of the services whose health changed
// as pending.
func (r *Registry) takeHealthChanged() bool {
	r.healthMu.Lock()
	names := r.healthChanged
	r.healthChanged = map[string]bool{}
	r.healthMu.Unlock()
	if r.model == nil {
		return len(names) > 0 // a full apply reads every health state
	}
	changed := false
	for name := range names {
		if path, ok := r.model.asm.names[name]; ok {
			r.pending[path] = true
			changed = true
		}
	}
	return changed
}

// Snapshot returns what is served now.
func (r *Registry) Snapshot() *Snapshot { return r.snap.Load() }

// Ready is closed after the first apply: the datapath serves the directory
// as it was when Run started (or the directory is missing and reported).
func (r *Registry) Ready() <-chan struct{} { return r.ready }

// Reload makes Run read the whole directory again, every file included
// whether or not it changed, and converge the datapath to it in full (the
// daemon's SIGHUP).
func (r *Registry) Reload() {
	select {
	case r.reload <- struct{}{}:
	default: // one is pending already
	}
}

// Check reads a services directory and validates it without a datapath:
// what Run would serve, and every problem it would report.
func Check(opts Options) (*Snapshot, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("check services: %w", err)
	}
	r := &Registry{opts: opts, log: slog.New(slog.DiscardHandler), files: map[string]*fileState{}, recheck: map[string]time.Time{}, pending: map[string]bool{}}
	r.scanAll(false)
	if r.dirErr != nil {
		return nil, fmt.Errorf("check services: %w", r.dirErr)
	}
	m := newModel(opts.Ranges, opts.Limits)
	m.update(r.files, slices.Collect(maps.Keys(r.files)))
	snap := m.snapshot(opts.Dir, r.files)
	if err := lb.Validate(snap.Datapath(), opts.Limits); err != nil {
		snap.Errors = append(snap.Errors, &servicefile.Error{File: opts.Dir, Msg: err.Error()})
	}
	return snap, nil
}

// Run serves the directory until ctx ends: a full read and apply, then a
// watch that applies each change as it lands.
func (r *Registry) Run(ctx context.Context) error {
	w, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return fmt.Errorf("watch %s: %w", r.opts.Dir, err)
	}
	defer w.Close()
	wt := &watches{w: w, dir: r.opts.Dir}
	if r.opts.Dir != "" {
		wt.refresh()
	}
	r.seedSources()
	r.startSources(ctx)
	r.scanAll(true)
	if r.dirErr != nil && len(r.opts.Sources) > 0 {
		r.seedDir()
	}
	r.firstDocs(ctx)
	r.apply()
	// Last good versions are for what the first read finds broken (or is
	// still waiting to judge), not for files that turn up later.
	r.dropLastGood()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		r.armTimer(timer)
		var b batch
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch services: watcher closed")
			}
			b.add(wt, ev)
		case _, ok := <-w.Errors:
			if !ok {
				return errors.New("watch services: watcher closed")
			}
			b.fail()
		case <-timer.C:
			b.due = true
		case <-r.healthSig:
			b.health = true
		case u := <-r.docs:
			b.docs = append(b.docs, u)
		case <-r.reload:
			r.log.Info("reloading: reading every service file again")
			for _, f := range r.files {
				f.id = fileID{} // read it whatever its identity
			}
			r.model = nil // and converge the datapath in full
			b.rescan = true
		}
		// Take whatever else is already queued: a burst becomes one batch,
		// while a lone change goes through at once, with no debounce.
	drain:
		for {
			select {
			case ev := <-w.Events:
				b.add(wt, ev)
			case <-w.Errors:
				b.fail()
			case u := <-r.docs:
				b.docs = append(b.docs, u)
			default:
				break drain
			}
		}
		if r.pause != nil {
			r.pause()
			b.drainAll(wt)
		}
		r.handle(wt, &b)
	}
}

// batch is a set of events handled together.
type batch struct {
	paths  map[string]bool
	rescan bool // the directory (or an ancestor) changed, or events were lost
	due    bool // a recheck or retry timer fired
	health bool // backends' health changed (HealthChanged)
	docs   []DocUpdate
}

func (b *batch) add(wt *watches, ev fsnotify.Event) {
	switch wt.classify(ev.Name) {
	case inDir:
		if b.paths == nil {
			b.paths = map[string]bool{}
		}
		b.paths[ev.Name] = true
	case onPath:
		b.rescan = true
	}
}

// fail marks a watcher error: an overflow lost events, and any other
// error may have too. Either way a full read puts things right.
func (b *batch) fail() { b.rescan = true }

func (b *batch) drainAll(wt *watches) {
	for {
		select {
		case ev := <-wt.w.Events:
			b.add(wt, ev)
		case <-wt.w.Errors:
			b.fail()
		default:
			return
		}
	}
}

func (r *Registry) handle(wt *watches, b *batch) {
	changed := false
	if b.rescan {
		r.log.Debug("reading the whole services directory", "dir", r.opts.Dir)
		wt.refresh()
		changed = r.scanAll(true)
		r.dropLastGood()
	} else {
		now := time.Now()
		for path, at := range r.recheck {
			if b.due && !now.Before(at) {
				b.paths = mapSet(b.paths, path)
			}
		}
		for path := range b.paths {
			changed = r.scanFile(path, true) || changed
		}
	}
	if b.health && r.takeHealthChanged() {
		changed = true
	}
	for _, u := range b.docs {
		changed = r.takeDocs(u) || changed
	}
	if changed || r.dirty || r.model == nil {
		r.apply()
	}
}

func mapSet(m map[string]bool, k string) map[string]bool {
	if m == nil {
		m = map[string]bool{}
	}
	m[k] = true
	return m
}

func (r *Registry) armTimer(t *time.Timer) {
	var next time.Time
	for _, at := range r.recheck {
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if r.dirty {
		if at := time.Now().Add(retryDelay); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	t.Stop()
	if !next.IsZero() {
		t.Reset(max(time.Until(next), 0))
	}
}

// scanAll reads the directory and every file whose identity changed. It
// reports whether anything the registry knows changed.
func (r *Registry) scanAll(grace bool) bool {
	dir := r.opts.Dir
	if dir == "" {
		return false
	}
	var dirErr *servicefile.Error
	entries, err := os.ReadDir(dir)
	if err == nil {
		err = checkDir(dir)
	}
	if err != nil {
		msg := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "the services directory does not exist (yet): waiting for it; what is live stays live"
		}
		dirErr = &servicefile.Error{File: dir, Msg: msg}
	}
	changed := !sameError(r.dirErr, dirErr)
	r.dirErr = dirErr
	if dirErr != nil {
		return changed
	}
	onDisk := map[string]bool{}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if !IsServiceFile(e.Name()) {
			r.log.Debug("ignoring a file that is not *.yaml or *.yml", "file", path)
			continue
		}
		onDisk[path] = true
		changed = r.scanFile(path, grace) || changed
	}
	for path, f := range r.files {
		if f.source == "" && !onDisk[path] {
			delete(r.files, path)
			delete(r.recheck, path)
			r.pending[path] = true
			changed = true
		}
	}
	return changed
}

func sameError(a, b *servicefile.Error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// scanFile brings what the registry knows of one file up to date, reading
// it only when its identity (inode, size, times, owner, mode) changed.
func (r *Registry) scanFile(path string, grace bool) bool {
	if filepath.Dir(path) != r.opts.Dir || !IsServiceFile(filepath.Base(path)) {
		return false
	}
	delete(r.recheck, path)
	id, err := statFile(path)
	f := r.files[path]
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, errNotRegular):
		if f == nil {
			return false
		}
		delete(r.files, path)
		r.pending[path] = true
		return true
	case err != nil:
		// Unreadable, or owner or mode refused: the file is in error.
		errs := []*servicefile.Error{{File: path, Msg: err.Error()}}
		if f == nil {
			f = &fileState{live: r.lastGood(path, errs)}
			r.files[path] = f
		}
		f.id, f.cur, f.errs = id, nil, errs
		r.pending[path] = true
		return true
	case f != nil && f.id == id:
		return false
	}
	data, err := readFile(path, servicefile.MaxSize)
	var svc *servicefile.Service
	var errs []*servicefile.Error
	if err != nil {
		errs = []*servicefile.Error{{File: path, Msg: fmt.Sprintf("read: %v", err)}}
	} else if svc, errs = parse(path, data); errs != nil {
		// A file being written in place may be caught half-written: give
		// the writer errorGrace before reporting it.
		if until := time.Unix(0, id.mtime).Add(errorGrace); grace && time.Now().Before(until) {
			r.recheck[path] = until
			return false
		}
	}
	if f == nil {
		f = &fileState{live: r.lastGood(path, errs)}
		r.files[path] = f
	}
	f.id, f.cur, f.errs = id, svc, errs
	r.pending[path] = true
	return true
}

// dropLastGood forgets the last good versions once the directory has been
// read (they are for what the first read finds broken, or is still
// waiting to judge, not for files that turn up later). While the
// directory is missing they are kept for the read that finds it.
func (r *Registry) dropLastGood() {
	if r.dirErr != nil {
		return
	}
	for path := range r.opts.LastGood {
		if _, waiting := r.recheck[path]; !waiting {
			delete(r.opts.LastGood, path)
		}
	}
}

// parse parses a document, with its errors as the registry keeps them.
func parse(path string, data []byte) (*servicefile.Service, []*servicefile.Error) {
	svc, err := servicefile.Parse(path, data)
	if err == nil {
		return svc, nil
	}
	var es servicefile.Errors
	if errors.As(err, &es) {
		return nil, es
	}
	return nil, []*servicefile.Error{{File: path, Msg: err.Error()}}
}

// lastGood is the version a previous run served of a file now in error,
// or nil.
func (r *Registry) lastGood(path string, errs []*servicefile.Error) *servicefile.Service {
	src, ok := r.opts.LastGood[path]
	delete(r.opts.LastGood, path)
	if len(errs) == 0 || !ok {
		return nil
	}
	svc, err := servicefile.Parse(path, src)
	if err != nil {
		r.log.Warn("ignoring the last good version a previous run left", "file", path, "err", err)
		return nil
	}
	r.log.Info("file in error: serving the version the previous run served", "file", path)
	return svc
}

// apply assembles the desired set and hands it to the datapath. On
// success the snapshot is published; on failure the live set stays and
// the apply is retried.
func (r *Registry) apply() {
	defer r.readyOnce.Do(func() { close(r.ready) })
	prev := r.snap.Load()
	if r.dirErr != nil && len(r.opts.Sources) == 0 && (r.model == nil || len(r.pending) == 0) {
		// Keep serving what is live; report why nothing is read. (With
		// the directory unreadable nothing is scanned, so what is
		// pending is health changes, applied below. With other sources
		// the directory's files stay as they were and the sources'
		// documents apply.)
		s := *prev
		s.Stats = lb.ApplyStats{} // nothing was written
		s.Errors = append(slices.Clone(withoutFile(prev.Errors, r.opts.Dir)), r.dirErr)
		r.publish(&s, prev)
		return
	}
	full := r.model == nil
	paths := slices.Collect(maps.Keys(r.pending))
	if full {
		r.model = newModel(r.opts.Ranges, r.opts.Limits)
		r.model.health = r.opts.Health
		paths = slices.Collect(maps.Keys(r.files))
	}
	clear(r.pending)
	dl := r.model.update(r.files, paths)
	snap := r.model.snapshot(r.opts.Dir, r.files)
	if r.dirErr != nil {
		snap.Errors = append(snap.Errors, r.dirErr)
		sortErrors(snap.Errors)
	}
	start := time.Now()
	var st lb.ApplyStats
	var err error
	if full {
		st, err = r.dp.Apply(snap.Datapath())
	} else {
		put, remove := dl.change()
		st, err = r.dp.Update(put, remove)
	}
	if err != nil {
		r.dirty = true
		r.model = nil // what is applied is unknown: converge in full next time
		r.log.Error("apply services: the datapath refused the change; what was live stays live, retrying", "err", err)
		s := *prev
		// Only what this attempt wrote: backends it took out before
		// the failure are gone all the same.
		s.Stats = lb.ApplyStats{Gone: st.Gone}
		s.Errors = append(slices.Clone(withoutFile(prev.Errors, r.opts.Dir)), &servicefile.Error{File: r.opts.Dir, Msg: fmt.Sprintf("apply to the datapath: %v", err)})
		r.publish(&s, prev)
		return
	}
	r.dirty = false
	snap.Applied = time.Now()
	snap.ApplyTime = snap.Applied.Sub(start)
	snap.Stats = st
	for _, path := range dl.paths {
		if f := r.files[path]; f != nil {
			f.live = r.model.accepted[path]
			if doc := r.model.contrib[path]; doc != nil {
				f.live = doc
			}
		}
	}
	if st.Added+st.Updated+st.Removed > 0 {
		r.log.Info("services applied", "services", len(snap.Services), "added", st.Added, "updated", st.Updated, "removed", st.Removed, "took", snap.ApplyTime)
	}
	r.publish(snap, prev)
}

func withoutFile(es []*servicefile.Error, file string) []*servicefile.Error {
	return slices.DeleteFunc(slices.Clone(es), func(e *servicefile.Error) bool { return e.File == file })
}

// publish stores s, logs what got broken or fixed, and tells OnApply.
func (r *Registry) publish(s, prev *Snapshot) {
	r.gen++
	s.Generation = r.gen
	s.Sources = r.sourceStatuses()
	sortErrors(s.Errors)
	old := map[string]bool{}
	for _, e := range prev.Errors {
		old[e.Error()] = true
	}
	now := map[string]bool{}
	for _, e := range s.Errors {
		now[e.Error()] = true
		if !old[e.Error()] {
			r.log.Warn("service file refused; its last good version stays live", "err", e.Error())
		}
	}
	fixed := map[string]bool{}
	for _, e := range prev.Errors {
		_, exists := r.files[e.File]
		if exists && !now[e.Error()] && !fixed[e.File] && !slices.ContainsFunc(s.Errors, func(x *servicefile.Error) bool { return x.File == e.File }) {
			fixed[e.File] = true
			r.log.Info("service file is fine again", "file", e.File)
		}
	}
	oldC := map[string]bool{}
	for _, c := range prev.Collisions {
		oldC[c.String()] = true
	}
	for _, c := range s.Collisions {
		if !oldC[c.String()] {
			r.log.Warn("derived VIP collision", "detail", c.String())
		}
	}
	r.snap.Store(s)
	if r.opts.OnApply != nil {
		r.opts.OnApply(s)
	}
}

// startSources runs every source, feeding r.docs until ctx ends.
func (r *Registry) startSources(ctx context.Context) {
	for _, s := range r.opts.Sources {
		go func() {
			if err := s.Run(ctx, r.docs); err != nil && ctx.Err() == nil {
				r.log.Error("registry source stopped", "source", s.Name(), "err", err)
			}
		}()
	}
}

// firstWait bounds how long the first apply waits for the sources' first
// word (a list, or news that they cannot be reached).
const firstWait = 5 * time.Second

// firstDocs takes the sources' first updates before the first apply, so a
// daemon announces itself ready with the fleet's services, not without
// them; a source that says nothing within firstWait is left stale.
func (r *Registry) firstDocs(ctx context.Context) {
	heard := map[string]bool{}
	deadline := time.NewTimer(firstWait)
	defer deadline.Stop()
	for len(heard) < len(r.opts.Sources) {
		select {
		case u := <-r.docs:
			r.takeDocs(u)
			heard[u.Source] = true
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// takeDocs brings the files of one source up to date with an update and
// reports whether anything the registry knows changed.
func (r *Registry) takeDocs(u DocUpdate) bool {
	st := r.sources[u.Source]
	if st == nil {
		return false
	}
	changed := false
	if h := u.Health; h != nil && (h.Stale != st.Stale || h.Err != st.Err) {
		st.SourceHealth = *h
		if h.Stale {
			r.log.Warn("registry source unreachable: serving the last documents it gave", "source", u.Source, "err", h.Err)
		} else {
			r.log.Info("registry source reachable", "source", u.Source)
		}
		changed = true
	}
	if u.Revision > st.Revision {
		st.Revision = u.Revision
	}
	// st.Docs follows the source's files: recounted on a full list,
	// moved by one as documents come and go.
	if u.Full {
		st.Docs = 0
		for path, f := range r.files {
			if f.source != u.Source {
				continue
			}
			if u.Docs[strings.TrimPrefix(path, u.Source+"/")] == nil {
				delete(r.files, path)
				r.pending[path] = true
				changed = true
				continue
			}
			st.Docs++
		}
	}
	for key, data := range u.Docs {
		path := DocPath(u.Source, key)
		f := r.files[path]
		if data == nil {
			if f != nil {
				delete(r.files, path)
				r.pending[path] = true
				changed = true
				st.Docs--
			}
			continue
		}
		if f != nil && f.data != nil && bytes.Equal(f.data, data) {
			continue
		}
		svc, errs := parse(path, data)
		if f == nil {
			f = &fileState{source: u.Source}
			r.files[path] = f
			st.Docs++
		}
		f.data, f.cur, f.errs = bytes.Clone(data), svc, errs
		r.pending[path] = true
		changed = true
	}
	return changed
}

// seedSources puts the last good documents of each source (from a
// previous run's state) in place until the source lists its own: a
// daemon restarted while etcd is down keeps serving the fleet's services.
func (r *Registry) seedSources() {
	for path, src := range r.opts.LastGood {
		for name := range r.sources {
			if !strings.HasPrefix(path, name+"/") {
				continue
			}
			svc, err := servicefile.Parse(path, src)
			if err != nil {
				r.log.Warn("ignoring the last good version a previous run left", "file", path, "err", err)
				continue
			}
			// Served by the pinned datapath already: live as well, so a
			// broken version listed later keeps this one.
			r.files[path] = &fileState{source: name, data: bytes.Clone(src), cur: svc, live: svc}
			r.pending[path] = true
			r.sources[name].Docs++
			delete(r.opts.LastGood, path)
		}
	}
}

// seedDir keeps the directory's services of the previous run while the
// directory cannot be read at start and other sources are applied: without
// it the first full apply would drop them (with no other source, nothing
// is applied until the directory can be read).
func (r *Registry) seedDir() {
	for path, src := range r.opts.LastGood {
		if filepath.Dir(path) != r.opts.Dir {
			continue
		}
		svc, err := servicefile.Parse(path, src)
		if err != nil {
			continue
		}
		r.files[path] = &fileState{cur: svc, live: svc}
		r.pending[path] = true
	}
}

// sourceStatuses lists the sources' states, by name.
func (r *Registry) sourceStatuses() []SourceStatus {
	var out []SourceStatus
	for _, st := range r.sources {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b SourceStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}
