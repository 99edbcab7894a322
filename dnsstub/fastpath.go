package dnsstub

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/miekg/dns"
)

// The fast path answers a repeated in-zone question from the packed bytes
// of the first answer, without unpacking the query or packing a reply: it
// is what lets a Go stub keep up with unbound. Answers depend only on the
// zone and on the key below, so each zone has its own cache and a new zone
// starts empty.
const (
	// maxCachedAnswer keeps only answers that fit any UDP client (RFC 1035
	// 512 bytes), so the client's buffer size needs no place in the key.
	maxCachedAnswer = dns.MinMsgSize
	// maxCachedAnswers bounds the cache, since names that do not exist
	// (NXDOMAIN answers) are as many as a client cares to invent: at most
	// about 10 MB.
	maxCachedAnswers = 1 << 14
)

// answerCache maps a question key to its packed answer.
type answerCache struct {
	mu sync.RWMutex
	m  map[string]cachedAnswer
}

type cachedAnswer struct {
	wire  []byte
	rcode int
}

func (c *answerCache) get(key []byte) (cachedAnswer, bool) {
	c.mu.RLock()
	a, ok := c.m[string(key)] // no allocation: the compiler sees the lookup
	c.mu.RUnlock()
	return a, ok
}

func (c *answerCache) put(key, wire []byte, rcode int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedAnswers {
		// Full: start over rather than stop caching, so a client inventing
		// names costs the others one miss each, not the fast path.
		c.m = make(map[string]cachedAnswer)
	}
	c.m[string(key)] = cachedAnswer{wire: wire, rcode: rcode}
}

// Header bits the key keeps: everything else in a query's flags leaves
// the answer the same (SetReply copies RD and CD only).
const (
	flagRD   = 0x0100
	flagCD   = 0x0010
	maskQRop = 0xf800 // QR and opcode: must be zero in a plain query
	ednsDO   = 0x8000
)

// questionKey parses pkt as a plain query: one question, no compression,
// nothing but at most an EDNS version 0 OPT record after it, nothing
// trailing. It appends the key of the answer to dst (the question in lower
// case, its type and class, RD, CD, EDNS and DO) and returns it with the
// length of the name on the wire. ok is false for anything else, which
// takes the full path.
func questionKey(dst, pkt []byte) (key []byte, nameLen int, ok bool) {
	if len(pkt) < 12+1+4 {
		return nil, 0, false
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	qd, an, ns, ar := binary.BigEndian.Uint16(pkt[4:]), binary.BigEndian.Uint16(pkt[6:]), binary.BigEndian.Uint16(pkt[8:]), binary.BigEndian.Uint16(pkt[10:])
	if flags&maskQRop != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return nil, 0, false
	}
	off := 12
	for {
		if off >= len(pkt) {
			return nil, 0, false
		}
		l := int(pkt[off])
		if l == 0 {
			dst = append(dst, 0)
			off++
			break
		}
		// A label of 64 or more is a pointer or reserved: full path.
		if l > 63 || off+1+l > len(pkt) || off+1+l-12 > 254 {
			return nil, 0, false
		}
		dst = append(dst, byte(l))
		for _, c := range pkt[off+1 : off+1+l] {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
		}
		off += 1 + l
	}
	nameLen = off - 12
	if off+4 > len(pkt) {
		return nil, 0, false
	}
	dst = append(dst, pkt[off:off+4]...) // type and class
	off += 4
	var bits byte
	if flags&flagRD != 0 {
		bits |= 1
	}
	if flags&flagCD != 0 {
		bits |= 2
	}
	if ar == 1 {
		// OPT: root name, type 41, class = payload size, TTL = extended
		// rcode, version, flags; then options, which change nothing.
		if off+11 > len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != dns.TypeOPT || pkt[off+6] != 0 {
			return nil, 0, false
		}
		bits |= 4
		if binary.BigEndian.Uint16(pkt[off+7:])&ednsDO != 0 {
			bits |= 8
		}
		rdlen := int(binary.BigEndian.Uint16(pkt[off+9:]))
		off += 11
		if off+rdlen != len(pkt) || !plainOptions(pkt[off:off+rdlen]) {
			return nil, 0, false
		}
		off += rdlen
	}
	if off != len(pkt) {
		return nil, 0, false
	}
	return append(dst, bits), nameLen, true
}

// fastAnswer writes into out the cached answer to pkt from client, if there
// is one: the cached bytes with the query's ID and its question in the
// letter case asked (names in the answer point at it, so they follow).
func (h *Handler) fastAnswer(pkt []byte, client netip.Addr, out, keyBuf []byte) ([]byte, bool) {
	key, nameLen, ok := questionKey(keyBuf[:0], pkt)
	if !ok || !h.allowed(client) {
		return nil, false
	}
	a, ok := h.zone.Load().cache.get(key)
	if !ok {
		return nil, false
	}
	out = append(out[:0], a.wire...)
	copy(out[0:2], pkt[0:2])
	copy(out[12:12+nameLen], pkt[12:12+nameLen])
	h.stats.count(a.rcode)
	h.stats.cacheHits.Add(1)
	return out, true
}

// EDNS options the fast path lets through: those miekg unpacks without
// ever failing, so the full path would not answer FORMERR either.
const (
	optCookie  = 10 // RFC 7873: 8 bytes of client cookie, or 16 to 40 with the server's
	optPadding = 12 // RFC 7830
)

// plainOptions reports whether the OPT rdata is a well-formed list of
// cookie and padding options only; anything else takes the full path,
// which checks it.
func plainOptions(rdata []byte) bool {
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return false
		}
		code, n := binary.BigEndian.Uint16(rdata), int(binary.BigEndian.Uint16(rdata[2:]))
		if 4+n > len(rdata) {
			return false
		}
		switch {
		case code == optPadding:
		case code == optCookie && (n == 8 || 16 <= n && n <= 40):
		default:
			return false
		}
		rdata = rdata[4+n:]
	}
	return true
}
