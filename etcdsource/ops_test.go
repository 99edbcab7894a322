package etcdsource

import (
	"testing"
)

func TestOps(t *testing.T) {
	_, c, cfg := startEtcd(t)
	p := cfg.Prefix
	put(t, c, p, "the prefix's own key: no document")
	put(t, c, "/sockmesh/servicesX", "outside")
	put(t, c, "/other/web", "outside")
	put(t, c, p+"team/api", "nested")

	// Create: expectModRev 0 means the key must not exist yet.
	if ok, err := Put(ctx(t), c, p, "web", []byte("v1"), 0); !ok || err != nil {
		t.Fatalf("Put new web: %v, %v", ok, err)
	}
	if ok, err := Put(ctx(t), c, p, "web", []byte("v1 again"), 0); ok || err != nil {
		t.Errorf("Put of an existing key expecting none: %v, %v; want false", ok, err)
	}
	docs, rev, err := List(ctx(t), c, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[0].Key != "team/api" || docs[1].Key != "web" || string(docs[1].Value) != "v1" || string(docs[0].Value) != "nested" {
		t.Fatalf("List = %+v, want team/api and web only", docs)
	}
	if docs[1].ModRevision == 0 || rev < docs[1].ModRevision {
		t.Errorf("List: revision %d, web's ModRevision %d", rev, docs[1].ModRevision)
	}
	seen := docs[1].ModRevision

	// Two writers read v1; the first write wins, the second sees the
	// conflict and writes nothing.
	if ok, err := Put(ctx(t), c, p, "web", []byte("v2"), seen); !ok || err != nil {
		t.Fatalf("Put web over what List saw: %v, %v", ok, err)
	}
	if ok, err := Put(ctx(t), c, p, "web", []byte("v2 from the other writer"), seen); ok || err != nil {
		t.Errorf("Put over a stale ModRevision: %v, %v; want false", ok, err)
	}
	d, ok, err := Get(ctx(t), c, p, "web")
	if err != nil || !ok || string(d.Value) != "v2" || d.Key != "web" || d.ModRevision <= seen {
		t.Errorf("Get web = %+v, %v, %v; want v2 at a later revision than %d", d, ok, err, seen)
	}
	// A key deleted meanwhile is a conflict too.
	del(t, c, p+"web")
	if ok, err := Put(ctx(t), c, p, "web", []byte("v3"), d.ModRevision); ok || err != nil {
		t.Errorf("Put over a deleted key: %v, %v; want false", ok, err)
	}

	if _, ok, err := Get(ctx(t), c, p, "web"); ok || err != nil {
		t.Errorf("Get of a missing key: %v, %v", ok, err)
	}
	if existed, err := Delete(ctx(t), c, p, "team/api"); !existed || err != nil {
		t.Errorf("Delete team/api: %v, %v", existed, err)
	}
	if existed, err := Delete(ctx(t), c, p, "team/api"); existed || err != nil {
		t.Errorf("Delete team/api again: %v, %v; want false", existed, err)
	}
	if docs, _, err := List(ctx(t), c, p); len(docs) != 0 || err != nil {
		t.Errorf("List at the end: %+v, %v; want none", docs, err)
	}
	// An empty value is a document (an invalid one), not a deletion.
	put(t, c, p+"empty", "")
	if d, ok, _ := Get(ctx(t), c, p, "empty"); !ok || d.Value == nil {
		t.Errorf("Get of an empty value: %+v, %v; want a non-nil empty value", d, ok)
	}
}
