package etcdsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// opTimeout bounds each of the Publisher's requests.
const opTimeout = 2 * time.Second

// Publisher keeps a set of documents in etcd below a prefix, attached to
// a lease that it keeps alive: a host that crashes or loses etcd for
// longer than the lease's time to live has its documents removed by etcd.
type Publisher struct {
	c      *clientv3.Client
	prefix string
	ttl    int64 // seconds
	log    *slog.Logger

	mu   sync.Mutex
	want map[string][]byte

	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	// Set by the loop, read by Close after it ended.
	lease    clientv3.LeaseID
	oldLease clientv3.LeaseID
}

// NewPublisher starts publishing (an empty set, until Set) below prefix
// with a lease of ttl (whole seconds, at least 1; etcd may raise it to its
// minimum, about 2 s). It keeps the lease alive; when the lease is lost
// (etcd unreachable for longer than ttl, or the lease revoked) it gets a
// new one and writes every document again. Failed writes are retried,
// 100 ms apart doubling up to 2 s. log may be nil.
func NewPublisher(c *clientv3.Client, prefix string, ttl time.Duration, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(c.Ctx())
	p := &Publisher{
		c:      c,
		prefix: prefix,
		ttl:    max(1, int64(math.Ceil(ttl.Seconds()))),
		log:    log.With("prefix", prefix),
		want:   map[string][]byte{},
		kick:   make(chan struct{}, 1),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go p.loop(ctx)
	return p
}

// Set replaces the published documents (key below the prefix: contents)
// with docs; the Publisher writes the difference in the background.
func (p *Publisher) Set(docs map[string][]byte) {
	p.mu.Lock()
	p.want = maps.Clone(docs)
	if p.want == nil {
		p.want = map[string][]byte{}
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Close stops publishing and revokes the lease, which deletes every
// document still attached to it.
func (p *Publisher) Close() error {
	p.cancel()
	<-p.done
	if err := p.c.Ctx().Err(); err != nil {
		return fmt.Errorf("revoke the lease: the client is closed: %w", err)
	}
	var errs []error
	for _, id := range []clientv3.LeaseID{p.lease, p.oldLease} {
		if id == clientv3.NoLease {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_, err := p.c.Revoke(ctx, id)
		cancel()
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			errs = append(errs, fmt.Errorf("revoke lease %x: %w", int64(id), err))
		}
	}
	return errors.Join(errs...)
}

// loop keeps the published documents in line with want until ctx ends.
func (p *Publisher) loop(ctx context.Context) {
	defer close(p.done)
	var (
		keepAlive <-chan *clientv3.LeaseKeepAliveResponse
		stopKA    context.CancelFunc = func() {}
		published map[string][]byte  // what etcd holds under p.lease
		retry     <-chan time.Time
		wait      = retryMin
		failing   bool
	)
	defer func() { stopKA() }()
	// dropLease forgets a lease that is lost; documents still attached to
	// it are removed once everything is published under a new one.
	dropLease := func() {
		stopKA()
		stopKA = func() {}
		if p.oldLease == clientv3.NoLease {
			p.oldLease = p.lease
		}
		p.lease, keepAlive = clientv3.NoLease, nil
	}
	for {
		err := func() error {
			if p.lease == clientv3.NoLease {
				lease, ka, cancel, err := p.grant(ctx)
				if err != nil {
					return err
				}
				p.lease, keepAlive, stopKA, published = lease, ka, cancel, map[string][]byte{}
			}
			if err := p.sync(ctx, published); err != nil {
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					dropLease()
				}
				return err
			}
			// Documents still attached to a lease lost earlier are ours
			// to remove: those we publish moved to the new one.
			if p.oldLease != clientv3.NoLease {
				rctx, cancel := context.WithTimeout(ctx, opTimeout)
				_, err := p.c.Revoke(rctx, p.oldLease)
				cancel()
				if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
					return fmt.Errorf("revoke the lost lease: %w", err)
				}
				p.oldLease = clientv3.NoLease
			}
			return nil
		}()
		retry = nil
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				p.log.Warn("publishing to etcd failed: retrying", "err", err)
			}
			failing = true
			retry = time.After(wait)
			wait = min(2*wait, retryMax)
		default:
			if failing {
				p.log.Info("publishing to etcd again")
			}
			failing, wait = false, retryMin
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return
			case <-p.kick:
				waiting = false
			case <-retry:
				waiting = false
			case _, ok := <-keepAlive:
				if ok {
					continue
				}
				// Expired, revoked, or not renewed within its time to
				// live: get another one and write everything again.
				p.log.Warn("etcd lease lost: publishing under a new one", "lease", fmt.Sprintf("%x", int64(p.lease)))
				dropLease()
				waiting = false
			}
		}
	}
}

// grant gets a lease and starts keeping it alive.
func (p *Publisher) grant(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, context.CancelFunc, error) {
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := p.c.Grant(gctx, p.ttl)
	cancel()
	if err != nil {
		return 0, nil, nil, fmt.Errorf("grant a lease: %w", err)
	}
	kctx, stop := context.WithCancel(ctx)
	ka, err := p.c.KeepAlive(kctx, resp.ID)
	if err != nil {
		stop()
		return 0, nil, nil, fmt.Errorf("keep the lease alive: %w", err)
	}
	return resp.ID, ka, stop, nil
}

// sync writes what changed between published and want under p.lease, and
// updates published as it goes. A document is written only where no other
// writer's is (the key is absent or already under the lease): a key
// another host publishes, or one written with sockmesh registry put, is
// left alone and reported, and tried again until it is free. A document is
// deleted only while it is still attached to the lease: another writer's
// replacement stays.
func (p *Publisher) sync(ctx context.Context, published map[string][]byte) error {
	p.mu.Lock()
	want := p.want
	p.mu.Unlock()
	var taken []string
	for key, data := range want {
		if old, ok := published[key]; ok && string(old) == string(data) {
			continue
		}
		k := p.prefix + key
		put := clientv3.OpPut(k, string(data), clientv3.WithLease(p.lease))
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := p.c.Txn(octx).
			If(clientv3.Compare(clientv3.LeaseValue(k), "=", p.lease)).
			Then(put).
			Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}, []clientv3.Op{put}, nil)).
			Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("put %s: %w", k, err)
		}
		if !resp.Succeeded && !resp.Responses[0].GetResponseTxn().Succeeded {
			taken = append(taken, k)
			continue
		}
		published[key] = data
	}

	for key := range published {
		if _, ok := want[key]; ok {
			continue
		}
		k := p.prefix + key
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		_, err := p.c.Txn(octx).
			If(clientv3.Compare(clientv3.LeaseValue(k), "=", p.lease)).
			Then(clientv3.OpDelete(k)).
			Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("delete %s: %w", k, err)
		}
		delete(published, key)
	}
	if len(taken) > 0 {
		slices.Sort(taken)
		return fmt.Errorf("%w: %s", ErrTaken, strings.Join(taken, ", "))
	}
	return nil
}

// ErrTaken is returned (wrapped, and retried) while keys the Publisher
// should write hold another writer's documents.
var ErrTaken = errors.New("keys held by another writer (another host's lease, or sockmesh registry put): not published until they are free")
