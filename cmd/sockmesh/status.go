package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"sockmesh/lb"
	"sockmesh/servicefile"
)

func newStatusCmd() *cobra.Command {
	var paths pathFlags
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the services, backends and connection counts the datapath serves, and registry errors",
		Long: `status reads the pinned maps directly, so it works whether or not the daemon
runs (and says which). Service names, files and registry errors come from the
state file the daemon keeps in --state-dir; connection counts are the
datapath's own per-CPU counters: connects (TCP and connected UDP) and
unconnected UDP datagrams sent to a backend, since the service was created.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("parse -o: %q is not table or json", output)
			}
			rep, err := readStatus(&paths)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.writeTable(cmd.OutOrStdout())
		},
	}
	paths.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// statusReport is the -o json form of status.
type statusReport struct {
	Daemon   daemonStatus    `json:"daemon"`
	Datapath datapathStatus  `json:"datapath"`
	Registry *registryStatus `json:"registry,omitempty"`
	Services []svcStatus     `json:"services"`
}

type daemonStatus struct {
	Running bool      `json:"running"`
	PID     int       `json:"pid,omitempty"`
	Version string    `json:"version,omitempty"`
	Started time.Time `json:"started,omitzero"`
	Cgroup  string    `json:"cgroup,omitempty"`
	DNS     []string  `json:"dns_listen,omitempty"`
	Metrics string    `json:"metrics_listen,omitempty"`
}

type datapathStatus struct {
	Pinned   bool   `json:"pinned"`
	PinDir   string `json:"pin_dir"`
	Programs int    `json:"programs_attached"`
}

type registryStatus struct {
	Dir        string        `json:"dir"`
	Sources    []sourceJSON  `json:"sources,omitempty"`
	Generation uint64        `json:"generation"`
	Applied    time.Time     `json:"applied,omitzero"`
	ApplyTime  time.Duration `json:"apply_time_ns"`
	Errors     []errorJSON   `json:"errors"`
}

// svcStatus is one (VIP, port, protocol) the maps serve.
type svcStatus struct {
	Name        string          `json:"name"`
	File        string          `json:"file,omitempty"`
	Stale       bool            `json:"stale,omitempty"`
	VIP         string          `json:"vip"`
	Port        uint16          `json:"port"`
	Protocol    string          `json:"protocol"`
	Connections uint64          `json:"connections"`
	Refused     uint64          `json:"refused"`
	Backends    []backendStatus `json:"backends"`
}

type backendStatus struct {
	Address string `json:"address"`
	// Weight is the backend's share of the service's slots (weights
	// divided by their greatest common divisor).
	Weight uint16 `json:"weight"`
	// State is active, draining or down: the file's state, down when the
	// health checks hold the backend down.
	State       string `json:"state"`
	Connections uint64 `json:"connections"`
	// Health is what the health checks say, when the service has them.
	Health *healthJSON `json:"health,omitempty"`
	// From is the backends document that added the backend, when not
	// the service's own file.
	From string `json:"from,omitempty"`
}

func readStatus(paths *pathFlags) (*statusReport, error) {
	st, err := readState(paths.stateFile())
	if err != nil {
		fmt.Fprintf(os.Stderr, "sockmesh: warning: %v: showing the pinned maps without names\n", err)
		st = nil
	}
	running, err := lb.Held(paths.pinDir)
	if err != nil {
		return nil, fmt.Errorf("read status: %w", err)
	}
	rep := &statusReport{
		Daemon:   daemonStatus{Running: running},
		Datapath: datapathStatus{PinDir: paths.pinDir},
		Services: []svcStatus{},
	}
	type name struct {
		name, file string
		stale      bool
		svc        lb.Service // as the daemon applied it, all backends
		// backends are the file's, in svc.Backends' order (LBServices
		// keeps it): for each one's check and document.
		backends []servicefile.Backend
	}
	names := map[lb.ServiceKey]name{}
	checks := map[string]map[string]*healthJSON{} // service -> backend name
	if hs, err := readHealth(paths.healthFile()); err == nil {
		for i, h := range hs {
			if checks[h.Service] == nil {
				checks[h.Service] = map[string]*healthJSON{}
			}
			checks[h.Service][h.Backend] = &hs[i]
		}
	}
	if st != nil {
		rep.Daemon.PID, rep.Daemon.Version, rep.Daemon.Started = st.PID, st.Version, st.Started
		rep.Daemon.Cgroup, rep.Daemon.DNS, rep.Daemon.Metrics = st.Cgroup, st.DNSListen, st.Metrics
		rep.Registry = &registryStatus{Dir: st.ServicesDir, Sources: st.Sources, Generation: st.Generation, Applied: st.Applied, ApplyTime: st.ApplyTime, Errors: st.Errors}
		for _, sv := range st.Services {
			svc, err := sv.parsed()
			if err != nil {
				continue // written by another version: the service shows unnamed
			}
			down := func(b string) bool {
				h := checks[sv.Name][b]
				return h != nil && h.State == "down"
			}
			for _, ls := range svc.LBServices(sv.VIPs, down) {
				names[ls.Key.Normalize()] = name{sv.Name, sv.File, sv.Stale, ls, svc.Backends}
			}
		}
	}
	pinned, err := lb.ReadPinned(paths.pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return rep, nil
	}
	if err != nil {
		return nil, err
	}
	rep.Datapath.Pinned = true
	for _, l := range pinned.Links {
		if l.CgroupID != 0 {
			rep.Datapath.Programs++
		}
	}
	stats := map[lb.ServiceKey]lb.ServiceStats{}
	for _, s := range pinned.Stats {
		stats[s.Key] = s
	}
	for _, s := range pinned.Services {
		n, named := names[s.Key]
		c := stats[s.Key]
		if named {
			// The file's view: every backend, in every state (the maps
			// hold only those taking new connections).
			s.Backends = n.svc.Backends
		}
		ss := svcStatus{
			Name: n.name, File: n.file, Stale: n.stale,
			VIP: s.Key.VIP.String(), Port: s.Key.Port, Protocol: s.Key.Proto.String(),
			Connections: c.Translations, Refused: c.Refused, Backends: []backendStatus{},
		}
		for i, b := range s.Backends {
			bs := backendStatus{Address: b.Addr.String(), Weight: max(b.Weight, 1), State: b.State.String()}
			if named {
				fb := n.backends[i]
				bs.Health, bs.From = checks[n.name][fb.Name()], fb.From
			}
			for _, bc := range c.Backends {
				if bc.Addr == b.Addr {
					bs.Connections = bc.Translations
				}
			}
			ss.Backends = append(ss.Backends, bs)
		}
		rep.Services = append(rep.Services, ss)
	}
	// By name, then as the datapath orders keys (IPv4 first); unnamed last.
	slices.SortStableFunc(rep.Services, func(a, b svcStatus) int {
		if (a.Name == "") != (b.Name == "") {
			return cmp.Compare(b.Name, a.Name)
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return rep, nil
}

func (rep *statusReport) writeTable(w io.Writer) error {
	d := rep.Daemon
	switch {
	case d.Running && d.PID == 0:
		fmt.Fprintln(w, "daemon:   starting")
	case d.Running:
		fmt.Fprintf(w, "daemon:   running, pid %d, %s, up %s\n", d.PID, d.Version, time.Since(d.Started).Round(time.Second))
	case d.PID != 0:
		fmt.Fprintf(w, "daemon:   not running (last pid %d); read from the pinned maps, which keep serving\n", d.PID)
	default:
		fmt.Fprintln(w, "daemon:   not running")
	}
	if !rep.Datapath.Pinned {
		fmt.Fprintf(w, "datapath: nothing pinned in %s\n", rep.Datapath.PinDir)
	} else {
		fmt.Fprintf(w, "datapath: %d programs attached to %s, pinned in %s\n", rep.Datapath.Programs, orUnknown(d.Cgroup), rep.Datapath.PinDir)
	}
	if d.Running && len(d.DNS) > 0 {
		fmt.Fprintf(w, "dns:      %s\n", strings.Join(d.DNS, " "))
	}
	if d.Running && d.Metrics != "" {
		fmt.Fprintf(w, "metrics:  http://%s/metrics\n", d.Metrics)
	}
	if r := rep.Registry; r != nil {
		applied := "nothing applied yet"
		if !r.Applied.IsZero() {
			applied = fmt.Sprintf("last applied %s ago in %s", time.Since(r.Applied).Round(time.Second), r.ApplyTime.Round(time.Microsecond))
		}
		fmt.Fprintf(w, "registry: %s, %d errors, %s\n", orNone(r.Dir), len(r.Errors), applied)
		for _, s := range r.Sources {
			state := fmt.Sprintf("current at revision %d", s.Revision)
			if s.Stale {
				state = fmt.Sprintf("STALE for %s (%s): serving its last %d services", time.Since(s.Since).Round(time.Second), s.Err, s.Docs)
			}
			fmt.Fprintf(w, "          %s: %d services, %s\n", s.Name, s.Docs, state)
		}
	}
	if len(rep.Services) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tVIP:PORT/PROTO\tBACKEND\tWEIGHT\tSTATE\tHEALTH\tSINCE\tCONNECTIONS")
		for _, s := range rep.Services {
			name := orUnknown(s.Name)
			if s.Stale {
				name += " (stale)"
			}
			fmt.Fprintf(tw, "%s\t%s/%s\t\t\t\t\t\t%d\n", name, joinHostPort(s.VIP, s.Port), s.Protocol, s.Connections)
			if len(s.Backends) == 0 {
				fmt.Fprintf(tw, "\t\tnone: refuses connections\t\t\t\t\t%d refused\n", s.Refused)
			}
			for _, b := range s.Backends {
				check, since := "-", "-"
				if h := b.Health; h != nil {
					check, since = h.summary(), time.Since(h.Since).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "\t\t%s\t%d\t%s\t%s\t%s\t%d\n", b.Address, b.Weight, b.State, check, since, b.Connections)
			}
			if s.Refused > 0 && len(s.Backends) > 0 {
				fmt.Fprintf(tw, "\t\t(refused: no backend taking connections)\t\t\t\t\t%d\n", s.Refused)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if r := rep.Registry; r != nil && len(r.Errors) > 0 {
		fmt.Fprintln(w, "\nerrors (the last good version of each file stays live):")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func joinHostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func (e errorJSON) String() string {
	se := servicefile.Error{File: e.File, Pos: servicefile.Pos{Line: e.Line, Column: e.Column}, Field: e.Field, Msg: e.Message}
	return se.Error()
}

// summary is the HEALTH column: the checks' verdict and the last result.
func (h *healthJSON) summary() string {
	last := "not checked yet"
	switch {
	case h.LastCheck.IsZero():
	case h.LastOK:
		last = fmt.Sprintf("%s ok in %s, %s ago", h.Check, h.LastDuration.Round(10*time.Microsecond), time.Since(h.LastCheck).Round(time.Second))
	default:
		last = fmt.Sprintf("%s failed %s ago: %s", h.Check, time.Since(h.LastCheck).Round(time.Second), h.LastError)
	}
	return h.State + " (" + last + ")"
}

// readHealth reads the health file; a missing one has no checks.
func readHealth(path string) ([]healthJSON, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var hs []healthJSON
	if err := json.Unmarshal(data, &hs); err != nil {
		return nil, fmt.Errorf("read health %s: %w", path, err)
	}
	return hs, nil
}

func orNone(s string) string {
	if s == "" {
		return "no directory"
	}
	return s
}
