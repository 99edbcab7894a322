package etcdsource

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"sockmesh/internal/etcdtest"
	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, nil) }

const testPrefix = "/sockmesh/services/"

// startEtcd starts etcd for one test and returns it with a client and the
// configuration of a Source over testPrefix.
func startEtcd(t testing.TB) (*etcdtest.Server, *clientv3.Client, Config) {
	t.Helper()
	testenv.RequirePrivileged(t)
	e := etcdtest.Start(t)
	cfg, err := ParseURL("etcd://" + e.Endpoint + testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return e, e.Client(t), cfg
}

// ctx is a context for one operation of a test.
func ctx(t testing.TB) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func put(t testing.TB, c *clientv3.Client, key, val string) int64 {
	t.Helper()
	resp, err := c.Put(ctx(t), key, val)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func del(t testing.TB, c *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := c.Delete(ctx(t), key)
	if err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
	return resp.Header.Revision
}
