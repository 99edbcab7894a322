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

// FuzzFastPath checks, for any packet, that a cached answer to it or to a
// variant of it is what the full path answers (the same message; names may
// differ in case where they point at the question).
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
	// An option header without its data: the full path says FORMERR.
	withOpt := withEDNS(query("web.mesh.internal.", dns.TypeA), 1232, 0)
	withOpt.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
	wire, _ := withOpt.Pack()
	f.Add(wire, uint16(1))
	f.Add(truncatedOption(wire), uint16(2))
	h := newTestHandler(f, Config{})
	f.Fuzz(func(t *testing.T, pkt []byte, seed uint16) {
		if len(pkt) < 12 {
			return
		}
		checkFastMatchesSlow(t, h, pkt, seed)
		checkKeyCoversPacket(t, h, pkt)
	})
}

// truncatedOption replaces the 12-byte cookie option ending wire with an
// option header that promises 8 bytes and has none.
func truncatedOption(wire []byte) []byte {
	bad := bytes.Clone(wire[:len(wire)-12])
	binary.BigEndian.PutUint16(bad[len(bad)-2:], 4) // OPT rdlen
	return append(bad, 0x00, 0x0a, 0x00, 0x08)
}

func TestFastPathOptions(t *testing.T) {
	h := newTestHandler(t, Config{})
	m := withEDNS(query("web.mesh.internal.", dns.TypeA), 1232, 0)
	m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
	wire, _ := m.Pack()
	if _, _, ok := questionKey(nil, wire); !ok {
		t.Error("a query with a client cookie does not take the fast path")
	}
	bad := truncatedOption(wire)
	if _, _, ok := questionKey(nil, bad); ok {
		t.Error("a query with a cut-off option takes the fast path")
	}
	checkKeyCoversPacket(t, h, bad)
	slow := newRecorder("127.0.0.1:5353", true)
	h.servePacket(slow, bad)
	if slow.msg == nil || slow.msg.Rcode != dns.RcodeFormatError {
		t.Errorf("cut-off option: %v, want FORMERR", slow.msg)
	}
}

// checkKeyCoversPacket warms the cache with a clean query of pkt's key,
// then checks the fast path answers pkt itself (whatever else it carries:
// EDNS payload size, options, extended rcode bits) as the full path does.
func checkKeyCoversPacket(t *testing.T, h *Handler, pkt []byte) {
	t.Helper()
	key, _, ok := questionKey(nil, pkt)
	if !ok {
		return
	}
	name, off, err := dns.UnpackDomainName(key, 0)
	if err != nil {
		t.Fatalf("key %x: name does not unpack: %v", key, err)
	}
	clean := new(dns.Msg)
	clean.Question = []dns.Question{{Name: name, Qtype: binary.BigEndian.Uint16(key[off:]), Qclass: binary.BigEndian.Uint16(key[off+2:])}}
	bits := key[off+4]
	clean.RecursionDesired, clean.CheckingDisabled = bits&1 != 0, bits&2 != 0
	if bits&4 != 0 {
		clean.SetEdns0(1232, bits&8 != 0)
	}
	wire, err := clean.Pack()
	if err != nil {
		return // a name miekg cannot write back; the full path answers FORMERR to it
	}
	if k2, _, _ := questionKey(nil, wire); !bytes.Equal(k2, key) {
		t.Fatalf("clean query has key %x, want %x", k2, key)
	}
	dropCache(h)
	h.servePacket(newRecorder("127.0.0.1:5353", true), wire)
	fast, hit := h.fastAnswer(pkt, netip.MustParseAddr("127.0.0.1"), nil, nil)
	if !hit {
		return
	}
	fast = bytes.Clone(fast)
	dropCache(h)
	slow := newRecorder("127.0.0.1:5353", true)
	h.servePacket(slow, pkt)
	f, s := new(dns.Msg), new(dns.Msg)
	if f.Unpack(fast) != nil || s.Unpack(slow.wire) != nil || !strings.EqualFold(f.String(), s.String()) {
		t.Fatalf("fast path answer to a packet of a cached key differs from the full path's\nquery %x\nfast %v\nslow %v", pkt, f, s)
	}
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
