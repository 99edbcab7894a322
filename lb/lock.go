package lb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned by Lock when another process holds the pin
// directory.
var ErrLocked = errors.New("another process holds the pin directory")

// PinLock is an exclusive hold on a pin directory: one daemon per
// datapath. The kernel drops it when the holder exits, however it exits,
// so a killed daemon never leaves a stale lock.
type PinLock struct{ f *os.File }

// Lock mounts a bpffs above pinDir if needed, creates pinDir and takes an
// exclusive flock on it, failing at once with ErrLocked when another
// process holds it.
func Lock(pinDir string) (*PinLock, error) {
	if err := os.MkdirAll(filepath.Dir(pinDir), 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", pinDir, err)
	}
	if err := EnsureBPFFS(filepath.Dir(pinDir)); err != nil {
		return nil, fmt.Errorf("lock %s: %w", pinDir, err)
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", pinDir, err)
	}
	return lockDir(pinDir)
}

// TryLock takes the lock on an existing pin directory without creating or
// mounting anything; a missing directory is os.ErrNotExist.
func TryLock(pinDir string) (*PinLock, error) { return lockDir(pinDir) }

func lockDir(pinDir string) (*PinLock, error) {
	f, err := os.Open(pinDir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", pinDir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", pinDir, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", pinDir, err)
	}
	return &PinLock{f: f}, nil
}

// Held reports whether a process holds the lock on pinDir, without taking
// it (a shared probe, which a daemon starting at the same instant retries
// past). A missing directory is not held.
func Held(pinDir string) (bool, error) {
	f, err := os.Open(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe lock %s: %w", pinDir, err)
	}
	defer f.Close()
	switch err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); {
	case errors.Is(err, unix.EWOULDBLOCK):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("probe lock %s: %w", pinDir, err)
	}
	return false, nil
}

// Unlock releases the lock.
func (l *PinLock) Unlock() error { return l.f.Close() }
