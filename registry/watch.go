package registry

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
)

// watches keeps fsnotify watching the services directory and, to notice
// the directory being created, replaced or removed, its nearest existing
// ancestor.
type watches struct {
	w   *fsnotify.Watcher
	dir string
	// watched are the paths currently added to w.
	watched []string
}

// Where an event happened, relative to the services directory.
const (
	elsewhere = iota
	inDir     // a file in the directory
	onPath    // the directory itself or one of its ancestors
)

func (wt *watches) classify(name string) int {
	name = filepath.Clean(name)
	if filepath.Dir(name) == wt.dir {
		return inDir
	}
	if name == wt.dir || strings.HasPrefix(wt.dir, name+string(filepath.Separator)) {
		return onPath
	}
	return elsewhere
}

// refresh re-adds the watches: the directory (a new one if it was
// replaced) and its parent, or the nearest ancestor that exists.
//
// The order matters. Ancestors are watched before the directory is
// looked at, so a directory created in between still raises an event on
// its parent; and an ancestor that appears while the watch goes on its
// own parent is caught by looking again once the watch is in place.
func (wt *watches) refresh() {
	for _, p := range wt.watched {
		_ = wt.w.Remove(p) // gone already when its inode was deleted
	}
	wt.watched = wt.watched[:0]
	for range 16 {
		p := wt.watchAncestor()
		if p == "" || p == filepath.Dir(wt.dir) || !exists(wt.childToward(p)) {
			break
		}
		_ = wt.w.Remove(p)
		wt.watched = wt.watched[:0]
	}
	if fi, err := os.Stat(wt.dir); err == nil && fi.IsDir() {
		if wt.w.Add(wt.dir) == nil {
			wt.watched = append(wt.watched, wt.dir)
		}
	}
}

// watchAncestor watches the directory's parent, or the nearest ancestor
// that exists, and returns it ("" when nothing could be watched).
func (wt *watches) watchAncestor() string {
	for p := filepath.Dir(wt.dir); ; p = filepath.Dir(p) {
		if wt.w.Add(p) == nil {
			wt.watched = append(wt.watched, p)
			return p
		}
		if p == filepath.Dir(p) {
			return ""
		}
	}
}

// childToward returns the entry of ancestor that leads to the directory.
func (wt *watches) childToward(ancestor string) string {
	c := wt.dir
	for filepath.Dir(c) != ancestor && c != filepath.Dir(c) {
		c = filepath.Dir(c)
	}
	return c
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
