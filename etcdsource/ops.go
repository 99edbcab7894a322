package etcdsource

import (
	"context"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Doc is one service document as etcd holds it.
type Doc struct {
	// Key is the key without the prefix: the document's name.
	Key string
	// Value is the service file.
	Value []byte
	// ModRevision is the revision of the document's last change: what
	// Put expects to replace it.
	ModRevision int64
}

// List returns the documents below prefix, by key, and the revision they
// were read at. The key equal to the prefix itself is no document and is
// left out. Errors are the client's, for the caller to say what it did.
func List(ctx context.Context, c *clientv3.Client, prefix string) ([]Doc, int64, error) {
	docs, h, err := list(ctx, c, prefix)
	if err != nil {
		return nil, 0, err
	}
	return docs, h.Revision, nil
}

// list is List with the whole response header: which cluster, revision
// and raft term the documents were read at.
func list(ctx context.Context, c *clientv3.Client, prefix string) ([]Doc, *etcdserverpb.ResponseHeader, error) {
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, err
	}
	docs := make([]Doc, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		key := strings.TrimPrefix(string(kv.Key), prefix)
		if key == "" {
			continue
		}
		docs = append(docs, Doc{Key: key, Value: value(kv.Value), ModRevision: kv.ModRevision})
	}
	return docs, resp.Header, nil
}

// Get returns the document key below prefix; ok is false when there is
// none.
func Get(ctx context.Context, c *clientv3.Client, prefix, key string) (d Doc, ok bool, err error) {
	resp, err := c.Get(ctx, prefix+key)
	if err != nil || len(resp.Kvs) == 0 {
		return Doc{}, false, err
	}
	kv := resp.Kvs[0]
	return Doc{Key: key, Value: value(kv.Value), ModRevision: kv.ModRevision}, true, nil
}

// Put writes the document key below prefix only if nobody changed it since
// the caller read it: expectModRev is the ModRevision List or Get gave
// (0: the key must not exist). ok is false, and nothing is written, when
// someone else wrote or deleted it meanwhile.
func Put(ctx context.Context, c *clientv3.Client, prefix, key string, data []byte, expectModRev int64) (ok bool, err error) {
	k := prefix + key
	resp, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", expectModRev)).
		Then(clientv3.OpPut(k, string(data))).
		Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// Delete removes the document key below prefix; existed says whether
// there was one.
func Delete(ctx context.Context, c *clientv3.Client, prefix, key string) (existed bool, err error) {
	resp, err := c.Delete(ctx, prefix+key)
	if err != nil {
		return false, err
	}
	return resp.Deleted > 0, nil
}

// value is never nil: nil means deleted to the registry, while an empty
// key is an (invalid) document.
func value(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
