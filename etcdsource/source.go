package etcdsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
//     false alarm costs one resumption, while waiting for a second
//     failure would let the registry believe a dead etcd for 3 s.
//   - Stale, it sends the health "stale" once, with the error, and tries
//     again until it succeeds: attempts start 100 ms apart, doubling up
//     to 2 s while they fail fast, and one that waited for its timeout is
//     followed at once, so an attempt always waits for the connection,
//     which gRPC re-dials every second at most. An attempt reads where
//     etcd stands (see current) and resumes the watch; the source is "not
//     stale" again once the registry holds what etcd held then (at once
//     if nothing changed; within 2 s, or it lists).
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
			// A pause, so that compactions in a row cannot make it list
			// without end.
			if err := sleep(ctx, s.retryMin); err != nil {
				return err
			}
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
	var upTo *catchUp // what to catch up with; nil: up to date
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
		target, err := st.current(ctx, c)
		if err != nil {
			return err
		}
		if st.reached(target) {
			// Nothing to wait for: the documents are etcd's already, and
			// what happened meanwhile came to nothing (see reached): the
			// watch starts after it.
			st.through = target.rev
			if err := st.setFresh(ctx); err != nil {
				return err
			}
		} else {
			upTo = &target
		}
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
	// raft term term or later; keys are its documents' keys with the
	// revision of their last change.
	through       int64
	cluster, term uint64
	keys          map[string]int64
}

// catchUp is where etcd stood when the source came back: what a resumed
// watch must deliver before the registry is current.
type catchUp struct {
	rev int64 // etcd's revision then
	// lastPut is the last change of a document alive then, if it came
	// after the registry's revision (else 0); count is how many documents
	// were alive then.
	lastPut, count int64
}

// reached says whether the registry holds the documents etcd held at
// target, as long as no event after target.rev was applied. Every
// document alive then was last written at lastPut or before, so past
// lastPut the registry has each of them, with its value; what the watch
// has still to deliver up to target.rev can only be deletions, and
// writes of documents deleted again by then. So the registry has them
// all and no more exactly when it has as many. Those writes and deletions
// still to come would only bring back, for a moment, documents etcd
// deleted before it came back: once reached, the registry stands at
// target.rev and the watch skips them.
func (st *runState) reached(target catchUp) bool {
	return st.through >= target.lastPut && int64(len(st.keys)) == target.count
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
	keys := make(map[string]int64, len(r.docs))
	for _, d := range r.docs {
		u.Docs[d.Key], keys[d.Key] = d.Value, d.ModRevision
	}
	if st.stale {
		st.stale, st.since = false, time.Now()
	}
	u.Health = &registry.SourceHealth{Stale: false, Since: st.since}
	if err := st.send(ctx, u); err != nil {
		return err
	}
	st.through, st.cluster, st.term, st.keys = r.h.Revision, r.h.ClusterId, r.h.RaftTerm, keys
	return nil
}

// current reads where etcd stands, to resume from, in one transaction
// (so at one revision): how many documents there are, and the document
// written last if that was after the registry's revision. In the same
// transaction it checks that the watch can go on from the registry's
// revision: reading it fails if etcd compacted it (the watch would need
// what follows) or never reached it. And it checks that etcd's history
// is the one the registry's documents come from, or a watch resumed on
// another would lay its changes over documents that history never had:
// the same cluster, no lower raft term, and at the registry's revision
// as many documents as the registry has, the last one it saw written
// at the same revision. An etcd wiped and started afresh keeps
// its cluster id (it derives from the member's name and addresses).
//
// No progress report is asked of the watch: etcd before 3.4.24 and 3.5.8
// answers at once, ahead of a replay it has not sent yet, and the client
// then resumes after that revision if the stream breaks; from 3.4.24 to
// 3.4.30 and 3.5.8 to 3.5.12 it may not answer at all.
func (st *runState) current(ctx context.Context, c *clientv3.Client) (catchUp, error) {
	cctx, cancel := context.WithTimeout(ctx, st.listTimeout)
	defer cancel()
	// The documents' range: the prefix's own key is none.
	from, end := st.cfg.Prefix+"\x00", clientv3.WithRange(clientv3.GetPrefixRangeEnd(st.cfg.Prefix))
	ops := []clientv3.Op{
		clientv3.OpGet(from, end, clientv3.WithCountOnly(), clientv3.WithRev(st.through)),
		clientv3.OpGet(from, end, clientv3.WithCountOnly()),
		// Not WithCountOnly: etcd counts before it filters by revision.
		clientv3.OpGet(from, end, clientv3.WithKeysOnly(), clientv3.WithMinModRev(st.through+1),
			clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1)),
	}
	var last string
	for k, rev := range st.keys {
		if last == "" || rev > st.keys[last] {
			last = k
		}
	}
	if last != "" {
		ops = append(ops, clientv3.OpGet(st.cfg.Prefix+last, clientv3.WithKeysOnly(), clientv3.WithRev(st.through)))
	}
	resp, err := c.Txn(cctx).Then(ops...).Commit()
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return catchUp{}, fmt.Errorf("%w: etcd compacted revision %d, the last one followed", errListAgain, st.through)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return catchUp{}, fmt.Errorf("%w: etcd has not reached revision %d, the last one followed: its history is another", errListAgain, st.through)
	case err != nil:
		return catchUp{}, fmt.Errorf("read the revision: %w", st.explain(err, st.listTimeout))
	}
	h := resp.Header
	then := resp.Responses[0].GetResponseRange()
	same := h.ClusterId == st.cluster && h.Revision >= st.through && h.RaftTerm >= st.term && then.Count == int64(len(st.keys))
	if last != "" {
		kvs := resp.Responses[3].GetResponseRange().Kvs
		same = same && len(kvs) == 1 && kvs[0].ModRevision == st.keys[last]
	}
	if !same {
		return catchUp{}, fmt.Errorf("%w: etcd's history is not the one followed (cluster %x, raft term %d, %d documents at revision %d; followed %x at term %d, %d documents)",
			errListAgain, h.ClusterId, h.RaftTerm, then.Count, st.through, st.cluster, st.term, len(st.keys))
	}
	st.term = h.RaftTerm
	target := catchUp{rev: h.Revision, count: resp.Responses[1].GetResponseRange().Count}
	if kvs := resp.Responses[2].GetResponseRange().Kvs; len(kvs) > 0 {
		target.lastPut = kvs[0].ModRevision
	}
	return target, nil
}

// follow watches the prefix from the revision after the registry's and
// sends the changes until the watch fails, a probe fails, or ctx ends.
// With upTo set, the source is stale until the watch has caught up with
// it: until the registry reached it, or got an event of upTo.rev or
// later.
func (st *runState) follow(ctx context.Context, c *clientv3.Client, upTo *catchUp) error {
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
	var skip int64                // events up to this revision came to nothing (see reached)
	if upTo != nil {
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
			events := resp.Events
			if skip > 0 {
				events = slices.DeleteFunc(slices.Clone(events), func(ev *clientv3.Event) bool { return ev.Kv.ModRevision <= skip })
			}
			// The key set moves on with the update: a send fails only
			// when ctx ends, and then this state goes with Run.
			var through int64
			for _, ev := range events {
				through = max(through, ev.Kv.ModRevision)
				key := strings.TrimPrefix(string(ev.Kv.Key), st.cfg.Prefix)
				if key == "" {
					continue // the prefix's own key
				}
				switch ev.Type {
				case mvccpb.PUT:
					u.Docs[key] = value(ev.Kv.Value)
					st.keys[key] = ev.Kv.ModRevision
				case mvccpb.DELETE:
					u.Docs[key] = nil
					delete(st.keys, key)
				}
			}
			if len(u.Docs) > 0 {
				if err := st.send(ctx, u); err != nil {
					return err
				}
			}
			// Only events move the registry's revision on: a response's
			// header may be ahead of its events (etcd sends a watch that
			// catches up in batches with the current revision).
			st.through = max(st.through, through)
			if upTo != nil && (st.through >= upTo.rev || st.reached(*upTo)) {
				if st.through < upTo.rev {
					skip, st.through = upTo.rev, upTo.rev
				}
				upTo, caughtUp = nil, nil
				if err := st.setFresh(ctx); err != nil {
					return err
				}
			}
		case <-caughtUp:
			return fmt.Errorf("%w: the watch resumed from revision %d did not catch up with %d within %v", errListAgain, from, upTo.rev, st.listTimeout)
		case <-probe.C:
			pctx, cancel := context.WithTimeout(ctx, st.probeTimeout)
			resp, err := c.Get(pctx, st.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			cancel()
			if err != nil {
				return fmt.Errorf("probe: %w", st.explain(err, st.probeTimeout))
			}
			// The client may have moved the watch to another endpoint
			// without a failure we saw: it must be the same cluster.
			if resp.Header.ClusterId != st.cluster {
				return fmt.Errorf("%w: etcd's cluster is now %x, was %x", errListAgain, resp.Header.ClusterId, st.cluster)
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
