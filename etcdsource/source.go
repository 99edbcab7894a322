package etcdsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"sockmesh/registry"
)

// Timing of Run; the tests shorten some.
const (
	// listTimeout bounds a list of the prefix (and the authentication of
	// a new client).
	listTimeout = 2 * time.Second
	// probeEvery is how often Run asks etcd whether it still answers
	// while it follows the watch.
	probeEvery = time.Second
	// probeTimeout bounds a probe: an etcd that does not answer within it
	// is unreachable.
	probeTimeout = time.Second
	// Retries wait retryMin, doubling up to retryMax, counted from the
	// start of the failed attempt.
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
)

// Source implements registry.Source over an etcd key prefix: each key
// below the prefix holds one service document, named by the rest of the
// key (which may hold slashes).
type Source struct {
	cfg  Config
	name string
	log  *slog.Logger

	listTimeout, probeEvery, probeTimeout time.Duration
	retryMin, retryMax                    time.Duration
	// afterList, when set (by tests), runs after each full list is sent,
	// before the watch starts.
	afterList func(rev int64)
	// beforeResume, when set (by tests), runs when Run resumes the watch
	// after a failure, once etcd's history checked out, before the watch
	// starts; rev is the revision the registry has every change through.
	beforeResume func(rev int64)
}

var _ registry.Source = (*Source)(nil)

// New returns a Source for cfg; it connects when it runs. log may be nil.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("etcd registry %s: %w", cfg.URL(), err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Endpoints = append([]string(nil), cfg.Endpoints...)
	return &Source{
		cfg:          cfg,
		name:         cfg.URL(),
		log:          log.With("source", cfg.URL()),
		listTimeout:  listTimeout,
		probeEvery:   probeEvery,
		probeTimeout: probeTimeout,
		retryMin:     retryMin,
		retryMax:     retryMax,
	}, nil
}

// Name is the configuration's URL, e.g. etcd://10.0.0.1:2379/sockmesh/services.
func (s *Source) Name() string { return s.name }

// errListAgain ends a watch that cannot go on from where the registry
// stands (it fell behind a compaction, etcd's history is another, or a
// resumed watch never said it caught up): Run lists again at once,
// without calling the source stale for it.
var errListAgain = errors.New("listing again")

// Run sends the prefix's documents to out until ctx ends, and then returns
// ctx.Err(). It never gives up otherwise:
//
//   - It lists the prefix (within 2 s) and sends the list as a full
//     update, with the revision it was read at and the health "not
//     stale"; then it watches the prefix from the next revision and sends
//     each watch response's events as one update of changes (a put: the
//     value; a delete: nil) with the response's revision.
//   - It keeps the revision through which the registry has every change
//     (the list's, then each event's): after a failure it resumes the
//     watch from the next one, so getting back costs the changes missed,
//     not a list of every document. It lists instead when the watch
//     fell behind a compaction, or when etcd's history is not the one it
//     followed (another cluster, or a revision or raft term lower than
//     seen: an etcd wiped and started afresh; one restored from a
//     snapshot with etcdutl's --bump-revision and --mark-compacted, as
//     etcd advises, gets its watchers compacted).
//   - etcd's client re-dials a broken watch silently, so Run watches the
//     client's connection (stale as soon as gRPC can connect to no
//     endpoint: a killed etcd is seen within milliseconds) and probes
//     etcd every second with a linearizable read (a count of the
//     prefix's keys, within 1 s), for an etcd that hangs or lost its
//     quorum. The first probe that fails makes the source stale: a
//     false alarm costs one list, while waiting for a second failure
//     would let the registry believe a dead etcd for 3 s.
//   - Stale, it sends the health "stale" once, with the error, and tries
//     again until it succeeds: attempts start 100 ms apart, doubling up
//     to 2 s while they fail fast, and one that waited for its timeout is
//     followed at once, so an attempt always waits for the connection,
//     which gRPC re-dials every second at most. An attempt reads etcd's
//     current revision (a linearizable count of the prefix), resumes the
//     watch and asks it for progress; the source is "not stale" again
//     once the watch has delivered, or etcd's progress report says it
//     has, every change up to that revision (within 2 s, or it lists).
//   - An etcd unreachable at the start is the same: "stale" as soon as a
//     connection fails, or when the first list times out (2 s), and the
//     retries follow.
func (s *Source) Run(ctx context.Context, out chan<- registry.DocUpdate) error {
	st := &runState{Source: s, out: out, stale: true}
	var c *clientv3.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	wait := s.retryMin
	for {
		start := time.Now()
		var err error
		if c == nil {
			c, err = st.client()
		}
		if err == nil {
			err = st.sync(ctx, c)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errListAgain) {
			s.log.Info("etcd registry: cannot go on from the last revision", "err", err)
			st.through = 0
			continue
		}
		if err := st.setStale(ctx, err); err != nil {
			return err
		}
		// Retries back off while attempts fail fast (a watch that etcd
		// refuses right after a good list included), and start over after
		// one that lasted.
		if time.Since(start) > s.retryMax {
			wait = s.retryMin
		}
		s.log.Debug("etcd registry unreachable: trying again", "err", err, "in", max(0, wait-time.Since(start)))
		if err := sleep(ctx, wait-time.Since(start)); err != nil {
			return err
		}
		wait = min(2*wait, s.retryMax)
	}
}

// sync brings the registry up to date, by a list when it has nothing to
// go on from, else by resuming the watch, and keeps it so until the
// watch or a probe fails.
func (st *runState) sync(ctx context.Context, c *clientv3.Client) error {
	var upTo int64 // the revision to catch up with; 0: up to date
	if st.through == 0 {
		if err := st.list(ctx, c); err != nil {
			return err
		}
		if st.afterList != nil {
			st.afterList(st.through)
		}
	} else {
		if st.beforeResume != nil {
			st.beforeResume(st.through)
		}
		h, err := st.current(ctx, c)
		if err != nil {
			return err
		}
		upTo = h.Revision
	}
	return st.follow(ctx, c, upTo)
}

// client connects; authentication, when there is any, waits for etcd at
// most as long as a list.
func (st *runState) client() (*clientv3.Client, error) {
	cfg := st.cfg
	if cfg.DialTimeout == 0 || cfg.DialTimeout > st.listTimeout {
		cfg.DialTimeout = st.listTimeout
	}
	c, err := cfg.client(&st.tlsErr)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && st.tlsErr.get() != nil {
			return nil, st.cannotConnect()
		}
		return nil, fmt.Errorf("connect: %w", st.explain(err, st.listTimeout))
	}
	return c, nil
}

// runState is what one Run knows of what it told the registry.
type runState struct {
	*Source
	out    chan<- registry.DocUpdate
	stale  bool      // the registry was last told stale (or nothing yet)
	since  time.Time // when stale last changed
	tlsErr lastErr   // the client's last TLS failure

	// Where the registry stands in etcd's history: it has every change
	// through revision through (0: nothing yet), read from cluster at
	// raft term term or later.
	through       int64
	cluster, term uint64
}

// list lists the prefix and sends it as a full update, not stale; the
// registry then stands at the revision it was read at. A list waits for a connection (until its
// timeout); if gRPC finds no endpoint it can connect to meanwhile, the
// source is stale at once.
func (st *runState) list(ctx context.Context, c *clientv3.Client) error {
	lctx, cancel := context.WithTimeout(ctx, st.listTimeout)
	defer cancel()
	type result struct {
		docs []Doc
		h    *etcdserverpb.ResponseHeader
		err  error
	}
	done := make(chan result, 1)
	go func() {
		docs, h, err := list(lctx, c, st.cfg.Prefix)
		done <- result{docs, h, err}
	}()
	failed := connFailed(lctx, c)
	var r result
	for waiting := true; waiting; {
		select {
		case r = <-done:
			waiting = false
		case <-failed:
			failed = nil
			if err := st.setStale(ctx, st.cannotConnect()); err != nil {
				return err
			}
		}
	}
	if r.err != nil {
		return fmt.Errorf("list %s: %w", st.cfg.Prefix, st.explain(r.err, st.listTimeout))
	}
	u := registry.DocUpdate{Source: st.name, Full: true, Docs: make(map[string][]byte, len(r.docs)), Revision: r.h.Revision}
	for _, d := range r.docs {
		u.Docs[d.Key] = d.Value
	}
	if st.stale {
		st.stale, st.since = false, time.Now()
	}
	u.Health = &registry.SourceHealth{Stale: false, Since: st.since}
	if err := st.send(ctx, u); err != nil {
		return err
	}
	st.through, st.cluster, st.term = r.h.Revision, r.h.ClusterId, r.h.RaftTerm
	return nil
}

// current reads etcd's header to resume from, and checks that the watch
// can go on: a linearizable count of the prefix at the revision the
// registry stands at fails if etcd compacted it (the watch would need
// what follows) or never reached it. It also checks that etcd's history
// is the one the registry's documents come from: the same cluster, and no
// lower raft term than seen. A watch resumed on another history would lay
// its changes over documents that history never had.
//
// Compaction is checked here rather than left to the watch because etcd
// before 3.4.24 and 3.5.8 may send a progress report asked for ahead of
// the watch's own answers, the compaction included.
func (st *runState) current(ctx context.Context, c *clientv3.Client) (*etcdserverpb.ResponseHeader, error) {
	cctx, cancel := context.WithTimeout(ctx, st.listTimeout)
	defer cancel()
	resp, err := c.Get(cctx, st.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(st.through))
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return nil, fmt.Errorf("%w: etcd compacted revision %d, the last one followed", errListAgain, st.through)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return nil, fmt.Errorf("%w: etcd has not reached revision %d, the last one followed: its history is another", errListAgain, st.through)
	case err != nil:
		return nil, fmt.Errorf("read the revision: %w", st.explain(err, st.listTimeout))
	}
	h := resp.Header
	if h.ClusterId != st.cluster || h.Revision < st.through || h.RaftTerm < st.term {
		return nil, fmt.Errorf("%w: etcd's history is not the one followed (cluster %x, revision %d, raft term %d; followed %x through revision %d at term %d)",
			errListAgain, h.ClusterId, h.Revision, h.RaftTerm, st.cluster, st.through, st.term)
	}
	st.term = h.RaftTerm
	return h, nil
}

// follow watches the prefix from the revision after the registry's and
// sends the changes until the watch fails, a probe fails, or ctx ends.
// With upTo set, the source is stale until the watch has caught up with
// revision upTo.
func (st *runState) follow(ctx context.Context, c *clientv3.Client, upTo int64) error {
	// A member cut off from the others has no leader: with
	// WithRequireLeader its watches end instead of waiting silently.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	from := st.through + 1
	// Watch returns only once etcd confirmed the watch: a hung etcd
	// would hold it until ctx ends, so it is called aside, and the probes
	// go on meanwhile. watch is nil (never ready) until then.
	created := make(chan clientv3.WatchChan, 1)
	go func() { created <- c.Watch(wctx, st.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) }()
	var watch clientv3.WatchChan
	probe := time.NewTicker(st.probeEvery)
	defer probe.Stop()
	var caughtUp <-chan time.Time // fires if the watch never catches up
	if upTo > 0 {
		t := time.NewTimer(st.listTimeout)
		defer t.Stop()
		caughtUp = t.C
	}
	failed := connFailed(wctx, c)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-failed:
			return st.cannotConnect()
		case watch = <-created:
			created = nil
			if upTo > 0 {
				// A watch that has nothing to replay says nothing:
				// etcd's progress report is what tells it caught up.
				// Asked on wctx, the watch's own stream.
				if err := c.RequestProgress(wctx); err != nil {
					return fmt.Errorf("ask the watch's progress: %w", err)
				}
			}
		case resp, ok := <-watch:
			if !ok {
				return errors.New("watch closed")
			}
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				return fmt.Errorf("%w: the watch from revision %d fell behind a compaction up to %d", errListAgain, from, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch %s: %w", st.cfg.Prefix, err)
			}
			st.term = max(st.term, resp.Header.RaftTerm)
			u := registry.DocUpdate{Source: st.name, Docs: map[string][]byte{}, Revision: resp.Header.Revision}
			var through int64
			for _, ev := range resp.Events {
				through = max(through, ev.Kv.ModRevision)
				key := strings.TrimPrefix(string(ev.Kv.Key), st.cfg.Prefix)
				if key == "" {
					continue // the prefix's own key
				}
				switch ev.Type {
				case mvccpb.PUT:
					u.Docs[key] = value(ev.Kv.Value)
				case mvccpb.DELETE:
					u.Docs[key] = nil
				}
			}
			if len(u.Docs) > 0 {
				if err := st.send(ctx, u); err != nil {
					return err
				}
			}
			// Only events move the registry's revision on. A response's
			// header may be ahead of its events (etcd sends a watch that
			// catches up in batches with the current revision), and
			// before 3.4.24 and 3.5.8 a progress report asked for could
			// overtake the replay.
			st.through = max(st.through, through)
			if upTo > 0 && (st.through >= upTo || resp.IsProgressNotify() && resp.Header.Revision >= upTo) {
				upTo, caughtUp = 0, nil
				if err := st.setFresh(ctx); err != nil {
					return err
				}
			}
		case <-caughtUp:
			return fmt.Errorf("%w: the watch resumed from revision %d did not catch up with %d within %v", errListAgain, from, upTo, st.listTimeout)
		case <-probe.C:
			pctx, cancel := context.WithTimeout(ctx, st.probeTimeout)
			_, err := c.Get(pctx, st.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			cancel()
			if err != nil {
				return fmt.Errorf("probe: %w", st.explain(err, st.probeTimeout))
			}
		}
	}
}

// setStale tells the registry the source is stale, unless it was told so
// already.
func (st *runState) setStale(ctx context.Context, err error) error {
	if st.stale && !st.since.IsZero() {
		return nil
	}
	st.stale, st.since = true, time.Now()
	return st.send(ctx, registry.DocUpdate{
		Source: st.name,
		Health: &registry.SourceHealth{Stale: true, Err: err.Error(), Since: st.since},
	})
}

// setFresh tells the registry the source is current again, unless it
// was told so already.
func (st *runState) setFresh(ctx context.Context) error {
	if !st.stale {
		return nil
	}
	st.stale, st.since = false, time.Now()
	return st.send(ctx, registry.DocUpdate{Source: st.name, Health: &registry.SourceHealth{Stale: false, Since: st.since}})
}

// send sends u unless ctx ends first.
func (st *runState) send(ctx context.Context, u registry.DocUpdate) error {
	select {
	case st.out <- u:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// explain turns a timeout into what it means here.
func (s *Source) explain(err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from %s within %v", strings.Join(s.cfg.Endpoints, ","), timeout)
	}
	return err
}

// connFailed returns a channel closed when the client's connection is in
// gRPC's TRANSIENT_FAILURE: it could connect to none of the endpoints
// (refused, unreachable, a failed handshake). An etcd that is killed is
// seen so within milliseconds; one that hangs only by the probe.
func connFailed(ctx context.Context, c *clientv3.Client) <-chan struct{} {
	ch := make(chan struct{})
	conn := c.ActiveConnection()
	go func() {
		for s := conn.GetState(); s != connectivity.TransientFailure; s = conn.GetState() {
			if !conn.WaitForStateChange(ctx, s) {
				return
			}
		}
		close(ch)
	}()
	return ch
}

func (st *runState) cannotConnect() error {
	if err := st.tlsErr.get(); err != nil {
		return fmt.Errorf("cannot connect to %s: %w", strings.Join(st.cfg.Endpoints, ","), err)
	}
	return fmt.Errorf("cannot connect to %s", strings.Join(st.cfg.Endpoints, ","))
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
