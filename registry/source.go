package registry

import (
	"context"
	"time"
)

// Source is where service documents come from besides the services
// directory: each key holds one service in the service-file format. An
// etcd key prefix is one (package etcdsource).
type Source interface {
	// Name is the source as users name it, e.g.
	// "etcd://10.0.0.1:2379/sockmesh/services". A document's path in
	// errors and in the state file is Name + "/" + its key's last part
	// (see DocPath).
	Name() string
	// Run sends the source's documents to out until ctx ends: a full
	// list first (and again whenever the source cannot vouch for what it
	// sent since, e.g. after a compaction), then changes as they happen,
	// and its health whenever it changes. It returns ctx.Err() when ctx
	// ends, or an error only for what retrying cannot fix.
	Run(ctx context.Context, out chan<- DocUpdate) error
}

// DocUpdate is what a source tells the registry.
type DocUpdate struct {
	// Source is the Source's Name.
	Source string
	// Full marks a complete list: every document of the source not in
	// Docs is gone. Otherwise Docs are changes only.
	Full bool
	// Docs are documents by key (the part after the source's prefix):
	// their contents, or nil when deleted.
	Docs map[string][]byte
	// Revision is the source's revision the update brings the registry
	// to (etcd's store revision), 0 when the source has none.
	Revision int64
	// Health, when not nil, is the source's state from now on.
	Health *SourceHealth
}

// SourceHealth says whether a source's documents are current.
type SourceHealth struct {
	// Stale is true while the source cannot be reached: the registry
	// keeps serving the last documents it got.
	Stale bool
	// Err is why, when stale.
	Err string
	// Since is when Stale last changed.
	Since time.Time
}

// DocPath is the path of a source's document in errors, the state file
// and status: the source's name, a slash, and the key.
func DocPath(source, key string) string { return source + "/" + key }
