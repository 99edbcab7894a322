package registry

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"

	"sockmesh/servicefile"
)

// Ranges are the address ranges VIPs are derived from; a VIP a file sets
// must lie in one of them too.
type Ranges struct {
	V4, V6 netip.Prefix
}

// DefaultRanges: 198.18.0.0/15 is reserved for benchmarking (RFC 2544) and
// never routed on the internet; fd6d:6573:6800::/64 is a unique local
// prefix (RFC 4193) spelling "mes" in its global ID.
var DefaultRanges = Ranges{
	V4: netip.MustParsePrefix("198.18.0.0/15"),
	V6: netip.MustParsePrefix("fd6d:6573:6800::/64"),
}

// Validate checks that the ranges are usable prefixes of their family with
// room for derived addresses.
func (r Ranges) Validate() error {
	if !r.V4.IsValid() || !r.V4.Addr().Is4() || r.V4.Bits() > 24 {
		return fmt.Errorf("check VIP ranges: IPv4 range %s must be an IPv4 prefix of /24 or larger", r.V4)
	}
	if !r.V6.IsValid() || !r.V6.Addr().Is6() || r.V6.Addr().Is4In6() || r.V6.Bits() < 64 || r.V6.Bits() > 112 {
		return fmt.Errorf("check VIP ranges: IPv6 range %s must be an IPv6 prefix from /64 to /112", r.V6)
	}
	return nil
}

func (r Ranges) contains(a netip.Addr) bool {
	return r.V4.Contains(a.Unmap()) || r.V6.Contains(a)
}

func (r Ranges) String() string { return r.V4.String() + ", " + r.V6.String() }

func (r Ranges) of(f servicefile.Family) netip.Prefix {
	if f == servicefile.IPv4 {
		return r.V4
	}
	return r.V6
}

// maxAttempts bounds the search for a free derived address. Even with the
// IPv4 range 90 % full, a name finds a free address within 64 tries with
// probability 1 - 0.9^64 > 99.8 %.
const maxAttempts = 64

// Candidate is the address name derives in prefix on the given attempt
// (0 first): the prefix with its host bits taken from
// SHA-256("sockmesh-vip\x00" name "\x00" attempt). It is a pure function,
// so every host and every restart computes the same VIP for a name.
func Candidate(prefix netip.Prefix, name string, attempt int) netip.Addr {
	h := sha256.New()
	h.Write([]byte("sockmesh-vip\x00" + name + "\x00"))
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], uint32(attempt))
	h.Write(a[:])
	sum := h.Sum(nil)

	// The host bits are the low bits of the digest's first 4 bytes (IPv4)
	// or of its first 16 bytes (IPv6, at most 64 host bits).
	base := prefix.Masked().Addr()
	hostBits := base.BitLen() - prefix.Bits()
	mask := uint64(1)<<hostBits - 1
	if hostBits == 64 {
		mask = ^uint64(0)
	}
	b := base.AsSlice()
	if base.Is4() {
		v := binary.BigEndian.Uint32(b) | uint32(uint64(binary.BigEndian.Uint32(sum[:4]))&mask)
		binary.BigEndian.PutUint32(b, v)
	} else {
		v := binary.BigEndian.Uint64(b[8:]) | binary.BigEndian.Uint64(sum[8:16])&mask
		binary.BigEndian.PutUint64(b[8:], v)
	}
	ip, _ := netip.AddrFromSlice(b)
	return ip
}

// reserved reports addresses of the range never handed out: the first
// (the subnet-router anycast in IPv6) and the last.
func reserved(prefix netip.Prefix, a netip.Addr) bool {
	return a == prefix.Masked().Addr() || a == lastAddr(prefix)
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Collision says that a derived address went to another service first.
type Collision struct {
	Name     string     // the service that moved on
	Wanted   netip.Addr // the address it derives first
	Holder   string     // who has Wanted: a service name
	Explicit bool       // Holder set Wanted in its file
	Got      netip.Addr // the address it got instead (invalid if none)
}

func (c Collision) String() string {
	how := "derives it too and sorts first"
	if c.Explicit {
		how = "sets it in its file"
	}
	got := "no free address: the VIP range is full"
	if c.Got.IsValid() {
		got = "takes " + c.Got.String() + " instead"
	}
	return fmt.Sprintf("%s derives %s, but %s %s; %s %s (set vip: in a file to pin an address)", c.Name, c.Wanted, c.Holder, how, c.Name, got)
}
