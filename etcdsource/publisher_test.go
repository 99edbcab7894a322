package etcdsource

import (
	"maps"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const pubPrefix = "/sockmesh/hosts/h1/"

// pubDocs is what etcd holds below pubPrefix, and the leases the keys are
// attached to.
func pubDocs(t *testing.T, c *clientv3.Client) (map[string]string, map[clientv3.LeaseID]bool) {
	t.Helper()
	resp, err := c.Get(ctx(t), pubPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	docs, leases := map[string]string{}, map[clientv3.LeaseID]bool{}
	for _, kv := range resp.Kvs {
		docs[string(kv.Key[len(pubPrefix):])] = string(kv.Value)
		leases[clientv3.LeaseID(kv.Lease)] = true
	}
	return docs, leases
}

// waitDocs waits until etcd holds want below pubPrefix, and returns how
// long that took.
func waitDocs(t *testing.T, c *clientv3.Client, within time.Duration, want map[string]string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got, _ := pubDocs(t, c)
		if maps.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("etcd holds %v after %v, want %v", got, within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func bytesMap(m map[string]string) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

// Set publishes, replaces and removes documents under one lease; a
// document another writer replaced is left alone; a revoked lease is
// replaced and everything written again; Close removes what is left.
func TestPublisher(t *testing.T) {
	_, c, cfg := startEtcd(t)
	pc, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p := NewPublisher(pc, pubPrefix, 2*time.Second, nil)
	p.Set(bytesMap(map[string]string{"a": "A", "b": "B"}))
	waitDocs(t, c, 2*time.Second, map[string]string{"a": "A", "b": "B"})
	_, leases := pubDocs(t, c)
	if len(leases) != 1 || leases[clientv3.NoLease] {
		t.Fatalf("documents attached to leases %v, want one", leases)
	}
	var lease clientv3.LeaseID
	for l := range leases {
		lease = l
	}
	ttl, err := c.TimeToLive(ctx(t), lease)
	if err != nil || ttl.GrantedTTL != 2 {
		t.Errorf("lease: %+v, %v; want a TTL of 2 s", ttl, err)
	}

	p.Set(bytesMap(map[string]string{"a": "A2", "c": "C"}))
	waitDocs(t, c, 2*time.Second, map[string]string{"a": "A2", "c": "C"})

	// c replaced by someone else (no lease): removing it from the set
	// leaves their version.
	put(t, c, pubPrefix+"c", "theirs")
	p.Set(bytesMap(map[string]string{"a": "A2"}))
	time.Sleep(300 * time.Millisecond)
	waitDocs(t, c, 2*time.Second, map[string]string{"a": "A2", "c": "theirs"})
	del(t, c, pubPrefix+"c")

	// The lease revoked behind the Publisher's back: everything is
	// written again under a new one.
	if _, err := c.Revoke(ctx(t), lease); err != nil {
		t.Fatal(err)
	}
	waitDocs(t, c, time.Second, map[string]string{})
	took := waitDocs(t, c, 3*time.Second, map[string]string{"a": "A2"})
	t.Logf("written again %v after the lease was revoked", took)
	if _, leases := pubDocs(t, c); leases[lease] || leases[clientv3.NoLease] {
		t.Errorf("after the revoke, documents attached to %v, want a new lease", leases)
	}

	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitDocs(t, c, 0, map[string]string{})
}

// A publisher that dies without revoking its lease (its client closed,
// as when the host crashes) has its documents removed after the lease's
// time to live.
func TestPublisherCrash(t *testing.T) {
	_, c, cfg := startEtcd(t)
	pc, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(pc, pubPrefix, 2*time.Second, nil)
	want := map[string]string{"a": "A", "b": "B"}
	p.Set(bytesMap(want))
	waitDocs(t, c, 2*time.Second, want)
	time.Sleep(1500 * time.Millisecond) // the lease was renewed meanwhile
	waitDocs(t, c, 0, want)

	pc.Close()
	crashed := time.Now()
	time.Sleep(time.Second)
	waitDocs(t, c, 0, want) // not yet
	waitDocs(t, c, 3*time.Second, map[string]string{})
	t.Logf("documents gone %v after the publisher died (TTL 2 s)", time.Since(crashed))
	if err := p.Close(); err == nil {
		t.Error("Close with the client closed: no error")
	}
}

// etcd down for longer than the lease's TTL: the Publisher gets a new
// lease when etcd is back, writes the set it holds by then, and removes
// what the lost lease still held.
func TestPublisherEtcdDown(t *testing.T) {
	e, c, cfg := startEtcd(t)
	pc, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p := NewPublisher(pc, pubPrefix, 2*time.Second, nil)
	defer p.Close()
	p.Set(bytesMap(map[string]string{"a": "A", "b": "B"}))
	waitDocs(t, c, 2*time.Second, map[string]string{"a": "A", "b": "B"})
	_, before := pubDocs(t, c)

	e.Stop(t)
	p.Set(bytesMap(map[string]string{"a": "A2"}))
	time.Sleep(3 * time.Second)
	e.Restart(t)
	// etcd keeps leases across its restart, so the old lease may serve a
	// moment (a write retried as etcd came back), until the Publisher
	// sees it lost and moves to a new one.
	restarted := time.Now()
	for {
		docs, after := pubDocs(t, c)
		if maps.Equal(docs, map[string]string{"a": "A2"}) && len(after) == 1 && !after[clientv3.NoLease] && !before[first(after)] {
			break
		}
		if time.Since(restarted) > 5*time.Second {
			t.Fatalf("5 s after etcd came back: %v attached to %v, want a: A2 under a new lease (was %v)", docs, after, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("published under a new lease %v after etcd came back", time.Since(restarted))
	// The old lease is gone with it.
	if resp, err := c.TimeToLive(ctx(t), first(before)); err != nil || resp.TTL != -1 {
		t.Errorf("the lost lease: %+v, %v; want it revoked", resp, err)
	}
}

func first(m map[clientv3.LeaseID]bool) clientv3.LeaseID {
	for k := range m {
		return k
	}
	return clientv3.NoLease
}

// A key another writer holds (here a document put without a lease) is
// not taken over: the Publisher waits until it is free, then writes.
func TestPublisherLeavesOthersKeys(t *testing.T) {
	_, c, cfg := startEtcd(t)
	put(t, c, pubPrefix+"web", "theirs")
	pc, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p := NewPublisher(pc, pubPrefix, 2*time.Second, nil)
	p.Set(bytesMap(map[string]string{"web": "ours", "db": "ours"}))
	waitDocs(t, c, 2*time.Second, map[string]string{"web": "theirs", "db": "ours"})
	time.Sleep(300 * time.Millisecond)
	waitDocs(t, c, time.Second, map[string]string{"web": "theirs", "db": "ours"})
	if _, err := c.Delete(ctx(t), pubPrefix+"web"); err != nil {
		t.Fatal(err)
	}
	waitDocs(t, c, 5*time.Second, map[string]string{"web": "ours", "db": "ours"})
}
