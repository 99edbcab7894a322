package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"sockmesh/registry"
	"sockmesh/servicefile"
)

const (
	defaultPinDir   = "/sys/fs/bpf/sockmesh"
	defaultStateDir = "/run/sockmesh"
	stateFileName   = "state.json"
)

// pathFlags locate a datapath: its pins, and the state file the daemon
// keeps next to them (names, errors, what it added to the host).
type pathFlags struct {
	pinDir   string
	stateDir string
}

func (p *pathFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.pinDir, "pin-dir", defaultPinDir, "bpffs directory of the pinned maps and links")
	cmd.Flags().StringVar(&p.stateDir, "state-dir", defaultStateDir, "directory of the daemon's state file")
}

// stateFile is the state of the datapath in pinDir: state.json for the
// default pin directory, a name of its own for any other, so instances on
// different pin directories never share one.
func (p *pathFlags) stateFile() string {
	pin, err := filepath.Abs(p.pinDir)
	if err != nil {
		pin = filepath.Clean(p.pinDir)
	}
	if pin == defaultPinDir {
		return filepath.Join(p.stateDir, stateFileName)
	}
	sum := sha256.Sum256([]byte(pin))
	return filepath.Join(p.stateDir, fmt.Sprintf("state-%x.json", sum[:6]))
}

// healthFile is where the daemon keeps its health checks' results, next
// to the state file: rewritten every second while checks run.
func (p *pathFlags) healthFile() string {
	return strings.TrimSuffix(p.stateFile(), ".json") + ".health.json"
}

// daemonState is what the daemon leaves in its state file: enough for
// status to name what the pinned maps serve, for down to undo what run
// added to the host, for exec to find the mesh, and for the next run to
// keep serving last good versions of files that broke meanwhile. Like the
// pins, it lives on a tmpfs and is gone after a reboot.
type daemonState struct {
	PID         int       `json:"pid"`
	Version     string    `json:"version"`
	Started     time.Time `json:"started"`
	PinDir      string    `json:"pin_dir"`
	ServicesDir string    `json:"services_dir"`
	Cgroup      string    `json:"cgroup"`
	// CgroupCreated is set when run made the cgroup (down removes it
	// when empty).
	CgroupCreated bool `json:"cgroup_created,omitempty"`
	// BPFFSMounted is the bpffs run mounted, if it did.
	BPFFSMounted string `json:"bpffs_mounted,omitempty"`
	// Routes are the unreachable routes run installed; LocalAddrs the
	// addresses it put on lo.
	Routes     []netip.Prefix `json:"routes,omitempty"`
	LocalAddrs []netip.Addr   `json:"local_addrs,omitempty"`
	DNSListen  []string       `json:"dns_listen,omitempty"`
	DNSZone    string         `json:"dns_zone,omitempty"`
	Metrics    string         `json:"metrics_listen,omitempty"`

	Generation uint64         `json:"generation"`
	Applied    time.Time      `json:"applied"`
	ApplyTime  time.Duration  `json:"apply_time_ns"`
	Services   []stateService `json:"services"`
	Errors     []errorJSON    `json:"errors"`
	Sources    []sourceJSON   `json:"sources,omitempty"`
}

// sourceJSON is a registry source besides the directory (an etcd prefix).
type sourceJSON struct {
	Name     string    `json:"name"`
	Stale    bool      `json:"stale"`
	Err      string    `json:"error,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	Revision int64     `json:"revision"`
	Docs     int       `json:"services"`
}

// stateService is a served service: its name and file, and the text of
// the version served, so its ports and backends can be rebuilt.
type stateService struct {
	Name    string       `json:"name"`
	File    string       `json:"file"`
	VIPs    []netip.Addr `json:"vips"`
	Derived bool         `json:"derived,omitempty"`
	Stale   bool         `json:"stale,omitempty"`
	Source  string       `json:"source"`
	// BackendsDocs are the backends documents whose backends the service
	// served too (from other hosts, say).
	BackendsDocs []stateDoc `json:"backends_docs,omitempty"`
}

// stateDoc is a document's file and text.
type stateDoc struct {
	File   string `json:"file"`
	Source string `json:"source"`
}

// withSnapshot returns a copy of st describing snap.
func (st daemonState) withSnapshot(snap *registry.Snapshot) daemonState {
	st.Generation, st.Applied, st.ApplyTime = snap.Generation, snap.Applied, snap.ApplyTime
	st.Services = make([]stateService, 0, len(snap.Services))
	for _, sv := range snap.Services {
		ss := stateService{
			Name: sv.Name, File: sv.File, VIPs: sv.VIPs, Derived: sv.Derived, Stale: sv.Stale, Source: string(sv.Source),
		}
		for _, d := range sv.BackendsDocs {
			ss.BackendsDocs = append(ss.BackendsDocs, stateDoc{d.File, string(d.Doc.Source)})
		}
		st.Services = append(st.Services, ss)
	}
	st.Sources = nil
	for _, s := range snap.Sources {
		st.Sources = append(st.Sources, sourceJSON{s.Name, s.Stale, s.Err, s.Since, s.Revision, s.Docs})
	}
	st.Errors = make([]errorJSON, 0, len(snap.Errors))
	for _, e := range snap.Errors {
		st.Errors = append(st.Errors, errorJSON{e.File, e.Line, e.Column, e.Field, e.Msg})
	}
	return st
}

// lastGood are the texts the state served, by file, for registry.Options.
func (st *daemonState) lastGood() map[string][]byte {
	out := make(map[string][]byte, len(st.Services))
	for _, sv := range st.Services {
		out[sv.File] = []byte(sv.Source)
		for _, d := range sv.BackendsDocs {
			out[d.File] = []byte(d.Source)
		}
	}
	return out
}

// parsed rebuilds a state service's ports and backends from its text and
// those of its backends documents.
func (sv *stateService) parsed() (*servicefile.Service, error) {
	svc, err := servicefile.Parse(sv.File, []byte(sv.Source))
	if err != nil || len(sv.BackendsDocs) == 0 {
		return svc, err
	}
	docs := make([]servicefile.Contribution, 0, len(sv.BackendsDocs))
	for _, d := range sv.BackendsDocs {
		doc, err := servicefile.Parse(d.File, []byte(d.Source))
		if err != nil {
			return nil, err
		}
		docs = append(docs, servicefile.Contribution{File: d.File, Doc: doc})
	}
	merged, _ := servicefile.Merge(svc, docs)
	return merged, nil
}

// readState reads a state file; a missing one is (nil, nil).
func readState(path string) (*daemonState, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st daemonState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("read state %s: %w", path, err)
	}
	return &st, nil
}

// writeState replaces the state file atomically.
func writeState(path string, st *daemonState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := replaceFile(path, data); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// replaceFile puts data at path (mode 0644) through a new file renamed
// into place: readers see the old or the new contents, never part, and a
// link someone planted at path is replaced, not followed.
func replaceFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a failure; renamed away otherwise
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	return err
}

// stateWriter writes the state file in the background, the latest
// snapshot winning, so the registry's loop never waits on the disk.
type stateWriter struct {
	mu sync.Mutex
	// written is the generation on disk: an older snapshot never
	// replaces a newer one.
	written uint64
	path    string
	base    daemonState
	log     *slog.Logger
	next    chan *registry.Snapshot
	stop    chan struct{}
	done    chan struct{}
}

func newStateWriter(path string, base daemonState, log *slog.Logger) *stateWriter {
	w := &stateWriter{path: path, base: base, log: log, next: make(chan *registry.Snapshot, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w
}

// write writes snap now, in the caller's goroutine.
func (w *stateWriter) write(snap *registry.Snapshot) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if snap.Generation < w.written {
		return nil
	}
	st := w.base.withSnapshot(snap)
	if err := writeState(w.path, &st); err != nil {
		return err
	}
	w.written = snap.Generation
	return nil
}

// publish queues snap, replacing one not yet written.
func (w *stateWriter) publish(snap *registry.Snapshot) {
	for {
		select {
		case w.next <- snap:
			return
		default:
		}
		select {
		case <-w.next:
		default:
		}
	}
}

// stateInterval is the least time between two background writes. With
// 10,000 services a write costs tens of milliseconds of CPU; under a
// stream of changes, writing every snapshot kept a core busy and slowed
// the registry's own applies. Snapshots that come meanwhile coalesce.
const stateInterval = 100 * time.Millisecond

func (w *stateWriter) loop() {
	defer close(w.done)
	for snap := range w.next {
		if err := w.write(snap); err != nil {
			w.log.Warn("state file not updated: status and the next start see an older state", "err", err)
		}
		select {
		case <-time.After(stateInterval):
		case <-w.stop:
		}
	}
}

// close writes what is queued and stops.
func (w *stateWriter) close() {
	close(w.stop)
	close(w.next)
	<-w.done
}
