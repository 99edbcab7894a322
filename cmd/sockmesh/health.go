package main

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"sockmesh/health"
	"sockmesh/internal/sockdiag"
	"sockmesh/lb"
	"sockmesh/registry"
)

// healthTargets lists the backends the snapshot's services ask to check.
func healthTargets(snap *registry.Snapshot) []health.Target {
	var out []health.Target
	for _, sv := range snap.Services {
		out = append(out, sv.HealthTargets()...)
	}
	return out
}

// socketCloser closes, in the background, the sockets the datapath
// connected to backends that no longer take connections: connected UDP
// sockets always (a resolver stuck on a dead backend otherwise never
// recovers), TCP connections when the service asks. Only sockets the
// datapath itself sent there through that service are closed: a process
// that dialled the backend's address directly is left alone.
type socketCloser struct {
	cgroup string
	dp     *lb.Datapath
	log    *slog.Logger

	mu      sync.Mutex
	pending []lb.GoneBackend
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newSocketCloser(cgroup string, dp *lb.Datapath, log *slog.Logger) *socketCloser {
	c := &socketCloser{cgroup: cgroup, dp: dp, log: log, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c
}

// add queues backends gone in one apply; never blocks.
func (c *socketCloser) add(gone []lb.GoneBackend) {
	if len(gone) == 0 {
		return
	}
	c.mu.Lock()
	c.pending = append(c.pending, gone...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *socketCloser) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			return
		case <-c.wake:
		}
		c.mu.Lock()
		gone := c.pending
		c.pending = nil
		c.mu.Unlock()
		c.closeSockets(gone)
	}
}

func (c *socketCloser) close() {
	close(c.stop)
	<-c.done
}

func (c *socketCloser) closeSockets(gone []lb.GoneBackend) {
	// What may be closed: connected UDP sockets always, TCP ones when
	// their service says close_connections. Only those are listed.
	byRemote := map[netip.AddrPort][]lb.GoneBackend{}
	listed := map[sockdiag.Target]bool{}
	var targets []sockdiag.Target
	for _, g := range gone {
		if g.Service.Proto != lb.UDP && !g.CloseConnections {
			continue
		}
		if t := (sockdiag.Target{Remote: g.Backend, Proto: uint8(g.Service.Proto)}); !listed[t] {
			listed[t] = true
			targets = append(targets, t)
		}
		byRemote[g.Backend] = append(byRemote[g.Backend], g)
	}
	if len(targets) == 0 {
		return
	}
	var closed []string
	match := func(s sockdiag.Socket) bool {
		remote := netip.AddrPortFrom(s.Remote.Addr().Unmap(), s.Remote.Port())
		var candidates []lb.GoneBackend
		for _, g := range byRemote[remote] {
			if uint8(g.Service.Proto) == s.Proto {
				candidates = append(candidates, g)
			}
		}
		if len(candidates) == 0 {
			return false
		}
		via, ok := c.dp.ConnectedVia(s.Cookie, remote)
		if !ok {
			return false
		}
		for _, g := range candidates {
			if via.VIP.Unmap() == g.Service.VIP.Unmap() && via.Port == g.Service.Port && via.Proto == g.Service.Proto {
				closed = append(closed, lb.Proto(s.Proto).String()+" "+s.Local.String()+"->"+remote.String())
				return true
			}
		}
		return false
	}
	start := time.Now()
	res, err := sockdiag.DestroyConnected(c.cgroup, targets, match)
	if err != nil {
		c.log.Warn("close sockets of gone backends", "err", err)
	}
	if res.Closed > 0 {
		c.log.Info("closed sockets connected to backends that are gone", "sockets", res.Closed, "namespaces", res.Namespaces, "examined", res.Examined, "took", time.Since(start).Round(time.Microsecond), "closed", strings.Join(closed, ", "))
	}
}

// healthJSON is one checked backend in the health file, which status
// reads.
type healthJSON struct {
	Service      string        `json:"service"`
	Backend      string        `json:"backend"`
	Probe        string        `json:"probe"`
	Check        string        `json:"check"`
	State        string        `json:"state"`
	Since        time.Time     `json:"since"`
	LastCheck    time.Time     `json:"last_check,omitzero"`
	LastOK       bool          `json:"last_ok"`
	LastError    string        `json:"last_error,omitempty"`
	LastDuration time.Duration `json:"last_duration_ns"`
	Passes       uint64        `json:"passes"`
	Failures     uint64        `json:"failures"`
}

func healthOf(sts []health.Status) []healthJSON {
	out := make([]healthJSON, 0, len(sts))
	for _, s := range sts {
		out = append(out, healthJSON{
			Service: s.Service, Backend: s.Backend, Probe: s.Addr.String(), Check: s.Check.Kind.String(),
			State: s.State.String(), Since: s.Since, LastCheck: s.LastCheck, LastOK: s.LastOK,
			LastError: s.LastError, LastDuration: s.LastDuration, Passes: s.Passes, Failures: s.Failures,
		})
	}
	return out
}

// healthInterval is how often the health file is rewritten while checks
// run (only when something changed).
const healthInterval = time.Second

// writeHealth keeps the health file up to date until stop closes, then
// removes it (no daemon, no checks).
func writeHealth(path string, mon *health.Monitor, stop <-chan struct{}, log *slog.Logger) {
	defer os.Remove(path)
	var last []byte
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		data, err := json.Marshal(healthOf(mon.Statuses()))
		if err == nil && string(data) != string(last) {
			if err = replaceFile(path, data); err == nil {
				last = data
			}
		}
		if err != nil {
			log.Warn("health file not updated", "err", err)
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}
