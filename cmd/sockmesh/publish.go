package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	clientv3 "go.etcd.io/etcd/client/v3"

	"sockmesh/etcdsource"
	"sockmesh/registry"
	"sockmesh/servicefile"
)

// publishRescan is how often the published directory is read again even
// without a change notice (a safety net for lost events).
const publishRescan = 10 * time.Second

// publishDir keeps the service files of dir published in the shared
// registry under a lease of ttl, until ctx ends: this host's own backends,
// which every host serves, and which etcd removes ttl after this host dies.
// A file that does not parse keeps its last good version published.
// Stopping does not revoke the lease: a daemon restarted within ttl (an
// upgrade) takes its services over and no host ever loses them.
//
// A backends document is published as NAME/backends/HOST/FILE (host is
// this host's name): each host's own backends of a service that several
// hosts serve; when this host dies, only its backends leave the service.
func publishDir(ctx context.Context, dir string, cfg etcdsource.Config, ttl time.Duration, host string, log *slog.Logger) error {
	// A client with a user authenticates as it is made: while etcd is
	// down that fails, and is tried again; traffic does not depend on it.
	var c *clientv3.Client
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		var err error
		if c, err = cfg.Client(); err == nil {
			break
		}
		log.Warn("publish: cannot reach the registry yet; retrying", "registry", cfg.URL(), "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	defer c.Close() // ends the publisher's keep-alive; the lease expires
	p := etcdsource.NewPublisher(c, cfg.Prefix, ttl, log)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("publish %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("publish %s: %w", dir, err)
	}
	good := map[string]*servicefile.Service{} // by file, last good
	read := func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			log.Warn("publish: cannot read the directory; what is published stays", "dir", dir, "err", err)
			return
		}
		seen := map[string]bool{}
		for _, e := range entries {
			if !registry.IsServiceFile(e.Name()) {
				continue
			}
			path := filepath.Join(dir, e.Name())
			seen[path] = true
			data, err := os.ReadFile(path)
			if err != nil {
				log.Warn("publish: file unreadable; its last good version stays published", "file", path, "err", err)
				continue
			}
			if old := good[path]; old != nil && string(old.Source) == string(data) {
				continue
			}
			svc, err := servicefile.Parse(path, data)
			if err != nil {
				log.Warn("publish: file refused; its last good version stays published", "err", err)
				continue
			}
			good[path] = svc
		}
		docs := map[string][]byte{}
		from := map[string]string{} // key -> file
		for _, path := range slices.Sorted(maps.Keys(good)) {
			svc := good[path]
			if !seen[path] {
				delete(good, path)
				continue
			}
			key := docKey(svc, host, path)
			if other, dup := from[key]; dup {
				log.Warn("publish: two files for one key; only the first is published", "key", key, "published", other, "left out", path)
				continue
			}
			from[key] = path
			docs[key] = svc.Source
		}
		p.Set(docs)
	}
	read()
	log.Info("publishing this host's services to the shared registry", "dir", dir, "registry", cfg.URL(), "ttl", ttl)
	tick := time.NewTicker(publishRescan)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("publish %s: watcher closed", dir)
			}
		case <-w.Errors:
		case <-tick.C:
		}
		read()
	}
}

// docKey is the key a document is written under, below the prefix: a
// service's name; for a backends document NAME/backends/HOST/FILE (the
// file's name without .yaml), so that hosts and files never share one.
func docKey(svc *servicefile.Service, host, file string) string {
	if !svc.BackendsOnly {
		return svc.Name
	}
	base := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(file), ".yaml"), ".yml")
	return svc.Name + "/backends/" + host + "/" + base
}

// hostKey checks a host's name for keys (default: the host name, lower
// case): no slashes, no spaces.
func hostKey(name string) (string, error) {
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("find the host name: %w (set it)", err)
		}
		name = strings.ToLower(h)
	}
	if strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r <= ' ' || r == 0x7f }) {
		return "", fmt.Errorf("%q: a host's name in a key has no slashes, spaces or control characters", name)
	}
	return name, nil
}
