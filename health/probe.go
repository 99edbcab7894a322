package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"

	"github.com/miekg/dns"
)

// Probe runs one check of kind c.Kind against addr, bounded by ctx and by
// c.Timeout (when set). It returns nil when the check passes, else why it
// failed.
func Probe(ctx context.Context, addr netip.AddrPort, c Check) error {
	switch c.Kind {
	case TCP:
		return ProbeTCP(ctx, addr, c)
	case HTTP:
		return ProbeHTTP(ctx, addr, c)
	case DNS:
		return ProbeDNS(ctx, addr, c)
	}
	return fmt.Errorf("probe: unknown check kind %v", c.Kind)
}

// ProbeTCP passes when a TCP connection to addr opens; it is closed at
// once.
func ProbeTCP(ctx context.Context, addr netip.AddrPort, c Check) error {
	ctx, cancel := withTimeout(ctx, c)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", dialAddr(addr))
	if err != nil {
		return failure(ctx, "connect", err)
	}
	conn.Close()
	return nil
}

// bodyLimit is how much of an HTTP answer's body is read.
const bodyLimit = 4 << 10

// httpClient serves every HTTP check: a fresh connection each time
// (keep-alives off, so no pool to grow with the number of backends), no
// proxy from the environment (checks go straight to the backend), no
// redirects followed.
var httpClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{}).DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// ProbeHTTP passes when a GET of c.Path (default "/") at addr answers with
// a status in [c.StatusMin, c.StatusMax] (200-399 when both are zero). The
// Host header is c.Host, or addr when empty. At most a few KiB of the body
// are read.
func ProbeHTTP(ctx context.Context, addr netip.AddrPort, c Check) error {
	ctx, cancel := withTimeout(ctx, c)
	defer cancel()
	path := c.Path
	if path == "" {
		path = "/"
	}
	op := "get " + path
	u, err := url.ParseRequestURI(path)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return fmt.Errorf("%s: not a path", op)
	}
	u.Scheme, u.Host = "http", dialAddr(addr)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if c.Host != "" {
		req.Host = c.Host
	}
	req.Header.Set("User-Agent", "sockmesh-health")
	resp, err := httpClient.Do(req)
	if err != nil {
		return failure(ctx, op, err)
	}
	// The body is read only so that the server sees its answer taken;
	// the status decides.
	_, _ = io.CopyN(io.Discard, resp.Body, bodyLimit)
	resp.Body.Close()
	lo, hi := c.StatusMin, c.StatusMax
	if lo == 0 && hi == 0 {
		lo, hi = 200, 399
	}
	if resp.StatusCode < lo || resp.StatusCode > hi {
		return fmt.Errorf("status %d, want %d-%d", resp.StatusCode, lo, hi)
	}
	return nil
}

// dnsBufSize is the buffer for a DNS answer over UDP: more than the 512
// bytes a query without EDNS allows, so a server that sends more is still
// understood.
const dnsBufSize = 4096

// ProbeDNS passes when a DNS query over UDP for c.Query (default ".") of
// type c.QType (default NS) to addr gets a well-formed response with the
// query's id, whatever its response code: the server is alive.
func ProbeDNS(ctx context.Context, addr netip.AddrPort, c Check) error {
	ctx, cancel := withTimeout(ctx, c)
	defer cancel()
	name, qtype := c.Query, c.QType
	if name == "" {
		name = "."
	}
	if qtype == 0 {
		qtype = dns.TypeNS
	}
	name = dns.Fqdn(name)
	op := "query " + name + " " + dns.Type(qtype).String()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype) // a random id, recursion desired
	cl := &dns.Client{Net: "udp", Timeout: c.Timeout, UDPSize: dnsBufSize}
	conn, err := cl.DialContext(ctx, dialAddr(addr))
	if err != nil {
		return failure(ctx, op, err)
	}
	defer conn.Close()
	// The client obeys only the context's deadline: closing the socket
	// ends the wait when the context is cancelled early.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r, _, err := cl.ExchangeWithConnContext(ctx, m, conn)
	if err != nil {
		return failure(ctx, op, err)
	}
	if !r.Response || r.Id != m.Id {
		return fmt.Errorf("%s: not a response to the query", op)
	}
	return nil
}

// withTimeout bounds ctx by c.Timeout when set.
func withTimeout(ctx context.Context, c Check) (context.Context, context.CancelFunc) {
	if c.Timeout > 0 {
		return context.WithTimeout(ctx, c.Timeout)
	}
	return context.WithCancel(ctx)
}

// dialAddr is addr as a dialer takes it: a v4-mapped address as IPv4,
// IPv6 in brackets.
func dialAddr(addr netip.AddrPort) string {
	return netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()).String()
}

// timeoutError is a probe that ran out of time (or was cancelled).
type timeoutError struct {
	op  string
	err error // the context's error
}

func (e *timeoutError) Error() string {
	if errors.Is(e.err, context.Canceled) {
		return e.op + ": canceled"
	}
	return e.op + ": timeout"
}

func (e *timeoutError) Unwrap() error { return e.err }

// Timeout tells net.Error users that the deadline passed.
func (e *timeoutError) Timeout() bool { return errors.Is(e.err, context.DeadlineExceeded) }

// failure is err of op with what the status already says (the address,
// the URL) left out: "connect: connection refused", "get /: timeout".
func failure(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &timeoutError{op: op, err: ctxErr}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// A socket deadline taken from ctx's, passed a moment before
		// ctx noticed.
		return &timeoutError{op: op, err: context.DeadlineExceeded}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
		var se *os.SyscallError
		if errors.As(err, &se) && se.Syscall == op {
			return se // "connect: connection refused"
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}
