package dnsstub

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Resolver configuration files the stub reads its default upstreams from.
const (
	ResolvConf = "/etc/resolv.conf"
	// resolvedUpstreams lists the servers systemd-resolved itself asks,
	// when /etc/resolv.conf only names resolved's own stub.
	resolvedUpstreams = "/run/systemd/resolve/resolv.conf"
)

// resolvedStubs are systemd-resolved's listening addresses.
var resolvedStubs = []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("127.0.0.54")}

// SystemUpstreams returns the name servers of the resolv.conf at path. When
// those are only systemd-resolved's stub, it returns the servers resolved
// asks instead (from /run/systemd/resolve/resolv.conf), so that a resolved
// routing our zone to us never gets the rest back from us in a loop.
func SystemUpstreams(path string) ([]netip.AddrPort, error) {
	ups, err := readResolvConf(path)
	if err != nil {
		return nil, err
	}
	onlyResolved := len(ups) > 0 && !slices.ContainsFunc(ups, func(u netip.AddrPort) bool {
		return !slices.Contains(resolvedStubs, u.Addr())
	})
	if onlyResolved && path == ResolvConf {
		if real, err := readResolvConf(resolvedUpstreams); err == nil && len(real) > 0 {
			return real, nil
		}
	}
	return ups, nil
}

// DetectStyle guesses from the resolv.conf at path how the host resolves
// names: systemd-resolved when the file names resolved's stub, plain
// resolv.conf otherwise (an unreadable file included).
func DetectStyle(path string) string {
	ups, _ := readResolvConf(path)
	if slices.ContainsFunc(ups, func(u netip.AddrPort) bool { return slices.Contains(resolvedStubs, u.Addr()) }) {
		return StyleSystemdResolved
	}
	return StyleResolvConf
}

func readResolvConf(path string) ([]netip.AddrPort, error) {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read resolver configuration: %w", err)
	}
	var out []netip.AddrPort
	for _, s := range cfg.Servers {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("read resolver configuration %s: nameserver %q: %w", path, s, err)
		}
		out = append(out, netip.AddrPortFrom(addr, 53))
	}
	return out, nil
}

// WithoutSelf drops from upstreams every address the stub itself listens
// on: forwarding to ourselves would loop.
func WithoutSelf(upstreams, listen []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, u := range upstreams {
		self := slices.ContainsFunc(listen, func(l netip.AddrPort) bool {
			if l.Port() != u.Port() {
				return false
			}
			// A wildcard listener answers on every local address; the
			// loopback ones are surely among them.
			return l.Addr().Unmap() == u.Addr().Unmap() || (l.Addr().IsUnspecified() && u.Addr().IsLoopback())
		})
		if !self {
			out = append(out, u)
		}
	}
	return out
}

// Snippet styles: the two standard ways to send the system's DNS to the
// stub.
const (
	StyleResolvConf      = "resolv.conf"
	StyleSystemdResolved = "systemd-resolved"
)

// Snippet returns the configuration that points the system resolver at the
// stub listening on addr for zone, in style. upstreams are the servers the
// host uses now, which the resolv.conf style must hand to the daemon since
// it replaces them.
func Snippet(style string, addr netip.AddrPort, zone string, upstreams []netip.AddrPort) (string, error) {
	zone, err := CanonicalZone(zone)
	if err != nil {
		return "", err
	}
	bare := strings.TrimSuffix(zone, ".")
	var b strings.Builder
	switch style {
	case StyleSystemdResolved:
		server := addr.String()
		if addr.Port() == 53 {
			server = addr.Addr().String()
		}
		fmt.Fprintf(&b, `# /etc/systemd/resolved.conf.d/sockmesh.conf
# systemd-resolved sends names under %[1]s (and only those) to the
# sockmesh DNS stub; everything else goes where it went before.
# Apply: systemctl restart systemd-resolved
# Check: resolvectl query hello.%[1]s
[Resolve]
DNS=%[2]s
Domains=~%[1]s
`, bare, server)
	case StyleResolvConf:
		if addr.Port() != 53 {
			return "", fmt.Errorf("write %s snippet: the stub listens on port %d, and resolv.conf can only name servers on port 53: run it with --dns-listen %s:53, or use the %s style", style, addr.Port(), addr.Addr(), StyleSystemdResolved)
		}
		if addr.Addr().IsUnspecified() {
			return "", errors.New("write resolv.conf snippet: the stub listens on a wildcard address: run it with --dns-listen on one address")
		}
		fmt.Fprintf(&b, "# /etc/resolv.conf\n# Every name goes to the sockmesh DNS stub, which answers %s itself\n# and forwards the rest to its upstreams.\n", bare)
		if len(upstreams) > 0 {
			var list []string
			for _, u := range upstreams {
				list = append(list, u.String())
			}
			fmt.Fprintf(&b, "# The stub reads its upstreams from this file when it starts: before\n# replacing it, give them to the daemon: --dns-upstream %s\n", strings.Join(list, ","))
		}
		fmt.Fprintf(&b, "nameserver %s\noptions edns0\n", addr.Addr())
	default:
		return "", fmt.Errorf("write snippet: unknown style %q: use %s or %s", style, StyleResolvConf, StyleSystemdResolved)
	}
	return b.String(), nil
}
