// Package dnsstub is the DNS side of sockmesh: it answers the service names
// of the live registry (A, AAAA, SRV, and PTR for the VIPs) and forwards
// every other name to the host's upstream resolvers.
package dnsstub

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Defaults for Config.
const (
	DefaultZone = "mesh.internal."
	// DefaultTTL is long: a VIP does not move while its service exists.
	DefaultTTL = 5 * time.Minute
	// DefaultNegativeTTL is short, so a service just added resolves soon
	// even for a client that asked before.
	DefaultNegativeTTL     = 5 * time.Second
	DefaultUpstreamTimeout = 2 * time.Second
	DefaultMaxForwards     = 512
	// MaxTTL is the largest TTL RFC 2181 (section 8) allows: 2^31 - 1 s.
	MaxTTL = (1<<31 - 1) * time.Second
	// ednsSize is the UDP payload size we offer and send at most: the DNS
	// flag day 2020 value, which avoids IP fragmentation on any path.
	ednsSize = 1232
)

// DefaultAllow are the clients answered unless Config.Allow says
// otherwise: this host only, so the stub is never an open resolver.
var DefaultAllow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// Config is how the stub answers.
type Config struct {
	// Zone is the domain the services live under (default mesh.internal.).
	Zone string
	// ReverseRanges are the VIP ranges: their reverse zones are answered
	// here (PTR for every VIP, NXDOMAIN for the rest) and never forwarded.
	ReverseRanges []netip.Prefix
	// TTL is the TTL of positive answers, NegativeTTL that of NXDOMAIN and
	// NODATA (the SOA minimum).
	TTL, NegativeTTL time.Duration
	// Allow are the client networks answered; others get REFUSED (UDP) or
	// a closed connection (TCP). Default: loopback.
	Allow []netip.Prefix
	// Upstreams get every question outside our zones, in order, failing
	// over to the next on timeout or server failure. None: REFUSED.
	Upstreams []netip.AddrPort
	// UpstreamTimeout bounds one try at one upstream.
	UpstreamTimeout time.Duration
	// MaxForwards bounds the questions waiting on upstreams; beyond it new
	// ones are dropped (clients retry), so a flood cannot pile up.
	MaxForwards int
	Logger      *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Zone == "" {
		c.Zone = DefaultZone
	}
	zone, err := CanonicalZone(c.Zone)
	if err != nil {
		return err
	}
	c.Zone = zone
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = DefaultNegativeTTL
	}
	if c.TTL < 0 || c.NegativeTTL < 0 || c.TTL > MaxTTL || c.NegativeTTL > MaxTTL {
		return fmt.Errorf("check TTLs: a TTL is from 0 to %v (RFC 2181)", MaxTTL)
	}
	if c.Allow == nil {
		c.Allow = DefaultAllow
	}
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if c.MaxForwards <= 0 {
		c.MaxForwards = DefaultMaxForwards
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// CanonicalZone checks a zone name and returns it lower-case and fully
// qualified.
func CanonicalZone(name string) (string, error) {
	fqdn := dns.CanonicalName(name)
	if _, ok := dns.IsDomainName(fqdn); !ok || fqdn == "." {
		return "", fmt.Errorf("check zone %q: not a domain name below the root", name)
	}
	for _, label := range dns.SplitDomainName(fqdn) {
		if strings.ContainsAny(label, `\ ()";@$`) {
			return "", fmt.Errorf("check zone %q: label %q has characters a host name cannot", name, label)
		}
	}
	return fqdn, nil
}

// Handler answers DNS questions: a dns.Handler. It is safe for concurrent
// use; Update swaps the zone atomically.
type Handler struct {
	cfg   Config
	zcfg  zoneConfig
	zone  atomic.Pointer[zone]
	fwd   atomic.Pointer[forwarder] // nil: nothing is forwarded
	stats counters
	// pending makes the latest service set Publish was given, which no build
	// took yet; building is true while a goroutine builds.
	pending  atomic.Pointer[func() []Service]
	building atomic.Bool
}

// NewHandler makes a handler with an empty zone.
func NewHandler(cfg Config) (*Handler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h := &Handler{
		cfg: cfg,
		zcfg: zoneConfig{
			origin:      cfg.Zone,
			reverse:     cfg.ReverseRanges,
			ttl:         uint32(cfg.TTL / time.Second),
			negativeTTL: uint32(cfg.NegativeTTL / time.Second),
		},
	}
	h.SetUpstreams(cfg.Upstreams)
	h.Update(nil)
	return h, nil
}

// SetUpstreams replaces the upstreams (the daemon's SIGHUP re-reads the
// host's). Questions already forwarded finish with the old ones.
func (h *Handler) SetUpstreams(upstreams []netip.AddrPort) {
	if len(upstreams) == 0 {
		h.fwd.Store(nil)
		return
	}
	h.fwd.Store(newForwarder(upstreams, h.cfg.UpstreamTimeout, h.cfg.MaxForwards))
}

// Zone is the zone the services live under, fully qualified.
func (h *Handler) Zone() string { return h.cfg.Zone }

// Update replaces the services answered. Call it only once the datapath
// routes them: a name must never resolve to a VIP that does not work yet.
func (h *Handler) Update(services []Service) {
	h.zone.Store(buildZone(h.zcfg, services))
}

// Publish is Update in the background, for callers that must not wait the
// zone build (about 3 µs a service): it returns at once, and a build in
// progress is followed by one of the latest services published, skipping
// those in between. Answers never go back to an older set.
func (h *Handler) Publish(services []Service) {
	h.PublishFrom(func() []Service { return services })
}

// PublishFrom is Publish of the services list returns, called in the
// background: a caller whose conversion to Services costs time per
// service hands that over too. A list skipped for a later one is never
// made.
func (h *Handler) PublishFrom(list func() []Service) {
	h.pending.Store(&list)
	if h.building.CompareAndSwap(false, true) {
		go h.buildPending()
	}
}

func (h *Handler) buildPending() {
	for {
		if p := h.pending.Swap(nil); p != nil {
			h.Update((*p)())
			continue
		}
		h.building.Store(false)
		// A Publish between the Swap and the Store saw a build running
		// and started none: take its services unless another did.
		if h.pending.Load() == nil || !h.building.CompareAndSwap(false, true) {
			return
		}
	}
}

// allowed reports whether a client may ask.
func (h *Handler) allowed(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range h.cfg.Allow {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ServeDNS answers one query.
func (h *Handler) ServeDNS(w dns.ResponseWriter, r *dns.Msg) { h.serve(w, r, nil) }

// serve answers r. key, when not nil, is the fast-path key of the UDP
// packet r came in: an answer from our zones is then cached under it.
func (h *Handler) serve(w dns.ResponseWriter, r *dns.Msg, key []byte) {
	client, udp := remote(w.RemoteAddr())
	z := h.zone.Load()
	resp, ours := h.respond(z, r, client)
	if resp == nil {
		h.stats.dropped.Add(1)
		return
	}
	if udp {
		resp.Truncate(udpLimit(r))
		// Truncate drops compression when the answer fits without it;
		// cached answers need it: their names point at the question.
		resp.Compress = true
	}
	h.stats.count(resp.Rcode)
	var err error
	// Only answers from our zone are cached: they change only with the
	// zone, which has its own cache. Forwarded answers have TTLs of their
	// own and are never kept.
	if key != nil && ours && !resp.Truncated {
		var wire []byte
		if wire, err = resp.Pack(); err == nil {
			if len(wire) <= maxCachedAnswer {
				z.cache.put(key, wire, resp.Rcode)
			}
			_, err = w.Write(wire)
		}
	} else {
		err = w.WriteMsg(resp)
	}
	if err != nil {
		h.cfg.Logger.Debug("write DNS answer", "client", client, "error", err)
	}
}

// remote returns the client address and whether it came over UDP.
func remote(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), true
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), false
	}
	return netip.Addr{}, true
}

// udpLimit is the largest UDP answer the client takes: 512 bytes without
// EDNS (RFC 1035), else what it offers, capped by what we offer.
func udpLimit(r *dns.Msg) int {
	if opt := r.IsEdns0(); opt != nil {
		return int(max(dns.MinMsgSize, min(opt.UDPSize(), ednsSize)))
	}
	return dns.MinMsgSize
}

// respond builds the answer to r, or returns nil to send none; ours is
// true for an answer from the zone z (not forwarded, not an error).
func (h *Handler) respond(z *zone, r *dns.Msg, client netip.Addr) (resp *dns.Msg, ours bool) {
	if r.Response {
		return nil, false // never answer an answer: that is how loops and reflection start
	}
	opt, ednsRcode := checkEDNS(r)
	resp, ours = h.answer(z, r, client, opt, ednsRcode)
	if resp == nil {
		return nil, false
	}
	switch {
	case resp.Rcode == dns.RcodeBadVers:
		// The extended rcode's upper bits travel in the OPT record.
		resp.SetEdns0(ednsSize, false)
		resp.Rcode = dns.RcodeBadVers
	case opt != nil:
		// RFC 6891 7: a request with OPT gets a response with OPT.
		resp.SetEdns0(ednsSize, opt.Do())
	}
	return resp, ours
}

// answer applies the rules in order: client allowed, opcode, question
// count, EDNS, question type and class, then our zones or the upstreams.
func (h *Handler) answer(z *zone, r *dns.Msg, client netip.Addr, opt *dns.OPT, ednsRcode int) (*dns.Msg, bool) {
	if !h.allowed(client) {
		return h.fail(r, dns.RcodeRefused), false
	}
	if r.Opcode != dns.OpcodeQuery {
		return h.fail(r, dns.RcodeNotImplemented), false
	}
	if len(r.Question) != 1 {
		return h.fail(r, dns.RcodeFormatError), false
	}
	if ednsRcode != dns.RcodeSuccess {
		return h.fail(r, ednsRcode), false
	}
	q := r.Question[0]
	switch q.Qtype {
	case dns.TypeOPT, dns.TypeTSIG, dns.TypeTKEY:
		// Meta types that are never questions (RFC 6891, 8945, 2930).
		return h.fail(r, dns.RcodeFormatError), false
	}
	if q.Qclass == dns.ClassNONE {
		return h.fail(r, dns.RcodeFormatError), false // only valid in UPDATE (RFC 2136)
	}
	var resp *dns.Msg
	ours := false
	if ans, inZone := z.lookup(dns.CanonicalName(q.Name), q.Qtype); inZone {
		resp, ours = h.authoritative(r, q, ans)
	} else if resp = h.forward(r, q, opt); resp == nil {
		return nil, false
	}
	resp.RecursionAvailable = h.fwd.Load() != nil
	return resp, ours
}

// checkEDNS returns the request's OPT record, or the rcode for a bad one:
// FORMERR for more than one OPT or one not owned by the root (RFC 6891
// 6.1.1), BADVERS for a version we do not speak.
func checkEDNS(r *dns.Msg) (*dns.OPT, int) {
	var opt *dns.OPT
	for _, rr := range r.Extra {
		o, ok := rr.(*dns.OPT)
		if !ok {
			continue
		}
		if opt != nil || o.Hdr.Name != "." {
			return nil, dns.RcodeFormatError
		}
		opt = o
	}
	if opt != nil && opt.Version() != 0 {
		return nil, dns.RcodeBadVers
	}
	return opt, dns.RcodeSuccess
}

// fail is an answer with rcode and the question echoed, nothing else.
func (h *Handler) fail(r *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(r, rcode)
	if len(r.Question) > 1 {
		resp.Question = nil
	}
	return resp
}

// authoritative answers a question about one of our zones.
func (h *Handler) authoritative(r *dns.Msg, q dns.Question, ans answer) (*dns.Msg, bool) {
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return h.fail(r, dns.RcodeRefused), false // we serve the Internet class only
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		return h.fail(r, dns.RcodeRefused), false // no zone transfers
	}
	resp := new(dns.Msg)
	resp.SetReply(r)
	resp.Authoritative = true
	resp.Compress = true
	resp.Rcode = ans.rcode
	resp.Answer = ans.records
	if qname := dns.CanonicalName(q.Name); q.Name != qname {
		// Answer in the letter case asked: resolvers that randomise it
		// (DNS 0x20) compare.
		resp.Answer = make([]dns.RR, len(ans.records))
		for i, rr := range ans.records {
			rr = dns.Copy(rr)
			if rr.Header().Name == qname {
				rr.Header().Name = q.Name
			}
			resp.Answer[i] = rr
		}
	}
	resp.Extra = ans.extra
	if ans.soa != nil {
		resp.Ns = []dns.RR{ans.soa}
	}
	return resp, true
}

// forward asks the upstreams a question outside our zones; nil means drop.
func (h *Handler) forward(r *dns.Msg, q dns.Question, opt *dns.OPT) *dns.Msg {
	fwd := h.fwd.Load()
	if fwd == nil || q.Qclass != dns.ClassINET {
		return h.fail(r, dns.RcodeRefused)
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		return h.fail(r, dns.RcodeRefused)
	}
	if !fwd.acquire() {
		return nil
	}
	defer fwd.release()
	h.stats.forwarded.Add(1)
	resp, err := fwd.exchange(r, q, opt)
	if err != nil {
		h.stats.upstreamFailures.Add(1)
		h.cfg.Logger.Debug("forward DNS question", "name", q.Name, "type", dns.TypeToString[q.Qtype], "error", err)
		return h.fail(r, dns.RcodeServerFailure)
	}
	return resp
}

// Stats counts what the handler did since it started.
type Stats struct {
	// Rcodes counts the answers sent, by response code (NOERROR, NXDOMAIN…).
	Rcodes map[string]uint64
	// Forwarded counts questions sent upstream, UpstreamFailures those no
	// upstream answered, Dropped queries left unanswered (responses,
	// forwards beyond MaxForwards).
	Forwarded, UpstreamFailures, Dropped uint64
	// CacheHits counts answers sent from the packed-answer cache.
	CacheHits uint64
}

// Stats returns the counters.
func (h *Handler) Stats() Stats {
	s := Stats{
		Rcodes:           make(map[string]uint64),
		Forwarded:        h.stats.forwarded.Load(),
		UpstreamFailures: h.stats.upstreamFailures.Load(),
		Dropped:          h.stats.dropped.Load(),
		CacheHits:        h.stats.cacheHits.Load(),
	}
	for rc := range h.stats.rcodes {
		if n := h.stats.rcodes[rc].Load(); n > 0 {
			s.Rcodes[rcodeName(rc)] = n
		}
	}
	return s
}

func rcodeName(rc int) string {
	if name, ok := dns.RcodeToString[rc]; ok {
		return name
	}
	return fmt.Sprintf("RCODE%d", rc)
}

type counters struct {
	rcodes                               [24]atomic.Uint64
	forwarded, upstreamFailures, dropped atomic.Uint64
	cacheHits                            atomic.Uint64
}

func (c *counters) count(rcode int) {
	if rcode >= 0 && rcode < len(c.rcodes) {
		c.rcodes[rcode].Add(1)
	}
}
