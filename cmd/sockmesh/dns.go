package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"sockmesh/dnsstub"
	"sockmesh/registry"
)

// dnsFlags configure the DNS stub of run (and the snippet of resolver).
type dnsFlags struct {
	listen      []string
	zone        string
	upstreams   []string
	allow       []string
	ttl         time.Duration
	negativeTTL time.Duration
}

// addListen adds the flags resolver shares with run.
func (f *dnsFlags) addListen(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.listen, "dns-listen", []string{dnsstub.DefaultListen.String()}, `addresses the DNS stub listens on, UDP and TCP ("off": no DNS)`)
	cmd.Flags().StringVar(&f.zone, "dns-zone", dnsstub.DefaultZone, "DNS zone the services are named in: <service>.<zone>")
}

func (f *dnsFlags) add(cmd *cobra.Command) {
	f.addListen(cmd)
	cmd.Flags().StringSliceVar(&f.upstreams, "dns-upstream", nil, "resolvers asked for names outside the zone, addr or addr:port (default: the nameservers of /etc/resolv.conf at start)")
	cmd.Flags().StringSliceVar(&f.allow, "dns-allow", []string{"127.0.0.0/8", "::1/128"}, "client networks the DNS stub answers; others are refused")
	cmd.Flags().DurationVar(&f.ttl, "dns-ttl", dnsstub.DefaultTTL, "TTL of service records (VIPs are stable, so it can be long)")
	cmd.Flags().DurationVar(&f.negativeTTL, "dns-negative-ttl", dnsstub.DefaultNegativeTTL, "TTL of NXDOMAIN and NODATA answers (short, so new services resolve soon)")
}

// enabled reports whether the stub runs at all.
func (f *dnsFlags) enabled() bool {
	return !(len(f.listen) == 0 || len(f.listen) == 1 && (f.listen[0] == "off" || f.listen[0] == ""))
}

// listenAddrs parses --dns-listen; a bare address means port 53.
func (f *dnsFlags) listenAddrs() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range f.listen {
		ap, err := parseAddrPort(s, 53)
		if err != nil {
			return nil, fmt.Errorf("parse --dns-listen: %w", err)
		}
		out = append(out, ap)
	}
	return out, nil
}

// config turns the flags into the stub's configuration, reading the
// system's upstreams when none are given.
func (f *dnsFlags) config(ranges registry.Ranges, log *slog.Logger) (dnsstub.Config, []netip.AddrPort, error) {
	listen, err := f.listenAddrs()
	if err != nil {
		return dnsstub.Config{}, nil, err
	}
	cfg := dnsstub.Config{
		Zone:          f.zone,
		ReverseRanges: []netip.Prefix{ranges.V4, ranges.V6},
		TTL:           f.ttl,
		NegativeTTL:   f.negativeTTL,
		Logger:        log,
		Allow:         []netip.Prefix{}, // empty flag: nobody, not the default
	}
	for _, ttl := range []struct {
		flag string
		d    time.Duration
	}{{"--dns-ttl", f.ttl}, {"--dns-negative-ttl", f.negativeTTL}} {
		if ttl.d < time.Second || ttl.d%time.Second != 0 || ttl.d > dnsstub.MaxTTL {
			return cfg, nil, fmt.Errorf("parse %s: %v is not a TTL: use whole seconds from 1s to %v (RFC 2181)", ttl.flag, ttl.d, dnsstub.MaxTTL)
		}
	}
	for _, s := range f.allow {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, nil, fmt.Errorf("parse --dns-allow: %w", err)
		}
		cfg.Allow = append(cfg.Allow, p)
	}
	if cfg.Upstreams, err = f.upstreamList(listen, log); err != nil {
		return cfg, nil, err
	}
	return cfg, listen, nil
}

// upstreamList is --dns-upstream, or else the host's resolvers as
// /etc/resolv.conf names them now, never the stub itself.
func (f *dnsFlags) upstreamList(listen []netip.AddrPort, log *slog.Logger) ([]netip.AddrPort, error) {
	var ups []netip.AddrPort
	if len(f.upstreams) > 0 {
		for _, s := range f.upstreams {
			ap, err := parseAddrPort(s, 53)
			if err != nil {
				return nil, fmt.Errorf("parse --dns-upstream: %w", err)
			}
			ups = append(ups, ap)
		}
	} else if sys, err := dnsstub.SystemUpstreams(dnsstub.ResolvConf); err != nil {
		log.Warn("no upstream resolvers: names outside the zone will be refused", "error", err)
	} else {
		ups = sys
	}
	all := ups
	ups = dnsstub.WithoutSelf(all, listen)
	if len(ups) < len(all) {
		log.Warn("dropped the stub's own address from its upstreams: forwarding to ourselves would loop; give the real ones with --dns-upstream", "upstreams", all)
	}
	if len(ups) == 0 {
		log.Warn("no upstream resolvers: names outside the zone will be refused")
	}
	return ups, nil
}

// parseAddrPort parses "addr", "addr:port" or "[v6]:port".
func parseAddrPort(s string, defaultPort uint16) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, defaultPort), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an address or address:port", s)
	}
	return ap, nil
}

// publishDNS is the registry's OnApply hook for the DNS stub. The registry
// calls it only once the datapath took a snapshot, so a name never
// resolves to a VIP that does not route yet; the zone is built in the
// background, so the registry does not wait for it.
func publishDNS(h *dnsstub.Handler) func(*registry.Snapshot) {
	var first sync.Once
	return func(s *registry.Snapshot) {
		// The first snapshot is built before the registry reports ready,
		// so the stub starts listening with every name in place. Later
		// ones are converted and built off the registry's loop (a
		// snapshot never changes once published).
		built := false
		first.Do(func() { h.Update(dnsServices(s)); built = true })
		if !built {
			h.PublishFrom(func() []dnsstub.Service { return dnsServices(s) })
		}
	}
}

// dnsServices is what DNS publishes of a snapshot: every service the
// datapath serves, stale ones included (they still route).
func dnsServices(s *registry.Snapshot) []dnsstub.Service {
	out := make([]dnsstub.Service, 0, len(s.Services))
	for _, sv := range s.Services {
		ds := dnsstub.Service{Name: sv.Name, VIPs: sv.VIPs}
		for _, p := range sv.Ports {
			ds.Ports = append(ds.Ports, dnsstub.Port{Name: p.Name, Number: p.Number, Proto: p.Proto.String()})
		}
		out = append(out, ds)
	}
	return out
}

func newResolverCmd() *cobra.Command {
	f := &dnsFlags{}
	cmd := &cobra.Command{
		Use:   "resolver [resolv.conf|systemd-resolved]",
		Short: "Print the snippet that makes the system resolver ask the DNS stub",
		Long: `resolver prints the configuration that sends the system's DNS questions for
the service zone to the sockmesh DNS stub, in one of the two standard ways:

  systemd-resolved   a drop-in for /etc/systemd/resolved.conf.d/ that routes
                     only the zone (~mesh.internal) to the stub
  resolv.conf        an /etc/resolv.conf naming the stub as the only server;
                     the stub forwards everything else to its upstreams

Without an argument it picks systemd-resolved when /etc/resolv.conf points at
resolved's stub (127.0.0.53), resolv.conf otherwise. Give the same --dns-listen
and --dns-zone as to sockmesh run.`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{dnsstub.StyleResolvConf, dnsstub.StyleSystemdResolved},
		RunE: func(cmd *cobra.Command, args []string) error {
			listen, err := f.listenAddrs()
			if err != nil {
				return err
			}
			if len(listen) == 0 {
				return fmt.Errorf("parse --dns-listen: give the address the stub listens on")
			}
			upstreams, _ := dnsstub.SystemUpstreams(dnsstub.ResolvConf)
			upstreams = dnsstub.WithoutSelf(upstreams, listen)
			style := ""
			if len(args) == 1 {
				style = args[0]
			} else {
				style = dnsstub.DetectStyle(dnsstub.ResolvConf)
			}
			snippet, err := dnsstub.Snippet(style, listen[0], f.zone, upstreams)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), snippet)
			return err
		},
	}
	f.addListen(cmd)
	return cmd
}
