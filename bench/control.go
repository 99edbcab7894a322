package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"sockmesh/lb"
)

// ctlSpec is what the control-plane role does: Files times, write a new
// service file beside Dir, rename() it in, and time until a connect to its
// VIP succeeds and until the DNS stub answers its name.
type ctlSpec struct {
	Dir     string
	Files   int
	DNS     string // the daemon's stub, address:port
	Zone    string // e.g. mesh.internal.
	Backend string // address:port the new services send to
}

// ctlResult holds one latency pair per file, in nanoseconds.
type ctlResult struct {
	Connect, DNS []time.Duration
}

// ctlVIP is the VIP of the i-th control-plane file: 198.18.0.100 up.
func ctlVIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i)}) }

// runControlPlane is the ctl role. It runs inside the daemon's cgroup, so
// its connects to a VIP are the datapath's to rewrite. Before the service
// is live, a connect fails at once: the VIP range routes to unreachable.
func runControlPlane(args []string) error {
	var spec ctlSpec
	if len(args) != 1 || json.Unmarshal([]byte(args[0]), &spec) != nil {
		return errors.New("ctl: want one JSON spec")
	}
	if spec.Files > 100 {
		return errors.New("ctl: at most 100 files (VIPs 198.18.0.100-199)")
	}
	backend, err := netip.ParseAddrPort(spec.Backend)
	if err != nil {
		return fmt.Errorf("parse backend: %w", err)
	}
	client := &dns.Client{Timeout: 200 * time.Millisecond}
	var res ctlResult
	for i := range spec.Files {
		name := fmt.Sprintf("ctl-%d", i)
		vip := ctlVIP(i)
		body := fmt.Sprintf("name: %s\nvip: %s\nports: [80]\nbackends: [%s]\n", name, vip, backend)
		tmp := filepath.Join(filepath.Dir(spec.Dir), "."+name+".yaml")
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			return fmt.Errorf("write service: %w", err)
		}
		q := new(dns.Msg)
		q.SetQuestion(name+"."+spec.Zone, dns.TypeA)
		target := sockaddr(netip.AddrPortFrom(vip, 80))
		start := time.Now()
		if err := os.Rename(tmp, filepath.Join(spec.Dir, name+".yaml")); err != nil {
			return fmt.Errorf("rename service in: %w", err)
		}
		var connected, answered time.Duration
		for connected == 0 || answered == 0 {
			if time.Since(start) > 10*time.Second {
				return fmt.Errorf("ctl: %s not live after 10s (connect %v, dns %v)", name, connected, answered)
			}
			if connected == 0 && dialOnce(target) {
				connected = time.Since(start)
			}
			if answered == 0 {
				if r, _, err := client.Exchange(q, spec.DNS); err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
					answered = time.Since(start)
				}
			}
		}
		res.Connect = append(res.Connect, connected)
		res.DNS = append(res.DNS, answered)
		time.Sleep(5 * time.Millisecond) // edits come apart, not in one burst
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// dialOnce reports whether a TCP connect to sa succeeds.
func dialOnce(sa unix.Sockaddr) bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Connect(fd, sa) == nil
}

// controlPlane runs the ctl role against d and returns its latencies.
func (e *env) controlPlane(d *daemon, files int) (ctlResult, error) {
	spec, _ := json.Marshal(ctlSpec{Dir: d.dir, Files: files, DNS: d.dns.String(), Zone: "mesh.internal.", Backend: fmt.Sprintf("%s:%d", backendIP, rrPort)})
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
	defer cancel()
	cmd, err := e.role(ctx, d.cgroup, "ctl", string(spec))
	if err != nil {
		return ctlResult{}, err
	}
	var res ctlResult
	if err := outputJSON(cmd, &res); err != nil {
		return ctlResult{}, fmt.Errorf("control plane on %d services: %w", d.services, err)
	}
	return res, nil
}

// sustainedUpdates rewrites the backends of `files` services as fast as it
// can for d (rename of a full new file each time), then waits until the
// datapath holds every file's last version. The rate is writes per second
// over the whole time, the catch-up included: what the daemon sustains.
func (e *env) sustainedUpdates(dm *daemon, files int, d time.Duration) (rate float64, lag time.Duration, err error) {
	write := func(i, version int) error {
		name := fmt.Sprintf("upd-%d", i)
		body := fmt.Sprintf("name: %s\nvip: %s\nports: [80]\nbackends: [%s:%d]\n", name, updVIP(i), decoyIP, 1000+version)
		tmp := filepath.Join(filepath.Dir(dm.dir), "."+name+".yaml")
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			return fmt.Errorf("write service: %w", err)
		}
		return os.Rename(tmp, filepath.Join(dm.dir, name+".yaml"))
	}
	for i := range files {
		if err := write(i, 0); err != nil {
			return 0, 0, err
		}
	}
	if err := waitVersions(e.ctx, dm.pinDir, files, func(int) int { return 0 }, time.Minute); err != nil {
		return 0, 0, err
	}
	last := make([]int, files)
	writes := 0
	start := time.Now()
	for time.Since(start) < d && writes < 1_000_000 && e.ctx.Err() == nil {
		i := writes % files
		last[i]++
		if err := write(i, last[i]); err != nil {
			return 0, 0, err
		}
		writes++
	}
	stopped := time.Now()
	if err := waitVersions(e.ctx, dm.pinDir, files, func(i int) int { return last[i] }, time.Minute); err != nil {
		return 0, 0, err
	}
	done := time.Now()
	return float64(writes) / done.Sub(start).Seconds(), done.Sub(stopped), nil
}

// updVIP is the VIP of the i-th update-test service: 198.18.0.200 up.
func updVIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(200 + i)}) }

// waitVersions waits until, in the pinned maps, each update-test service i
// sends to the backend port of version want(i).
func waitVersions(ctx context.Context, pinDir string, files int, want func(int) int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		p, err := lb.ReadPinned(pinDir)
		if err != nil {
			return err
		}
		got := map[netip.Addr]uint16{}
		for _, s := range p.Services {
			if len(s.Backends) == 1 {
				got[s.Key.VIP] = s.Backends[0].Addr.Port()
			}
		}
		ok := true
		for i := range files {
			if got[updVIP(i)] != uint16(1000+want(i)) {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("updates not live after %v", within)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(2 * time.Millisecond)
	}
}
