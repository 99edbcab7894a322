package dnsstub

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Service is what DNS publishes of one service: its name, its VIPs and its
// ports (named ports get SRV records).
type Service struct {
	Name  string
	VIPs  []netip.Addr
	Ports []Port
}

// Port is one port of a service.
type Port struct {
	// Name is the RFC 6335 service name, empty for an unnamed port.
	Name   string
	Number uint16
	// Proto is "tcp" or "udp".
	Proto string
}

// zone is an immutable set of answers: the forward zone of the services and
// the reverse zones of the VIP ranges. A new one replaces it on each change.
type zone struct {
	// apexes are the zones answered here, forward zone first; each has its
	// SOA for negative answers.
	apexes []apex
	// names holds the records of every owner name, by lower-case FQDN.
	names map[string]*node
	// nonTerminals are names that exist only because a longer name does
	// (e.g. _tcp.web.mesh.internal.): NODATA, not NXDOMAIN (RFC 8020).
	nonTerminals map[string]bool
	// cache holds packed answers for the fast path.
	cache answerCache
}

type apex struct {
	name string
	soa  *dns.SOA
}

// node is the records of one owner name: the few types a zone of
// services has.
type node struct {
	a, aaaa, srv, ptr []dns.RR
}

func (n *node) add(rr dns.RR) {
	switch rr.Header().Rrtype {
	case dns.TypeA:
		n.a = append(n.a, rr)
	case dns.TypeAAAA:
		n.aaaa = append(n.aaaa, rr)
	case dns.TypeSRV:
		n.srv = append(n.srv, rr)
	case dns.TypePTR:
		n.ptr = append(n.ptr, rr)
	}
}

// get returns the records of type t; ANY gets them all.
func (n *node) get(t uint16) []dns.RR {
	switch t {
	case dns.TypeA:
		return n.a
	case dns.TypeAAAA:
		return n.aaaa
	case dns.TypeSRV:
		return n.srv
	case dns.TypePTR:
		return n.ptr
	case dns.TypeANY:
		return slices.Concat(n.a, n.aaaa, n.srv, n.ptr)
	}
	return nil
}

// zoneConfig is what a zone is built from besides the services.
type zoneConfig struct {
	origin      string
	reverse     []netip.Prefix
	ttl         uint32
	negativeTTL uint32
}

// buildZone makes the zone for services. It never fails: the registry has
// already checked names and addresses.
func buildZone(c zoneConfig, services []Service) *zone {
	serial := uint32(time.Now().Unix())
	z := &zone{names: make(map[string]*node, 4*len(services)), nonTerminals: make(map[string]bool, 2*len(services))}
	z.apexes = append(z.apexes, apex{c.origin, newSOA(c.origin, c.origin, serial, c.negativeTTL)})
	for _, name := range reverseZones(c.reverse) {
		z.apexes = append(z.apexes, apex{name, newSOA(name, c.origin, serial, c.negativeTTL)})
	}
	for _, svc := range services {
		owner := strings.ToLower(svc.Name) + "." + c.origin
		for _, vip := range svc.VIPs {
			vip = vip.Unmap()
			if vip.Is4() {
				z.add(&dns.A{Hdr: hdr(owner, dns.TypeA, c.ttl), A: vip.AsSlice()})
			} else {
				z.add(&dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA, c.ttl), AAAA: vip.AsSlice()})
			}
			rev, err := dns.ReverseAddr(vip.String())
			if err == nil && z.authority(rev) != nil {
				z.add(&dns.PTR{Hdr: hdr(rev, dns.TypePTR, c.ttl), Ptr: owner})
			}
		}
		for _, p := range svc.Ports {
			if p.Name == "" {
				continue
			}
			srvName := "_" + p.Name + "._" + p.Proto + "." + owner
			// One target per name: priority and weight 0, as RFC 2782
			// asks when there is no choice to make.
			z.add(&dns.SRV{Hdr: hdr(srvName, dns.TypeSRV, c.ttl), Port: p.Number, Target: owner})
		}
	}
	return z
}

func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func newSOA(owner, origin string, serial, negativeTTL uint32) *dns.SOA {
	return &dns.SOA{
		// RFC 2308 section 5: a negative answer lives min(SOA TTL, MINIMUM),
		// so both are the negative TTL.
		Hdr:     hdr(owner, dns.TypeSOA, negativeTTL),
		Ns:      origin,
		Mbox:    "hostmaster." + origin,
		Serial:  serial,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  negativeTTL,
	}
}

// add files rr under its owner and marks every name between the owner and
// its zone apex as an empty non-terminal.
func (z *zone) add(rr dns.RR) {
	owner := rr.Header().Name
	n := z.names[owner]
	if n == nil {
		n = &node{}
		z.names[owner] = n
	}
	n.add(rr)
	a := z.authority(owner)
	// Walk up to the apex, stopping at the first name already marked:
	// everything above it is marked too.
	for name := parent(owner); name != "" && a != nil && name != a.name && !z.nonTerminals[name]; name = parent(name) {
		z.nonTerminals[name] = true
	}
}

// authority returns the apex of the zone that owns name (lower case), or
// nil when the name is not ours and must be forwarded. Longest match wins.
func (z *zone) authority(name string) *apex {
	var best *apex
	for i := range z.apexes {
		a := &z.apexes[i]
		if inZone(name, a.name) && (best == nil || len(a.name) > len(best.name)) {
			best = a
		}
	}
	return best
}

// inZone reports whether name is apex or below it; both are lower-case
// FQDNs in miekg's presentation form. (dns.IsSubDomain says the same but
// splits both names into labels, which made building a big zone slow.)
func inZone(name, apex string) bool {
	if name == apex {
		return true
	}
	cut := len(name) - len(apex) - 1
	if cut < 0 || name[cut] != '.' || name[cut+1:] != apex {
		return false
	}
	// The dot must end a label, not be an escaped "\." inside one: an odd
	// run of backslashes before it escapes it.
	n := 0
	for i := cut - 1; i >= 0 && name[i] == '\\'; i-- {
		n++
	}
	return n%2 == 0
}

// parent strips the first label of an FQDN; the root has no parent ("").
func parent(name string) string {
	if name == "." || name == "" {
		return ""
	}
	i := strings.IndexByte(name, '.')
	if i == len(name)-1 {
		return "."
	}
	return name[i+1:]
}

// reverseZones names the in-addr.arpa. and ip6.arpa. zones that together
// cover the prefixes exactly. A prefix not on an octet (IPv4) or nibble
// (IPv6) boundary becomes the zones of its longer sub-prefixes that are:
// 198.18.0.0/15 is 18.198.in-addr.arpa. and 19.198.in-addr.arpa.
func reverseZones(prefixes []netip.Prefix) []string {
	var out []string
	for _, p := range prefixes {
		p = p.Masked()
		step := 4
		if p.Addr().Is4() {
			step = 8
		}
		bits := (p.Bits() + step - 1) / step * step
		if bits == 0 {
			bits = step
		}
		addr := p.Addr()
		for range 1 << (bits - p.Bits()) {
			out = append(out, reverseApex(addr, bits))
			addr = nextPrefix(addr, bits)
		}
	}
	return out
}

// reverseApex is the reverse name of the first bits of addr (a multiple of
// 8 for IPv4, of 4 for IPv6).
func reverseApex(addr netip.Addr, bits int) string {
	b := addr.AsSlice()
	var sb strings.Builder
	if addr.Is4() {
		for i := bits/8 - 1; i >= 0; i-- {
			fmt.Fprintf(&sb, "%d.", b[i])
		}
		return sb.String() + "in-addr.arpa."
	}
	for i := bits/4 - 1; i >= 0; i-- {
		nibble := b[i/2] >> 4
		if i%2 == 1 {
			nibble = b[i/2] & 0xf
		}
		fmt.Fprintf(&sb, "%x.", nibble)
	}
	return sb.String() + "ip6.arpa."
}

// nextPrefix returns the first address of the /bits prefix after addr's.
func nextPrefix(addr netip.Addr, bits int) netip.Addr {
	b := addr.AsSlice()
	// Add 1 at bit position bits-1, carrying towards the front.
	i, inc := (bits-1)/8, byte(1)<<(7-(bits-1)%8)
	for ; i >= 0; i-- {
		sum := b[i] + inc
		carry := sum < b[i]
		b[i] = sum
		if !carry {
			break
		}
		inc = 1
	}
	next, _ := netip.AddrFromSlice(b)
	return next
}

// answer is what the zone says about one question.
type answer struct {
	rcode   int
	records []dns.RR
	// extra are the addresses of SRV targets (RFC 2782 additional data).
	extra []dns.RR
	// soa goes in the authority section of a negative answer.
	soa *dns.SOA
}

// lookup answers qname (a lower-case FQDN) and qtype from the zone; ok is
// false when the name belongs to none of its zones.
func (z *zone) lookup(qname string, qtype uint16) (ans answer, ok bool) {
	a := z.authority(qname)
	if a == nil {
		return answer{}, false
	}
	negative := answer{rcode: dns.RcodeSuccess, soa: a.soa}
	if qname == a.name {
		if qtype == dns.TypeSOA || qtype == dns.TypeANY {
			return answer{rcode: dns.RcodeSuccess, records: []dns.RR{a.soa}}, true
		}
		return negative, true
	}
	n := z.names[qname]
	if n == nil {
		if z.nonTerminals[qname] {
			return negative, true
		}
		negative.rcode = dns.RcodeNameError
		return negative, true
	}
	ans.records = n.get(qtype)
	if len(ans.records) == 0 {
		return negative, true
	}
	for _, rr := range ans.records {
		if srv, isSRV := rr.(*dns.SRV); isSRV {
			if t := z.names[srv.Target]; t != nil {
				ans.extra = append(ans.extra, t.a...)
				ans.extra = append(ans.extra, t.aaaa...)
			}
		}
	}
	return ans, true
}
