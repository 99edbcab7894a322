package etcdsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"sockmesh/internal/etcdtest"
	"sockmesh/internal/testenv"
	"sockmesh/registry"
)

// follower runs a Source and keeps the documents its updates describe,
// as the registry would.
type follower struct {
	t     *testing.T
	src   *Source
	ch    chan registry.DocUpdate
	docs  map[string]string
	rev   int64
	last  registry.DocUpdate // the last update applied
	lists int                // full lists applied
}

// run starts src; the test's end cancels it and checks that Run returned
// the context's error.
func run(t *testing.T, src *Source) *follower {
	t.Helper()
	f := &follower{t: t, src: src, ch: make(chan registry.DocUpdate), docs: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, f.ch) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run still running 5 s after its context ended")
		}
	})
	return f
}

// next waits for the next update (within d), checks it and applies it.
func (f *follower) next(d time.Duration) registry.DocUpdate {
	f.t.Helper()
	select {
	case u := <-f.ch:
		if u.Source != f.src.Name() {
			f.t.Errorf("update from %q, want %q", u.Source, f.src.Name())
		}
		if u.Revision != 0 {
			// A full list may start another history (a wiped etcd).
			if u.Revision < f.rev && !u.Full {
				f.t.Errorf("revision went back from %d to %d", f.rev, u.Revision)
			}
			f.rev = u.Revision
		}
		if u.Full {
			clear(f.docs)
			f.lists++
		}
		for k, v := range u.Docs {
			if v == nil {
				delete(f.docs, k)
			} else {
				f.docs[k] = string(v)
			}
		}
		f.last = u
		return u
	case <-time.After(d):
		f.t.Fatalf("no update within %v", d)
		return registry.DocUpdate{}
	}
}

// untilFresh applies updates until one says the source is not stale
// (within d), and returns it and whether any of them was a full list.
func (f *follower) untilFresh(d time.Duration) (u registry.DocUpdate, listed bool) {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for {
		u := f.next(time.Until(deadline))
		listed = listed || u.Full
		if healthy(u) {
			return u, listed
		}
	}
}

// resumeGate holds a Source's resumptions while a test changes etcd
// behind its back; open, it lets them through.
type resumeGate struct {
	ch      atomic.Pointer[chan struct{}]
	resumed atomic.Int32 // resumptions let through
}

func newResumeGate(src *Source) *resumeGate {
	g := &resumeGate{}
	open := make(chan struct{})
	close(open)
	g.ch.Store(&open)
	src.beforeResume = func(int64) {
		select {
		case <-*g.ch.Load():
		case <-time.After(10 * time.Second):
		}
		g.resumed.Add(1)
	}
	return g
}

// hold closes the gate; release opens it and returns how many
// resumptions had gone through before.
func (g *resumeGate) hold() (release func() int32) {
	ch := make(chan struct{})
	g.ch.Store(&ch)
	return func() int32 {
		n := g.resumed.Load()
		close(ch)
		return n
	}
}

// waitFor applies updates until the documents are want (within d).
func (f *follower) waitFor(d time.Duration, want map[string]string) {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for !maps.Equal(f.docs, want) {
		if time.Now().After(deadline) {
			f.t.Fatalf("documents %v, want %v", f.docs, want)
		}
		f.next(time.Until(deadline))
	}
}

// etcdDocs is what etcd holds below the prefix.
func etcdDocs(t *testing.T, c *clientv3.Client) map[string]string {
	t.Helper()
	docs, _, err := List(ctx(t), c, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, d := range docs {
		m[d.Key] = string(d.Value)
	}
	return m
}

func newSource(t testing.TB, cfg Config) *Source {
	t.Helper()
	src, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func healthy(u registry.DocUpdate) bool { return u.Health != nil && !u.Health.Stale }

// The first update is the full list, with the revision it was read at;
// puts and deletes follow as changes, one update per watch response.
func TestSourceListAndChanges(t *testing.T) {
	_, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	put(t, c, testPrefix+"team/b", "B")
	put(t, c, testPrefix+"empty", "")
	put(t, c, testPrefix, "the prefix's own key")
	put(t, c, "/sockmesh/servicesX", "outside")
	rev := put(t, c, "/elsewhere", "outside")

	f := run(t, newSource(t, cfg))
	u := f.next(5 * time.Second)
	if !u.Full || !healthy(u) || u.Revision != rev || u.Health.Since.IsZero() {
		t.Fatalf("first update %+v (health %+v), want a full list at revision %d, not stale", u, u.Health, rev)
	}
	if want := map[string]string{"a": "A", "team/b": "B", "empty": ""}; !maps.Equal(f.docs, want) {
		t.Errorf("listed %v, want %v", f.docs, want)
	}
	if u.Docs["empty"] == nil {
		t.Error("an empty value listed as nil (deleted)")
	}

	rev = put(t, c, testPrefix+"c", "C")
	u = f.next(2 * time.Second)
	if u.Full || u.Health != nil || u.Revision != rev || len(u.Docs) != 1 || string(u.Docs["c"]) != "C" {
		t.Errorf("after a put: %+v, want c=C at revision %d", u, rev)
	}
	rev = del(t, c, testPrefix+"a")
	u = f.next(2 * time.Second)
	if u.Full || u.Revision != rev || len(u.Docs) != 1 || u.Docs["a"] != nil {
		t.Errorf("after a delete: %+v, want a deleted at revision %d", u, rev)
	}
	if _, ok := u.Docs["a"]; !ok {
		t.Error("a deleted key is missing from the update, want it with a nil value")
	}
	// One transaction: one watch response, one update. Keys outside the
	// prefix do not show.
	resp, err := c.Txn(ctx(t)).Then(
		clientv3.OpPut(testPrefix+"d", "D"),
		clientv3.OpPut(testPrefix+"c", "C2"),
		clientv3.OpDelete(testPrefix+"team/b"),
		clientv3.OpPut("/elsewhere", "x"),
		clientv3.OpPut(testPrefix+"e", ""),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	u = f.next(2 * time.Second)
	if u.Revision != resp.Header.Revision || len(u.Docs) != 4 || u.Docs["e"] == nil {
		t.Errorf("after a transaction: %+v, want d, c, team/b and e at revision %d", u, resp.Header.Revision)
	}
	put(t, c, "/elsewhere", "y")
	put(t, c, testPrefix, "the prefix's key again")
	rev = put(t, c, testPrefix+"f", "F")
	u = f.next(2 * time.Second)
	if len(u.Docs) != 1 || u.Revision != rev {
		t.Errorf("after writes outside the prefix and a put of f: %+v, want f only", u)
	}
	if want := etcdDocs(t, c); !maps.Equal(f.docs, want) {
		t.Errorf("followed %v, etcd holds %v", f.docs, want)
	}
}

// A thousand documents are one full list.
func TestSourceManyKeys(t *testing.T) {
	_, c, cfg := startEtcd(t)
	want := map[string]string{}
	var ops []clientv3.Op
	for i := range 1000 {
		k, v := fmt.Sprintf("svc%04d", i), fmt.Sprintf("name: svc%04d\nvip: [198.18.%d.%d]\nports: [80]\nbackends: [127.0.0.1:8080]\n", i, i/250, i%250+1)
		want[k] = v
		ops = append(ops, clientv3.OpPut(testPrefix+k, v))
		if len(ops) == 100 { // etcd's --max-txn-ops is 128
			if _, err := c.Txn(ctx(t)).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	f := run(t, newSource(t, cfg))
	if u := f.next(5 * time.Second); !u.Full || len(u.Docs) != 1000 || !maps.Equal(f.docs, want) {
		t.Fatalf("first update: full %v, %d documents, want the 1000", u.Full, len(u.Docs))
	}
}

// A watch that starts behind a compaction gets a second full list, then
// follows from there.
func TestSourceCompaction(t *testing.T) {
	_, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"k", "0")
	put(t, c, testPrefix+"gone", "x")
	src := newSource(t, cfg)
	var injected atomic.Bool
	src.afterList = func(rev int64) {
		if injected.Swap(true) {
			return
		}
		// Between the list and the watch: changes, then a compaction
		// of everything the watch would have replayed.
		put(t, c, testPrefix+"k", "1")
		put(t, c, testPrefix+"k", "2")
		del(t, c, testPrefix+"gone")
		last := put(t, c, testPrefix+"new", "n")
		if _, err := c.Compact(ctx(t), last); err != nil {
			t.Errorf("compact: %v", err)
		}
	}
	f := run(t, src)
	u := f.next(5 * time.Second)
	if !u.Full || len(u.Docs) != 2 {
		t.Fatalf("first update %+v, want the first full list", u)
	}
	u = f.next(5 * time.Second)
	if !u.Full || !healthy(u) {
		t.Fatalf("second update %+v, want a full list again, not stale", u)
	}
	if want := map[string]string{"k": "2", "new": "n"}; !maps.Equal(f.docs, want) {
		t.Errorf("after the compaction: %v, want %v", f.docs, want)
	}
	rev := put(t, c, testPrefix+"k", "3")
	if u := f.next(2 * time.Second); u.Full || u.Revision != rev || string(u.Docs["k"]) != "3" {
		t.Errorf("after the second list: %+v, want k=3 at %d", u, rev)
	}
	if f.lists != 2 {
		t.Errorf("listed %d times, want 2", f.lists)
	}
}

// etcd killed: the source says stale at once and nothing more; etcd
// back: the watch resumes from the last revision seen, without a list,
// and the source says it is current only once it delivered what changed
// while it was away (a delete, which changes the count of documents;
// then a put, which does not); then changes again.
func TestSourceEtcdDown(t *testing.T) {
	e, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	put(t, c, testPrefix+"b", "B")
	src := newSource(t, cfg)
	// Resuming waits while the test makes the changes the source misses.
	gate := newResumeGate(src)
	f := run(t, src)
	if u := f.next(5 * time.Second); !u.Full || !healthy(u) {
		t.Fatalf("first update %+v, want a full list", u)
	}
	put(t, c, testPrefix+"c", "C")
	f.next(2 * time.Second)

	want := map[string]string{"a": "A", "b": "B", "c": "C"}
	for round := range 2 {
		release := gate.hold()
		stopped := time.Now()
		e.Stop(t)
		u := f.next(4 * time.Second)
		took := time.Since(stopped)
		if u.Health == nil || !u.Health.Stale || u.Full || len(u.Docs) != 0 || u.Health.Since.Before(stopped) {
			t.Fatalf("round %d: update after etcd died: %+v (health %+v), want stale only", round, u, u.Health)
		}
		t.Logf("round %d: stale %v after etcd died: %s", round, took, u.Health.Err)
		if took > 500*time.Millisecond {
			t.Errorf("round %d: stale only %v after etcd died, want at once", round, took)
		}
		if u.Health.Err != "cannot connect to "+e.Endpoint {
			t.Errorf("round %d: stale error %q, want it to say etcd cannot be reached", round, u.Health.Err)
		}
		// Stale is said once.
		select {
		case u := <-f.ch:
			t.Fatalf("round %d: a second update while etcd is down: %+v", round, u)
		case <-time.After(2500 * time.Millisecond): // a failed list or more
		}

		restarted := time.Now()
		e.Restart(t)
		if round == 0 {
			del(t, c, testPrefix+"a")
			delete(want, "a")
		} else {
			want["b"] = "B1"
			put(t, c, testPrefix+"b", want["b"])
		}
		resumedBefore := release()
		u, listed := f.untilFresh(5 * time.Second)
		t.Logf("round %d: current again %v after etcd answered", round, time.Since(restarted))
		if u.Health.Since.Before(restarted) || listed {
			t.Errorf("round %d: after the restart: health %+v, listed %v; want not stale since the restart, without a list", round, u.Health, listed)
		}
		if gate.resumed.Load() == resumedBefore {
			t.Fatalf("round %d: current again without having resumed", round)
		}
		// What changed while the source was away is there by the time it
		// says it is current.
		if !maps.Equal(f.docs, want) {
			t.Errorf("round %d: current with %v, want %v", round, f.docs, want)
		}
		if round == 0 {
			put(t, c, testPrefix+"a", "A")
			want["a"] = "A"
			f.waitFor(2*time.Second, want)
		}
	}
	if f.lists != 1 {
		t.Errorf("listed %d times, want once: after an outage the watch resumes", f.lists)
	}
}

// Changes compacted away while the source was cut off: the resumed watch
// falls behind the compaction and the source lists again (deletions
// included), without having said it was current before.
func TestSourceResumeCompacted(t *testing.T) {
	e, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	put(t, c, testPrefix+"b", "B")
	src := newSource(t, cfg)
	src.beforeResume = func(int64) {
		put(t, c, testPrefix+"a", "A2")
		last := del(t, c, testPrefix+"b")
		if _, err := c.Compact(ctx(t), last); err != nil {
			t.Errorf("compact: %v", err)
		}
	}
	f := run(t, src)
	if u := f.next(5 * time.Second); !u.Full || !healthy(u) {
		t.Fatalf("first update %+v, want a full list", u)
	}
	e.Restart(t)
	u, listed := f.untilFresh(5 * time.Second)
	if !listed || !u.Full {
		t.Errorf("after the compaction: %+v, want a full list to make the source current", u)
	}
	if want := map[string]string{"a": "A2"}; !maps.Equal(f.docs, want) {
		t.Errorf("after the compaction: %v, want %v", f.docs, want)
	}
	if f.lists != 2 {
		t.Errorf("listed %d times, want 2", f.lists)
	}
}

// What happened while the source was away and came to nothing (a
// document made and deleted again) is not replayed once the source is
// current: at the start of the resumption (nothing else changed), and in
// the middle of a replay etcd sends in several responses (1,000 revisions
// each: two deletions, then 600 documents made and deleted, so the first
// response ends on a deletion). Each time the source is current with
// etcd's documents, and nothing follows.
func TestSourceResumeSkipsWhatCameToNothing(t *testing.T) {
	e, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	put(t, c, testPrefix+"b", "B")
	put(t, c, testPrefix+"z", "Z")
	src := newSource(t, cfg)
	// Run on the source's goroutine: no t.Fatal there.
	write := func(op clientv3.Op) {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Do(cctx, op); err != nil {
			t.Errorf("%v", err)
		}
	}
	var round atomic.Int32
	src.beforeResume = func(int64) {
		switch round.Load() {
		case 0:
			write(clientv3.OpPut(testPrefix+"c", "C"))
			write(clientv3.OpDelete(testPrefix + "c"))
		case 1:
			write(clientv3.OpDelete(testPrefix + "a"))
			write(clientv3.OpDelete(testPrefix + "z"))
			for range 600 {
				write(clientv3.OpPut(testPrefix+"t", "T"))
				write(clientv3.OpDelete(testPrefix + "t"))
			}
		}
		round.Add(1)
	}
	f := run(t, src)
	if u := f.next(5 * time.Second); !u.Full {
		t.Fatalf("first update %+v, want a full list", u)
	}
	for i, want := range []map[string]string{{"a": "A", "b": "B", "z": "Z"}, {"b": "B"}} {
		e.Restart(t)
		_, listed := f.untilFresh(10 * time.Second)
		if listed || !maps.Equal(f.docs, want) {
			t.Fatalf("resumption %d: current with %v (listed %v), want %v without a list", i, f.docs, listed, want)
		}
		select {
		case u := <-f.ch:
			t.Errorf("resumption %d: after the source said it was current: %+v", i, u)
		case <-time.After(time.Second):
		}
	}
}

// etcd wiped and started afresh on the same address (which keeps its
// cluster id): its history is not the one followed, and a resumed watch
// would keep documents the new etcd never had. The source lists instead.
// Twice: with a revision lower than the one followed, and with one
// higher, at the same raft term.
func TestSourceEtcdWiped(t *testing.T) {
	e, c, cfg := startEtcd(t)
	for i := range 10 {
		put(t, c, testPrefix+"old", fmt.Sprint(i))
	}
	var said logBuffer
	src, err := New(cfg, slog.New(slog.NewTextHandler(&said, nil)))
	if err != nil {
		t.Fatal(err)
	}
	gate := newResumeGate(src)
	f := run(t, src)
	if u := f.next(5 * time.Second); !u.Full || !maps.Equal(f.docs, map[string]string{"old": "9"}) {
		t.Fatalf("first update %+v, want the full list", u)
	}
	for i, tc := range []struct {
		writes int // to the new etcd before the source is back
		reason string
	}{
		{writes: 1, reason: "has not reached revision"},
		{writes: 40, reason: "etcd's history is not the one followed"},
	} {
		release := gate.hold()
		e.Wipe(t)
		want := map[string]string{}
		for n := range tc.writes {
			// Two documents, as many as the source has (new0 and more
			// after the first wipe): only the last one it saw written
			// tells the histories apart.
			key := fmt.Sprintf("new%d", i)
			if n > 0 {
				key += "b"
			}
			want[key] = fmt.Sprint(n)
			put(t, c, testPrefix+key, want[key])
		}
		before := f.lists
		release()
		u, _ := f.untilFresh(5 * time.Second)
		if f.lists != before+1 || !u.Full || !maps.Equal(f.docs, want) {
			t.Errorf("wipe %d: %v after %d lists (last update %+v), want one full list of the new etcd, %v", i, f.docs, f.lists-before, u, want)
		}
		if !strings.Contains(said.String(), tc.reason) {
			t.Errorf("wipe %d: the source said:\n%s\nwant %q", i, said.String(), tc.reason)
		}
		// More changes than the next wipe's history will have.
		for n := range 20 {
			put(t, c, testPrefix+"more", fmt.Sprint(n))
		}
		want["more"] = "19"
		f.waitFor(2*time.Second, want)
	}
}

// logBuffer collects a logger's lines for a test to read.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// etcd hangs (SIGSTOP: connections stay up, nothing answers): the probe
// sees it within about 2 s; etcd back, the watch resumes without a list.
func TestSourceEtcdHangs(t *testing.T) {
	e, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	f := run(t, newSource(t, cfg))
	if u := f.next(5 * time.Second); !u.Full || !healthy(u) {
		t.Fatalf("first update %+v, want a full list", u)
	}
	e.Pause(t)
	paused := time.Now()
	u := f.next(4 * time.Second)
	took := time.Since(paused)
	t.Logf("stale %v after etcd hung: %s", took, u.Health.Err)
	if u.Health == nil || !u.Health.Stale || u.Health.Err != "probe: no answer from "+e.Endpoint+" within 1s" {
		t.Fatalf("update after etcd hung: %+v (health %+v), want stale for want of an answer", u, u.Health)
	}
	// A probe a second, answered within a second: 2 s, and some slack
	// for a loaded machine.
	if took > 3*time.Second {
		t.Errorf("stale only %v after etcd hung, want about 2 s at most", took)
	}
	e.Resume(t)
	resumed := time.Now()
	u, listed := f.untilFresh(3 * time.Second)
	t.Logf("current %v after etcd resumed", time.Since(resumed))
	if listed || !maps.Equal(f.docs, map[string]string{"a": "A"}) {
		t.Errorf("after etcd resumed: %+v, listed %v, want the watch resumed", u, listed)
	}
	if f.lists != 1 {
		t.Errorf("listed %d times, want once", f.lists)
	}
	put(t, c, testPrefix+"b", "B")
	f.waitFor(2*time.Second, map[string]string{"a": "A", "b": "B"})
}

// etcd unreachable at the start: stale at once, then a full list when it
// answers.
func TestSourceUnreachableAtStart(t *testing.T) {
	e, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	e.Stop(t)
	start := time.Now()
	f := run(t, newSource(t, cfg))
	u := f.next(4 * time.Second)
	if u.Health == nil || !u.Health.Stale || u.Full {
		t.Fatalf("first update with etcd down: %+v, want stale", u)
	}
	t.Logf("stale %v after the start: %s", time.Since(start), u.Health.Err)
	if time.Since(start) > 500*time.Millisecond {
		t.Errorf("stale %v after the start, want at once", time.Since(start))
	}
	time.Sleep(2 * time.Second) // a few retries
	e.Restart(t)
	restarted := time.Now()
	u = f.next(3 * time.Second)
	t.Logf("full list %v after etcd answered", time.Since(restarted))
	if !u.Full || !healthy(u) || !maps.Equal(f.docs, map[string]string{"a": "A"}) {
		t.Errorf("after etcd came: %+v, want a full list, not stale", u)
	}
}

// Run returns when its context ends, even while nobody reads its updates.
func TestSourceCancelWhileBlocked(t *testing.T) {
	_, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- newSource(t, cfg).Run(ctx, make(chan registry.DocUpdate)) }()
	time.Sleep(500 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run blocked on its output after its context ended")
	}
}

// With authentication on: a user who may read the prefix follows it; a
// wrong password is stale, saying why.
func TestSourceAuth(t *testing.T) {
	_, c, cfg := startEtcd(t)
	put(t, c, testPrefix+"a", "A")
	for _, step := range []func() error{
		func() error { _, err := c.RoleAdd(ctx(t), "root"); return err },
		func() error { _, err := c.UserAdd(ctx(t), "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx(t), "root", "root"); return err },
		func() error { _, err := c.RoleAdd(ctx(t), "sockmesh"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx(t), "sockmesh", testPrefix, clientv3.GetPrefixRangeEnd(testPrefix), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := c.UserAdd(ctx(t), "reader", "readpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx(t), "reader", "sockmesh"); return err },
		func() error { _, err := c.AuthEnable(ctx(t)); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("set up authentication: %v", err)
		}
	}
	rootCfg := cfg
	rootCfg.Username, rootCfg.Password = "root", "rootpw"
	root, err := rootCfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	readCfg := cfg
	readCfg.Username, readCfg.Password = "reader", "readpw"
	f := run(t, newSource(t, readCfg))
	if u := f.next(5 * time.Second); !u.Full || !healthy(u) || !maps.Equal(f.docs, map[string]string{"a": "A"}) {
		t.Fatalf("first update as reader: %+v (health %+v), want the full list", u, u.Health)
	}
	put(t, root, testPrefix+"b", "B")
	f.waitFor(2*time.Second, map[string]string{"a": "A", "b": "B"})
	if _, err := c.Get(ctx(t), testPrefix); err == nil {
		t.Error("a client without a user reads with authentication on")
	}

	badCfg := cfg
	badCfg.Username, badCfg.Password = "reader", "wrong"
	bad := run(t, newSource(t, badCfg))
	u := bad.next(5 * time.Second)
	if u.Health == nil || !u.Health.Stale || !strings.Contains(u.Health.Err, "authentication failed") {
		t.Fatalf("wrong password: %+v (health %+v), want stale: authentication failed", u, u.Health)
	}
	t.Logf("wrong password: %s", u.Health.Err)
}

// etcds:// with TLSConfig's CA and client certificate, against an etcd
// that requires them.
func TestSourceTLS(t *testing.T) {
	testenv.RequirePrivileged(t)
	ca, cert, key := testCerts(t)
	e := etcdtest.StartWith(t, etcdtest.Options{CertFile: cert, KeyFile: key, CAFile: ca, ClientCertAuth: true})
	put(t, e.Client(t), testPrefix+"a", "A")

	cfg, err := ParseURL("etcds://" + e.Endpoint + testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS, err = TLSConfig(ca, cert, key); err != nil {
		t.Fatal(err)
	}
	f := run(t, newSource(t, cfg))
	if u := f.next(5 * time.Second); !u.Full || !healthy(u) || !maps.Equal(f.docs, map[string]string{"a": "A"}) {
		t.Fatalf("first update over TLS: %+v (health %+v), want the full list", u, u.Health)
	}

	// Without the client certificate etcd refuses: stale.
	noCert := cfg
	if noCert.TLS, err = TLSConfig(ca, "", ""); err != nil {
		t.Fatal(err)
	}
	u := run(t, newSource(t, noCert)).next(5 * time.Second)
	// TLS 1.3 refuses the client after the handshake: the client may
	// meet the alert on a read, or a closed connection on a write first.
	if u.Health == nil || !u.Health.Stale || !(strings.HasSuffix(u.Health.Err, "tls: bad certificate") || strings.HasSuffix(u.Health.Err, "broken pipe") || strings.HasSuffix(u.Health.Err, "connection reset by peer")) {
		t.Fatalf("without a client certificate: %+v (health %+v), want stale: bad certificate", u, u.Health)
	}
	t.Logf("without a client certificate: %s", u.Health.Err)
	// Without the CA, the server is not trusted: stale.
	noCA := cfg
	if noCA.TLS, err = TLSConfig("", cert, key); err != nil {
		t.Fatal(err)
	}
	u = run(t, newSource(t, noCA)).next(5 * time.Second)
	if u.Health == nil || !u.Health.Stale || !strings.HasSuffix(u.Health.Err, "x509: certificate signed by unknown authority") {
		t.Fatalf("without the CA: %+v (health %+v), want stale: unknown authority", u, u.Health)
	}
	t.Logf("without the CA: %s", u.Health.Err)
}

// A client certificate renewed on disk is used at the next connection,
// without a restart: the source starts with a certificate etcd does not
// trust (stale), and catches up once a trusted one replaces the files.
func TestSourceTLSRenewedCertificate(t *testing.T) {
	testenv.RequirePrivileged(t)
	ca, cert, key := testCerts(t)
	_, untrustedCert, untrustedKey := testCerts(t) // another CA's
	e := etcdtest.StartWith(t, etcdtest.Options{CertFile: cert, KeyFile: key, CAFile: ca, ClientCertAuth: true})
	put(t, e.Client(t), testPrefix+"a", "A")

	dir := t.TempDir()
	clientCert, clientKey := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	// As renewal tools write: a new file renamed over the old one.
	install := func(from, to string) {
		t.Helper()
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to+".new", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(to+".new", to); err != nil {
			t.Fatal(err)
		}
	}
	install(untrustedCert, clientCert)
	install(untrustedKey, clientKey)
	cfg, err := ParseURL("etcds://" + e.Endpoint + testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLS, err = TLSConfig(ca, clientCert, clientKey); err != nil {
		t.Fatal(err)
	}
	f := run(t, newSource(t, cfg))
	if u := f.next(5 * time.Second); u.Health == nil || !u.Health.Stale {
		t.Fatalf("with a certificate etcd does not trust: %+v, want stale", u)
	}
	install(key, clientKey) // for a moment the pair does not match
	install(cert, clientCert)
	renewed := time.Now()
	u, listed := f.untilFresh(10 * time.Second)
	t.Logf("current %v after the certificate was renewed", time.Since(renewed))
	if !listed || !maps.Equal(f.docs, map[string]string{"a": "A"}) {
		t.Errorf("after the renewal: %v (last update %+v), want the full list", f.docs, u)
	}
}
