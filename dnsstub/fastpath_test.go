package dnsstub

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// dropCache gives h a copy of its zone with an empty cache.
func dropCache(h *Handler) {
	z := h.zone.Load()
	h.zone.Store(&zone{apexes: z.apexes, names: z.names, nonTerminals: z.nonTerminals})
}

// variant is pkt as another client might send the same question: another
// ID, the name's letters in other case, and the header bits that change
// nothing in the answer (AA, TC, RA, Z, AD, request rcode) flipped, all by
// the bits of seed.
func variant(pkt []byte, seed uint16) []byte {
	v := bytes.Clone(pkt)
	binary.BigEndian.PutUint16(v[0:], binary.BigEndian.Uint16(v[0:])^(seed|1))
	v[2] ^= byte(seed>>8) & 0x06 // AA, TC
	v[3] ^= byte(seed) & 0xef    // RA, Z, AD, rcode; not CD
	for i, off := 0, 12; off < len(v) && v[off] != 0 && v[off] < 64; off += int(v[off]) + 1 {
		for j := off + 1; j <= off+int(v[off]) && j < len(v); j, i = j+1, i+1 {
			c := v[j] | 0x20
			if 'a' <= c && c <= 'z' && seed>>(i%16)&1 == 1 {
				v[j] ^= 0x20
			}
		}
	}
	return v
}

// checkFastMatchesSlow answers pkt the long way (caching it), then asks
// the fast path a variant and compares with the long way's answer to the
// variant on a zone without cache. It reports whether the fast path hit.
func checkFastMatchesSlow(t *testing.T, h *Handler, pkt []byte, seed uint16) bool {
	t.Helper()
	dropCache(h)
	h.servePacket(newRecorder("127.0.0.1:5353", true), pkt)
	v := variant(pkt, seed)
	fast, hit := h.fastAnswer(v, netip.MustParseAddr("127.0.0.1"), nil, nil)
	if !hit {
		return false
	}
	fast = bytes.Clone(fast)
	dropCache(h)
	slow := newRecorder("127.0.0.1:5353", true)
	h.servePacket(slow, v)
	// The same message, names compared without case (compression may point
	// a name at the question, which has the variant's case), and the
	// question exactly as asked.
	f, s := new(dns.Msg), new(dns.Msg)
	if err := f.Unpack(fast); err != nil {
		t.Fatalf("fast path answer does not unpack: %v\nquery %x\nanswer %x", err, v, fast)
	}
	s.Unpack(slow.wire)
	if !strings.EqualFold(f.String(), s.String()) || f.Question[0].Name != s.Question[0].Name {
		t.Fatalf("fast path answer differs from the full path's\nquery %x\nfast %x\n%v\nslow %x\n%v", v, fast, f, slow.wire, s)
	}
	return true
}

func TestFastPathMatchesSlowPath(t *testing.T) {
	h := newTestHandler(t, Config{})
	for _, tc := range []struct {
		msg *dns.Msg
		hit bool
	}{
		{query("web.mesh.internal.", dns.TypeA), true},
		{query("Web.Mesh.Internal.", dns.TypeA), true},
		{query("api.mesh.internal.", dns.TypeAAAA), true},
		{query("api.mesh.internal.", dns.TypeANY), true},
		{query("web.mesh.internal.", dns.TypeMX), true},
		{query("nope.mesh.internal.", dns.TypeA), true},
		{query("_https._tcp.api.mesh.internal.", dns.TypeSRV), true},
		{query("10.0.18.198.in-addr.arpa.", dns.TypePTR), true},
		{query("mesh.internal.", dns.TypeSOA), true},
		{withEDNS(query("web.mesh.internal.", dns.TypeA), 4096, 0), true},
		{withEDNS(query("x.web.mesh.internal.", dns.TypeA), 512, 0), true},
		{withClass(query("web.mesh.internal.", dns.TypeA), dns.ClassANY), true},
		{func() *dns.Msg {
			m := query("web.mesh.internal.", dns.TypeA)
			m.RecursionDesired = false
			m.CheckingDisabled = true
			return m
		}(), true},
		// Not answers from our zones: never cached.
		{query("example.com.", dns.TypeA), false},
		{withClass(query("web.mesh.internal.", dns.TypeA), dns.ClassCHAOS), false},
		{withEDNS(query("web.mesh.internal.", dns.TypeA), 4096, 1), false},
		{withOpcode(query("web.mesh.internal.", dns.TypeA), dns.OpcodeNotify), false},
		{twoOPTs(), false},
	} {
		wire, err := tc.msg.Pack()
		if err != nil {
			t.Fatal(err)
		}
		for _, seed := range []uint16{0, 0x5a5a, 0xffff, 0x1234} {
			if hit := checkFastMatchesSlow(t, h, wire, seed); hit != tc.hit {
				t.Errorf("%v: fast path hit %v, want %v", tc.msg.Question, hit, tc.hit)
			}
		}
	}
	// A client not allowed never gets a cached answer.
	wire, _ := query("web.mesh.internal.", dns.TypeA).Pack()
	h.servePacket(newRecorder("127.0.0.1:5353", true), wire)
	if _, hit := h.fastAnswer(wire, netip.MustParseAddr("192.0.2.1"), nil, nil); hit {
		t.Error("cached answer for a client not allowed")
	}
	// A new zone starts with an empty cache.
	h.Update(nil)
	if _, hit := h.fastAnswer(wire, netip.MustParseAddr("127.0.0.1"), nil, nil); hit {
		t.Error("cached answer survived a zone update")
	}
}

// TestFastPathServer asks a real stub the same questions twice: the second
// time they come from the cache, with the client's ID and letter case.
func TestFastPathServer(t *testing.T) {
	s := startStub(t, Config{})
	stub := s.Addrs()[0]
	for _, name := range []string{"web.mesh.internal.", "WEB.mesh.INTERNAL.", "gone.mesh.internal."} {
		for range 2 {
			m := query(name, dns.TypeA)
			resp := exchange(t, stub, "udp", m)
			if resp.Question[0].Name != name {
				t.Errorf("question %q came back as %q", name, resp.Question[0].Name)
			}
			if len(resp.Answer) > 0 && resp.Answer[0].Header().Name != name {
				t.Errorf("answer owner %q, want %q as asked", resp.Answer[0].Header().Name, name)
			}
		}
	}
	// All but the first question for web (in any case) and for gone.
	if st := s.Handler().Stats(); st.CacheHits != 4 {
		t.Errorf("cache hits %d, want 4: %+v", st.CacheHits, st)
	}
}

// FuzzFastPath checks, for any packet, that a cached answer to a variant
// of it is byte for byte what the full path answers.
func FuzzFastPath(f *testing.F) {
	for _, m := range []*dns.Msg{
		query("web.mesh.internal.", dns.TypeA),
		withEDNS(query("_http._tcp.api.mesh.internal.", dns.TypeSRV), 1232, 0),
		query("nope.mesh.internal.", dns.TypeAAAA),
		query("0.18.198.in-addr.arpa.", dns.TypePTR),
	} {
		wire, _ := m.Pack()
		f.Add(wire, uint16(0x3c3c))
	}
	h := newTestHandler(f, Config{})
	f.Fuzz(func(t *testing.T, pkt []byte, seed uint16) {
		if len(pkt) < 12 {
			return
		}
		checkFastMatchesSlow(t, h, pkt, seed)
	})
}

// TestServerIPv6 serves on ::1: the batch path of the IPv6 socket, twice
// per question so the second answer comes from the cache.
func TestServerIPv6(t *testing.T) {
	h := newTestHandler(t, Config{})
	s, err := Listen(h, []netip.AddrPort{netip.MustParseAddrPort("[::1]:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, network := range []string{"udp", "udp", "tcp"} {
		resp := exchange(t, s.Addrs()[0], network, query("api.mesh.internal.", dns.TypeAAAA))
		if got := rrStrings(resp.Answer); len(got) != 1 || got[0] != "api.mesh.internal. 300 IN AAAA fd6d:6573:6800::80" {
			t.Errorf("%s: %q", network, got)
		}
	}
	if st := h.Stats(); st.CacheHits != 1 {
		t.Errorf("cache hits %d, want 1", st.CacheHits)
	}
}

// TestListenRefusesSharedPort starts two stubs on one address: the second
// must fail, not split the queries with the first through SO_REUSEPORT.
func TestListenRefusesSharedPort(t *testing.T) {
	first := startStub(t, Config{})
	h := newTestHandler(t, Config{})
	if s, err := Listen(h, first.Addrs()); err == nil {
		s.Close()
		t.Fatal("a second stub bound the same address")
	} else if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %v, want address already in use", err)
	}
}
