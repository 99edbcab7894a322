package dnsstub

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// forwarder sends questions outside our zones to the upstream resolvers.
type forwarder struct {
	upstreams []string // host:port
	udp, tcp  *dns.Client
	// preferred is the upstream that answered last: the next question
	// starts there, so a dead first upstream costs one timeout, not one
	// per question.
	preferred atomic.Int32
	// slots bounds the questions in flight.
	slots chan struct{}
}

func newForwarder(upstreams []netip.AddrPort, timeout time.Duration, maxInFlight int) *forwarder {
	f := &forwarder{
		udp:   &dns.Client{Net: "udp", Timeout: timeout, UDPSize: ednsSize},
		tcp:   &dns.Client{Net: "tcp", Timeout: timeout},
		slots: make(chan struct{}, maxInFlight),
	}
	for _, u := range upstreams {
		f.upstreams = append(f.upstreams, u.String())
	}
	return f
}

func (f *forwarder) acquire() bool {
	select {
	case f.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (f *forwarder) release() { <-f.slots }

// errUpstream is an upstream's refusal or failure, worth trying the next.
var errUpstream = errors.New("upstream failed")

// exchange asks the upstreams, starting with the preferred one, until one
// answers; the answer is readied for the client of r.
func (f *forwarder) exchange(r *dns.Msg, q dns.Question, opt *dns.OPT) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.Id = dns.Id() // our own: the client's ID is no secret to an upstream spoofer
	m.Opcode = dns.OpcodeQuery
	m.RecursionDesired = r.RecursionDesired
	m.CheckingDisabled = r.CheckingDisabled
	m.AuthenticatedData = r.AuthenticatedData
	m.Question = []dns.Question{q}
	// Always EDNS upstream: big answers arrive whole over UDP, and the
	// answer is cut down to what the client takes afterwards.
	m.SetEdns0(ednsSize, opt != nil && opt.Do())

	var errs []error
	start := int(f.preferred.Load())
	for i := range f.upstreams {
		idx := (start + i) % len(f.upstreams)
		resp, err := f.ask(m, f.upstreams[idx])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.upstreams[idx], err))
			continue
		}
		f.preferred.Store(int32(idx))
		return f.toClient(resp, r, opt), nil
	}
	return nil, errors.Join(errs...)
}

// ask puts m to one upstream over UDP, and again over TCP when the UDP
// answer is truncated.
func (f *forwarder) ask(m *dns.Msg, upstream string) (*dns.Msg, error) {
	resp, _, err := f.udp.Exchange(m, upstream)
	if err == nil && resp.Truncated {
		resp, _, err = f.tcp.Exchange(m, upstream)
	}
	if err != nil {
		return nil, err
	}
	if len(resp.Question) != 1 || !sameQuestion(resp.Question[0], m.Question[0]) {
		return nil, fmt.Errorf("answer is for another question: %w", errUpstream)
	}
	switch resp.Rcode {
	case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented, dns.RcodeFormatError:
		return nil, fmt.Errorf("%s: %w", rcodeName(resp.Rcode), errUpstream)
	}
	return resp, nil
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// toClient turns an upstream's answer into ours: the client's ID and
// question (with its letter case), and no OPT but the one respond adds.
func (f *forwarder) toClient(resp, r *dns.Msg, opt *dns.OPT) *dns.Msg {
	resp.Id = r.Id
	resp.Authoritative = false // the upstream's zone, not ours
	resp.Question = r.Question
	resp.Compress = true
	extra := resp.Extra[:0]
	for _, rr := range resp.Extra {
		if _, isOPT := rr.(*dns.OPT); !isOPT {
			extra = append(extra, rr)
		}
	}
	resp.Extra = extra
	if opt == nil && resp.Rcode > 0xf {
		resp.Rcode = dns.RcodeServerFailure // an extended rcode needs EDNS to travel
	}
	return resp
}
