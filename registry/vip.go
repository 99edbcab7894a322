package registry

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
	"net/netip"
	"slices"

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
	if !r.V6.IsValid() || !r.V6.Addr().Is6() || r.V6.Addr().Is4In6() || r.V6.Bits() > 112 {
		return fmt.Errorf("check VIP ranges: IPv6 range %s must be an IPv6 prefix of /112 or larger", r.V6)
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

	base := prefix.Masked().Addr()
	bits := base.BitLen()
	host := new(big.Int).SetBytes(sum[:bits/8])
	mask := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(bits-prefix.Bits())), big.NewInt(1))
	host.And(host, mask)
	addr := new(big.Int).SetBytes(base.AsSlice())
	addr.Or(addr, host)
	out := make([]byte, bits/8)
	addr.FillBytes(out)
	ip, _ := netip.AddrFromSlice(out)
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

// derivation is one service that needs a derived address in one family.
type derivation struct {
	name   string
	family servicefile.Family
	addr   netip.Addr
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

// deriveVIPs gives each derivation an address of its family's range. taken
// holds the addresses files set (and who set them). Assignment goes in
// rounds: in round k every still unplaced name tries its k-th candidate,
// names in sorted order. A name that gets its address in an earlier round
// is never displaced by a later one, and the result depends only on the set
// of names, not on file order or history.
func deriveVIPs(ds []*derivation, taken map[netip.Addr]string, ranges Ranges) []Collision {
	slices.SortFunc(ds, func(a, b *derivation) int {
		if a.name != b.name {
			if a.name < b.name {
				return -1
			}
			return 1
		}
		return int(a.family) - int(b.family)
	})
	holder := make(map[netip.Addr]string, len(ds)+len(taken))
	explicit := make(map[netip.Addr]bool, len(taken))
	for a, n := range taken {
		holder[a] = n
		explicit[a] = true
	}
	first := make(map[*derivation]netip.Addr, len(ds))
	pending := ds
	for attempt := 0; attempt < maxAttempts && len(pending) > 0; attempt++ {
		next := pending[:0:0]
		for _, d := range pending {
			prefix := ranges.of(d.family)
			c := Candidate(prefix, d.name, attempt)
			if attempt == 0 {
				first[d] = c
			}
			if _, busy := holder[c]; busy || reserved(prefix, c) {
				next = append(next, d)
				continue
			}
			holder[c] = d.name
			d.addr = c
		}
		pending = next
	}
	var out []Collision
	for _, d := range ds {
		want := first[d]
		if d.addr == want {
			continue
		}
		c := Collision{Name: d.name, Wanted: want, Holder: holder[want], Explicit: explicit[want], Got: d.addr}
		if c.Holder == "" {
			c.Holder = "the range's reserved first or last address"
		}
		out = append(out, c)
	}
	return out
}
