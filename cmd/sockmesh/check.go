package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"sockmesh/health"
	"sockmesh/lb"
	"sockmesh/registry"
	"sockmesh/servicefile"
)

func newCheckCmd(g *globalFlags) *cobra.Command {
	var rf rangeFlags
	var output string
	cmd := &cobra.Command{
		Use:   "check [DIR]",
		Short: "Validate a services directory without touching the kernel (exit 1 on any error)",
		Long: `check reads every *.yaml and *.yml file of DIR (default /etc/sockmesh/services.d)
as sockmesh run would, and prints the services with their VIPs, or every
problem with its file, line and field. It needs no privileges and changes
nothing, so it fits a pre-commit hook or a CI job. Exit status: 0 when all
files are valid, 1 otherwise.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := defaultServicesDir
			if len(args) == 1 {
				dir = args[0]
			}
			ranges, err := rf.ranges()
			if err != nil {
				return err
			}
			snap, err := registry.Check(registry.Options{Dir: dir, Ranges: ranges})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				err = writeCheckJSON(out, snap)
			case "table":
				err = writeCheckTable(out, snap)
			default:
				return fmt.Errorf("parse -o: %q is not table or json", output)
			}
			if err != nil {
				return err
			}
			if len(snap.Errors) > 0 {
				if output == "table" {
					fmt.Fprintln(cmd.ErrOrStderr())
					for _, e := range snap.Errors {
						fmt.Fprintln(cmd.ErrOrStderr(), e)
					}
				}
				return exitError{1}
			}
			return nil
		},
	}
	rf.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

const defaultServicesDir = "/etc/sockmesh/services.d"

// rangeFlags are the VIP range flags of run and check.
type rangeFlags struct{ v4, v6 string }

func (rf *rangeFlags) add(cmd *cobra.Command) { rf.addTo(cmd.Flags()) }

func (rf *rangeFlags) addTo(fs *pflag.FlagSet) {
	fs.StringVar(&rf.v4, "vip-range4", registry.DefaultRanges.V4.String(), "IPv4 range VIPs are derived from and must lie in")
	fs.StringVar(&rf.v6, "vip-range6", registry.DefaultRanges.V6.String(), "IPv6 range VIPs are derived from and must lie in")
}

func (rf *rangeFlags) ranges() (registry.Ranges, error) {
	v4, err := netip.ParsePrefix(rf.v4)
	if err != nil {
		return registry.Ranges{}, fmt.Errorf("parse --vip-range4: %w", err)
	}
	v6, err := netip.ParsePrefix(rf.v6)
	if err != nil {
		return registry.Ranges{}, fmt.Errorf("parse --vip-range6: %w", err)
	}
	r := registry.Ranges{V4: v4, V6: v6}
	return r, r.Validate()
}

func writeCheckTable(w io.Writer, s *registry.Snapshot) error {
	if len(s.Services) == 0 {
		fmt.Fprintln(w, "no valid services")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVIPS\tPORTS\tBACKENDS\tPOLICY\tHEALTH\tFILE")
	for _, sv := range s.Services {
		var vips, ports, backends []string
		for _, v := range sv.VIPs {
			vips = append(vips, v.String())
		}
		if sv.Derived {
			vips = append(vips, "(derived)")
		}
		for _, p := range sv.Ports {
			ports = append(ports, portString(p.String(), p.Name))
		}
		for _, b := range sv.Backends {
			s := b.Addr.String()
			if b.Port != 0 {
				s = netipAddrPort(b.Addr, b.Port)
			}
			if len(b.Ports) > 0 {
				var m []string
				for _, k := range slices.Sorted(maps.Keys(b.Ports)) {
					m = append(m, fmt.Sprintf("%s->%d", k, b.Ports[k]))
				}
				s += " (" + strings.Join(m, " ") + ")"
			}
			if b.Weight > 1 {
				s += fmt.Sprintf(" (weight %d)", b.Weight)
			}
			if b.State != lb.Active {
				s += " (" + b.State.String() + ")"
			}
			backends = append(backends, s)
		}
		if len(backends) == 0 {
			backends = []string{"none: refuses connections"}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sv.Name, strings.Join(vips, " "), strings.Join(ports, " "), strings.Join(backends, ", "), policyString(sv.Service), healthString(sv.Health), sv.File)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range s.Collisions {
		fmt.Fprintf(w, "note: %s\n", c)
	}
	return nil
}

// policyString is the POLICY column: the policy, the client key where it
// matters, and the affinity.
func policyString(s *servicefile.Service) string {
	out := s.Policy.String()
	if s.Policy == lb.Maglev || s.Affinity > 0 {
		out += " by " + s.Client.String()
	}
	if s.Affinity > 0 {
		out += ", affinity " + s.Affinity.String()
	}
	if s.CloseConnections {
		out += ", close connections"
	}
	return out
}

// healthString is the HEALTH column: the check and its timing.
func healthString(c *health.Check) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprintf("%s every %s (rise %d, fall %d)", c.Kind, c.Interval, c.Rise, c.Fall)
}

func portString(p, name string) string {
	if name == "" {
		return p
	}
	return p + "(" + name + ")"
}

func netipAddrPort(a netip.Addr, port uint16) string {
	return netip.AddrPortFrom(a, port).String()
}

// checkJSON is the -o json form of check.
type checkJSON struct {
	Services   []serviceJSON `json:"services"`
	Errors     []errorJSON   `json:"errors"`
	Collisions []string      `json:"collisions"`
}

type serviceJSON struct {
	Name     string        `json:"name"`
	File     string        `json:"file"`
	VIPs     []string      `json:"vips"`
	Derived  bool          `json:"derived"`
	Stale    bool          `json:"stale"`
	Ports    []portJSON    `json:"ports"`
	Backends []backendJSON `json:"backends"`
	Policy   string        `json:"policy"`
	Health   string        `json:"health"`
}

type portJSON struct {
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Name     string `json:"name,omitempty"`
}

type backendJSON struct {
	Address string            `json:"address"`
	Port    uint16            `json:"port,omitempty"`
	Weight  uint16            `json:"weight"`
	Ports   map[string]uint16 `json:"ports,omitempty"`
	State   string            `json:"state"`
}

type errorJSON struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func writeCheckJSON(w io.Writer, s *registry.Snapshot) error {
	out := checkJSON{Services: []serviceJSON{}, Errors: []errorJSON{}, Collisions: []string{}}
	for _, sv := range s.Services {
		js := serviceJSON{Name: sv.Name, File: sv.File, Derived: sv.Derived, Stale: sv.Stale, Policy: policyString(sv.Service), Health: healthString(sv.Health)}
		for _, v := range sv.VIPs {
			js.VIPs = append(js.VIPs, v.String())
		}
		for _, p := range sv.Ports {
			js.Ports = append(js.Ports, portJSON{p.Number, p.Proto.String(), p.Name})
		}
		for _, b := range sv.Backends {
			js.Backends = append(js.Backends, backendJSON{b.Addr.String(), b.Port, b.Weight, b.Ports, b.State.String()})
		}
		out.Services = append(out.Services, js)
	}
	for _, e := range s.Errors {
		out.Errors = append(out.Errors, errorJSON{e.File, e.Line, e.Column, e.Field, e.Msg})
	}
	for _, c := range s.Collisions {
		out.Collisions = append(out.Collisions, c.String())
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
