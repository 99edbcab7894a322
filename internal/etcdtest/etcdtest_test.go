package etcdtest

import (
	"context"
	"os"
	"testing"
	"time"

	"sockmesh/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, nil) }

// A key written before Stop is there after Restart, on the same endpoint;
// while stopped, nothing answers.
func TestStopRestart(t *testing.T) {
	testenv.RequirePrivileged(t)
	start := time.Now()
	s := Start(t)
	t.Logf("etcd answered after %v on %s", time.Since(start), s.Endpoint)
	c := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	if _, err := os.Stat(s.DataDir); err != nil {
		t.Errorf("data dir after Stop: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := c.Get(short, "k"); err == nil {
		t.Error("Get succeeded with etcd stopped")
	}
	cancelShort()
	s.Restart(t)
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Errorf("after restart k = %v, want v", resp.Kvs)
	}
}

// StartOn binds the address it is given.
func TestStartOn(t *testing.T) {
	testenv.RequirePrivileged(t)
	s := StartOn(t, "127.0.0.2")
	if got := s.Endpoint[:len("127.0.0.2:")]; got != "127.0.0.2:" {
		t.Errorf("endpoint %s, want on 127.0.0.2", s.Endpoint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Client(t).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
}
