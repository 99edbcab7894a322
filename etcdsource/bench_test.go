package etcdsource

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"sockmesh/registry"
)

// BenchmarkCatchUp (run it with -benchtime=1x) measures what getting back
// after an outage costs with 10,000 services under the prefix and 10 of
// them changed meanwhile: resuming the watch from the last revision
// followed (one transaction of counts, then the watch's replay)
// against listing every document, the way back before resuming. The two
// alternate, round by round; it prints the medians and the ratios of the
// time until the registry is current and of the document bytes it gets.
// Resuming waits for etcd's watcher sync (every 100 ms), so on loopback it
// can take longer than a list; what it saves is the transfer and the
// registry's comparing of every document.
func BenchmarkCatchUp(b *testing.B) {
	_, c, cfg := startEtcd(b)
	const services, changed, rounds = 10000, 10, 15
	doc := func(i, gen int) string {
		return fmt.Sprintf("name: svc%05d\nvip: [198.18.%d.%d]\nports: [80, 443]\nhealth: tcp\npolicy: round-robin\nbackends:\n  - 10.1.%d.%d:8080\n  - 10.2.%d.%d:8080\n  - 10.3.%d.%d:8080\n# generation %d\n",
			i, i/250, i%250+1, i/250, i%250+1, i/250, i%250+1, i/250, i%250+1, gen)
	}
	var ops []clientv3.Op
	for i := range services {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%ssvc%05d", testPrefix, i), doc(i, 0)))
		if len(ops) == 100 || i == services-1 { // etcd's --max-txn-ops is 128
			if _, err := c.Txn(ctx(b)).Then(ops...).Commit(); err != nil {
				b.Fatal(err)
			}
			ops = nil
		}
	}
	src := newSource(b, cfg)
	out := make(chan registry.DocUpdate)
	var listed, resumed []time.Duration
	var bytes, replayed int
	for round := range rounds {
		// The state a follower is in when etcd comes back: stale, at the
		// revision before the changes.
		st := &runState{Source: src, out: out, stale: true}
		go func() {
			if err := st.list(context.Background(), c); err != nil {
				b.Error(err)
			}
		}()
		u := <-out
		bytes = 0
		for _, d := range u.Docs {
			bytes += len(d)
		}
		for i := range changed {
			n := (round*changed + i) * 97 % services
			put(b, c, fmt.Sprintf("%ssvc%05d", testPrefix, n), doc(n, round+1))
		}
		st.stale = true

		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			target, err := st.current(ctx, c)
			if err == nil && st.reached(target) {
				err = fmt.Errorf("etcd says nothing changed since revision %d", st.through)
			}
			if err == nil {
				err = st.follow(ctx, c, &target)
			}
			done <- err
		}()
		got := 0
		for u := range out {
			got += len(u.Docs)
			for _, d := range u.Docs {
				replayed += len(d)
			}
			if healthy(u) {
				break
			}
		}
		resumed = append(resumed, time.Since(start))
		cancel()
		if err := <-done; err != context.Canceled {
			b.Fatalf("round %d: resuming: %v", round, err)
		}
		if got < changed {
			b.Fatalf("round %d: the resumed watch delivered %d documents, want the %d changed", round, got, changed)
		}

		start = time.Now()
		go func() {
			if err := st.list(context.Background(), c); err != nil {
				b.Error(err)
			}
		}()
		if u := <-out; len(u.Docs) != services {
			b.Fatalf("round %d: listed %d documents, want %d", round, len(u.Docs), services)
		}
		listed = append(listed, time.Since(start))
	}
	l, r := median(listed), median(resumed)
	perResume := float64(replayed) / rounds
	b.ReportMetric(float64(r)/float64(l), "resume/list")
	b.ReportMetric(perResume/float64(bytes), "resume/list-bytes")
	fmt.Printf("catch up after an outage, %d services, %d changed: list %v, resume %v (medians of %d), time ratio %.3f; documents %d bytes against %.0f, ratio %.5f\n",
		services, changed, l, r, rounds, float64(r)/float64(l), bytes, perResume, perResume/float64(bytes))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
