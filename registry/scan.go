package registry

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// IsServiceFile reports whether a directory entry name is a service file:
// *.yaml or *.yml, not hidden (editors and config managers write hidden
// temporary files and rename them into place).
func IsServiceFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// fileID identifies one version of a file: if none of these changed, the
// contents did not either (ctime moves on every write, chmod and rename).
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
	mode         uint32
	uid          uint32
}

func idOf(fi fs.FileInfo) fileID {
	st := fi.Sys().(*syscall.Stat_t)
	return fileID{
		dev:   uint64(st.Dev),
		ino:   st.Ino,
		size:  st.Size,
		mtime: st.Mtim.Nano(),
		ctime: st.Ctim.Nano(),
		mode:  st.Mode,
		uid:   st.Uid,
	}
}

// owners are the users a service file or directory may belong to, like
// sshd's StrictModes: root, and the user sockmesh runs as.
func owners() []uint32 {
	return []uint32{0, uint32(os.Geteuid())}
}

// checkOwner refuses what an unprivileged user could have written: this
// directory decides where every process's traffic goes.
func checkOwner(path string, fi fs.FileInfo) error {
	st := fi.Sys().(*syscall.Stat_t)
	ok := false
	for _, u := range owners() {
		ok = ok || st.Uid == u
	}
	if !ok {
		return fmt.Errorf("%s is owned by uid %d, not by root: refused, since a service file decides where traffic goes (chown root %s)", path, st.Uid, path)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %04o): refused, since a service file decides where traffic goes (chmod go-w %s)", path, perm, path)
	}
	return nil
}

// checkDir checks the services directory itself the same way.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return checkOwner(dir, fi)
}

// errNotRegular marks a directory entry that is not a regular file (after
// following symlinks).
var errNotRegular = errors.New("not a regular file")

// statFile returns the identity of the file at path (following a symlink,
// as config managers link files into place) and checks its owner and mode.
func statFile(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	if !fi.Mode().IsRegular() {
		return fileID{}, errNotRegular
	}
	id := idOf(fi)
	return id, checkOwner(path, fi)
}

// readFile reads at most limit+1 bytes, so an oversized file is reported
// rather than read whole.
func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit+1))
}
