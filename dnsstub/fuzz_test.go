package dnsstub

import (
	"testing"

	"github.com/miekg/dns"
)

// FuzzHandler feeds arbitrary packets to the handler the way the server
// does (those that unpack; the server itself answers FORMERR to the rest)
// and checks the answer is a well-formed response to that query that fits
// the transport.
func FuzzHandler(f *testing.F) {
	seeds := []*dns.Msg{
		query("web.mesh.internal.", dns.TypeA),
		query("_https._tcp.api.mesh.internal.", dns.TypeSRV),
		query("10.0.18.198.in-addr.arpa.", dns.TypePTR),
		query("x.WEB.mesh.internal.", dns.TypeANY),
		withEDNS(query("api.mesh.internal.", dns.TypeAAAA), 4096, 0),
		withEDNS(query("api.mesh.internal.", dns.TypeA), 512, 2),
		withOpcode(query("mesh.internal.", dns.TypeSOA), dns.OpcodeNotify),
		withClass(query("mesh.internal.", dns.TypeSOA), dns.ClassCHAOS),
		twoQuestions(),
		twoOPTs(),
		asResponse(query("web.mesh.internal.", dns.TypeA)),
		query("example.com.", dns.TypeA),
	}
	for _, m := range seeds {
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire, true)
		f.Add(wire, false)
	}
	h := newTestHandler(f, Config{})
	f.Fuzz(func(t *testing.T, wire []byte, udp bool) {
		req := new(dns.Msg)
		if req.Unpack(wire) != nil {
			return
		}
		w := newRecorder("127.0.0.1:5353", udp)
		h.ServeDNS(w, req)
		if w.writes > 1 {
			t.Fatalf("%d answers to one query", w.writes)
		}
		if w.writes == 0 {
			if !req.Response {
				t.Fatalf("query left unanswered:\n%v", req)
			}
			return
		}
		if req.Response {
			t.Fatalf("answered a response")
		}
		resp := w.msg
		if !resp.Response || resp.Id != req.Id {
			t.Fatalf("answer QR %v ID %d to query ID %d", resp.Response, resp.Id, req.Id)
		}
		out, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, resp)
		}
		if udp && len(out) > udpLimit(req) {
			t.Fatalf("UDP answer of %d bytes for a client taking %d", len(out), udpLimit(req))
		}
		if back := new(dns.Msg); back.Unpack(out) != nil {
			t.Fatalf("answer does not unpack")
		}
	})
}
