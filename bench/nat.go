package main

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// The kernel NAT variants, written the way kube-proxy writes them: nftables
// mode (one verdict map from VIP, protocol and port to a service chain) and
// iptables mode (one rule per service port in one chain, matched in order).
// Each is loaded for its measurement and removed after it: a nat table
// turns connection tracking on for the whole namespace, and the next
// variant must not pay for it.

// natVIPAt is the i-th decoy VIP of the NAT variants (10.96.0.10, the
// dialled one, is never a decoy).
func natVIPAt(i int) netip.Addr {
	j := i + 256
	return netip.AddrFrom4([4]byte{10, 96 + byte(j>>16), byte(j >> 8), byte(j)})
}

// nftRuleset is kube-proxy's nftables shape: services map to a service
// chain that picks an endpoint chain that DNATs. vips is how many VIPs the
// map holds, the dialled one included.
func nftRuleset(vips int) string {
	var b strings.Builder
	b.WriteString("table ip sockmesh_bench {\n")
	for _, p := range natPorts {
		fmt.Fprintf(&b, "  chain ep-%s { meta l4proto %s dnat to %s:%d; }\n", p.name, p.proto, backendIP, p.port)
		fmt.Fprintf(&b, "  chain svc-%s { numgen random mod 1 vmap { 0 : goto ep-%s }; }\n", p.name, p.name)
	}
	b.WriteString("  chain ep-decoy { meta l4proto tcp dnat to " + decoyIP + ":9; }\n")
	b.WriteString("  chain svc-decoy { numgen random mod 1 vmap { 0 : goto ep-decoy }; }\n")
	b.WriteString("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {\n")
	for _, p := range natPorts {
		fmt.Fprintf(&b, "      %s . %s . %d : goto svc-%s,\n", natVIP, p.proto, p.port, p.name)
	}
	for i := range vips - 1 {
		fmt.Fprintf(&b, "      %s . tcp . 80 : goto svc-decoy,\n", natVIPAt(i))
	}
	b.WriteString("    }\n  }\n")
	b.WriteString("  chain output { type nat hook output priority -100; policy accept; ip daddr . meta l4proto . th dport vmap @service-ips; }\n")
	b.WriteString("}\n")
	return b.String()
}

// iptablesRules is kube-proxy's iptables shape, for iptables-restore:
// KUBE-SERVICES holds one rule per service port, tried in order; the
// dialled VIP's rules sit in the middle, where the average service is.
func iptablesRules(vips int) string {
	var b strings.Builder
	b.WriteString("*nat\n:OUTPUT ACCEPT [0:0]\n")
	b.WriteString(":KUBE-SERVICES - [0:0]\n:KUBE-SVC-DECOY - [0:0]\n:KUBE-SEP-DECOY - [0:0]\n")
	for _, p := range natPorts {
		fmt.Fprintf(&b, ":KUBE-SVC-%s - [0:0]\n:KUBE-SEP-%s - [0:0]\n", p.name, p.name)
	}
	b.WriteString("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n")
	decoys := vips - 1
	for i := range decoys {
		if i == decoys/2 {
			writeDialledRules(&b)
		}
		fmt.Fprintf(&b, "-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-DECOY\n", natVIPAt(i))
	}
	if decoys == 0 {
		writeDialledRules(&b)
	}
	for _, p := range natPorts {
		fmt.Fprintf(&b, "-A KUBE-SVC-%s -j KUBE-SEP-%s\n", p.name, p.name)
		fmt.Fprintf(&b, "-A KUBE-SEP-%s -p %s -m %s -j DNAT --to-destination %s:%d\n", p.name, p.proto, p.proto, backendIP, p.port)
	}
	b.WriteString("-A KUBE-SVC-DECOY -j KUBE-SEP-DECOY\n")
	fmt.Fprintf(&b, "-A KUBE-SEP-DECOY -p tcp -m tcp -j DNAT --to-destination %s:9\n", decoyIP)
	b.WriteString("COMMIT\n")
	return b.String()
}

func writeDialledRules(b *strings.Builder) {
	for _, p := range natPorts {
		fmt.Fprintf(b, "-A KUBE-SERVICES -d %s/32 -p %s -m %s --dport %d -j KUBE-SVC-%s\n", natVIP, p.proto, p.proto, p.port, p.name)
	}
}

// natPorts are the dialled service's ports, each its own kube "service
// port" with one endpoint.
var natPorts = []struct {
	name, proto string
	port        int
}{{"RR", "tcp", rrPort}, {"CRR", "tcp", crrPort}, {"BULK", "tcp", bulkPort}, {"UDP", "udp", udpPort}}

// natVariant loads and removes one NAT variant's rules.
type natVariant struct {
	variant Variant
	load    func(vips int) error
	remove  func() error
}

var nftVariant = natVariant{
	variant: NftMap,
	load: func(vips int) error {
		return runInput(nftRuleset(vips), "nft", "-f", "-")
	},
	remove: func() error {
		if err := runInput("", "nft", "delete", "table", "ip", "sockmesh_bench"); err != nil {
			return err
		}
		return flushConntrack()
	},
}

var iptVariant = natVariant{
	variant: IptLinear,
	load: func(vips int) error {
		return runInput(iptablesRules(vips), "iptables-restore")
	},
	// Deleting the table, not flushing it: an empty nat table would keep
	// connection tracking on.
	remove: func() error {
		if err := runInput("", "nft", "delete", "table", "ip", "nat"); err != nil {
			return err
		}
		return flushConntrack()
	},
}

// flushConntrack empties this namespace's connection tracking table. The
// CRR client resets its connections and reuses ports at once; an entry
// left from an earlier round would meet a new connection on the same
// ports and stall it (SYN retransmits), an artefact of the harness, not
// a cost a kube-proxy user pays.
func flushConntrack() error {
	if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flush conntrack: %w", err)
	}
	return nil
}

func runInput(input, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("run %s %s: %v: %s", name, strings.Join(args, " "), err, firstLines(string(out), 5))
	}
	return nil
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(strings.TrimSpace(s), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// proxiedPorts are the TCP ports the proxies carry (no UDP).
var proxiedPorts = []int{rrPort, crrPort, bulkPort}

// haproxyConfig is a plain TCP proxy in front of the backend's echo and
// iperf3 ports.
func haproxyConfig() string {
	var b strings.Builder
	b.WriteString(`global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
`)
	for _, port := range proxiedPorts {
		fmt.Fprintf(&b, "listen p%[2]d\n    bind %[1]s:%[2]d\n    server b1 %[3]s:%[2]d\n", haproxyIP, port, backendIP)
	}
	return b.String()
}
