package main

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
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
	b.WriteString("  chain ep-rr { meta l4proto tcp dnat to " + backendIP + fmt.Sprintf(":%d", rrPort) + "; }\n")
	b.WriteString("  chain ep-bulk { meta l4proto tcp dnat to " + backendIP + fmt.Sprintf(":%d", bulkPort) + "; }\n")
	b.WriteString("  chain ep-udp { meta l4proto udp dnat to " + backendIP + fmt.Sprintf(":%d", udpPort) + "; }\n")
	b.WriteString("  chain ep-decoy { meta l4proto tcp dnat to " + decoyIP + ":9; }\n")
	b.WriteString("  chain svc-rr { numgen random mod 1 vmap { 0 : goto ep-rr }; }\n")
	b.WriteString("  chain svc-bulk { numgen random mod 1 vmap { 0 : goto ep-bulk }; }\n")
	b.WriteString("  chain svc-udp { numgen random mod 1 vmap { 0 : goto ep-udp }; }\n")
	b.WriteString("  chain svc-decoy { numgen random mod 1 vmap { 0 : goto ep-decoy }; }\n")
	b.WriteString("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {\n")
	fmt.Fprintf(&b, "      %s . tcp . %d : goto svc-rr,\n", natVIP, vipRRPort)
	fmt.Fprintf(&b, "      %s . tcp . %d : goto svc-bulk,\n", natVIP, bulkPort)
	fmt.Fprintf(&b, "      %s . udp . %d : goto svc-udp,\n", natVIP, vipUDPPort)
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
	for _, c := range []string{"KUBE-SERVICES", "KUBE-SVC-RR", "KUBE-SVC-BULK", "KUBE-SVC-UDP", "KUBE-SVC-DECOY", "KUBE-SEP-RR", "KUBE-SEP-BULK", "KUBE-SEP-UDP", "KUBE-SEP-DECOY"} {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
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
	for _, s := range []struct{ name, proto, to string }{
		{"RR", "tcp", fmt.Sprintf("%s:%d", backendIP, rrPort)},
		{"BULK", "tcp", fmt.Sprintf("%s:%d", backendIP, bulkPort)},
		{"UDP", "udp", fmt.Sprintf("%s:%d", backendIP, udpPort)},
		{"DECOY", "tcp", decoyIP + ":9"},
	} {
		fmt.Fprintf(&b, "-A KUBE-SVC-%s -j KUBE-SEP-%s\n", s.name, s.name)
		fmt.Fprintf(&b, "-A KUBE-SEP-%s -p %s -m %s -j DNAT --to-destination %s\n", s.name, s.proto, s.proto, s.to)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func writeDialledRules(b *strings.Builder) {
	fmt.Fprintf(b, "-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport %d -j KUBE-SVC-RR\n", natVIP, vipRRPort)
	fmt.Fprintf(b, "-A KUBE-SERVICES -d %s/32 -p tcp -m tcp --dport %d -j KUBE-SVC-BULK\n", natVIP, bulkPort)
	fmt.Fprintf(b, "-A KUBE-SERVICES -d %s/32 -p udp -m udp --dport %d -j KUBE-SVC-UDP\n", natVIP, vipUDPPort)
}

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
	remove: func() error { return runInput("", "nft", "delete", "table", "ip", "sockmesh_bench") },
}

var iptVariant = natVariant{
	variant: IptLinear,
	load: func(vips int) error {
		return runInput(iptablesRules(vips), "iptables-restore")
	},
	// Deleting the table, not flushing it: an empty nat table would keep
	// connection tracking on.
	remove: func() error { return runInput("", "nft", "delete", "table", "ip", "nat") },
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

// haproxyConfig is a plain TCP proxy in front of the backend's echo and
// iperf3 ports.
func haproxyConfig() string {
	return fmt.Sprintf(`global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend rr
    bind %[1]s:%[2]d
    default_backend rr
backend rr
    server b1 %[3]s:%[4]d
frontend bulk
    bind %[1]s:%[5]d
    default_backend bulk
backend bulk
    server b1 %[3]s:%[5]d
`, haproxyIP, vipRRPort, backendIP, rrPort, bulkPort)
}
