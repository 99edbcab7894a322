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
	Weight      uint16 `json:"weight"`
	State       string `json:"state"`
	Connections uint64 `json:"connections"`
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
	}
	names := map[lb.ServiceKey]name{}
	if st != nil {
		rep.Daemon.PID, rep.Daemon.Version, rep.Daemon.Started = st.PID, st.Version, st.Started
		rep.Daemon.Cgroup, rep.Daemon.DNS, rep.Daemon.Metrics = st.Cgroup, st.DNSListen, st.Metrics
		rep.Registry = &registryStatus{Dir: st.ServicesDir, Generation: st.Generation, Applied: st.Applied, ApplyTime: st.ApplyTime, Errors: st.Errors}
		for _, sv := range st.Services {
			svc, err := sv.parsed()
			if err != nil {
				continue // written by another version: the service shows unnamed
			}
			for _, ls := range svc.LBServices(sv.VIPs) {
				names[ls.Key] = name{sv.Name, sv.File, sv.Stale}
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
		n := names[s.Key]
		c := stats[s.Key]
		ss := svcStatus{
			Name: n.name, File: n.file, Stale: n.stale,
			VIP: s.Key.VIP.String(), Port: s.Key.Port, Protocol: s.Key.Proto.String(),
			Connections: c.Translations, Refused: c.Refused, Backends: []backendStatus{},
		}
		for _, b := range s.Backends {
			bs := backendStatus{Address: b.Addr.String(), Weight: b.Weight, State: "active"}
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
		fmt.Fprintf(w, "registry: %s, %d errors, %s\n", r.Dir, len(r.Errors), applied)
	}
	if len(rep.Services) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tVIP:PORT/PROTO\tBACKEND\tWEIGHT\tSTATE\tCONNECTIONS")
		for _, s := range rep.Services {
			name := orUnknown(s.Name)
			if s.Stale {
				name += " (stale)"
			}
			fmt.Fprintf(tw, "%s\t%s/%s\t\t\t\t%d\n", name, joinHostPort(s.VIP, s.Port), s.Protocol, s.Connections)
			if len(s.Backends) == 0 {
				fmt.Fprintf(tw, "\t\tnone: refuses connections\t\t\t%d refused\n", s.Refused)
			}
			for _, b := range s.Backends {
				fmt.Fprintf(tw, "\t\t%s\t%d\t%s\t%d\n", b.Address, b.Weight, b.State, b.Connections)
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
