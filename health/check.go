// Package health runs active health checks against service backends (TCP
// connect, HTTP GET, DNS query over UDP) and turns their results into a
// state per backend with rise and fall thresholds.
package health

import (
	"fmt"
	"net/netip"
	"time"
)

// Kind is the kind of a check.
type Kind uint8

// The kinds of check.
const (
	// TCP passes when a TCP connect to the backend succeeds.
	TCP Kind = iota + 1
	// HTTP passes when a GET of Path answers with a status in
	// [StatusMin, StatusMax].
	HTTP
	// DNS passes when a DNS query over UDP gets a well-formed answer
	// (any response code: the server is alive and answering).
	DNS
)

func (k Kind) String() string {
	switch k {
	case TCP:
		return "tcp"
	case HTTP:
		return "http"
	case DNS:
		return "dns"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind parses "tcp", "http" or "dns".
func ParseKind(s string) (Kind, error) {
	for _, k := range []Kind{TCP, HTTP, DNS} {
		if s == k.String() {
			return k, nil
		}
	}
	return 0, fmt.Errorf("parse check kind %q: want tcp, http or dns", s)
}

// Check is how one backend is checked.
type Check struct {
	Kind Kind
	// Port is the port probed; 0 means the backend's port for the
	// service's first port of the check's protocol (TCP for tcp and http,
	// UDP for dns).
	Port uint16
	// Interval is the time between the starts of two checks; Timeout
	// bounds one check (at most Interval).
	Interval, Timeout time.Duration
	// Rise is how many checks in a row must pass to bring a down backend
	// up; Fall how many must fail to take an up backend down.
	Rise, Fall int

	// HTTP: the path (and Host header, empty for the backend's address)
	// to GET, and the range of status codes that pass.
	Path                 string
	Host                 string
	StatusMin, StatusMax int

	// DNS: the name (fully qualified) and type queried.
	Query string
	QType uint16
}

// Defaults are the checks a service gets when it names only the kind
// (health: tcp): HAProxy's timing (2 s interval, rise 2, fall 3) with a 1 s
// timeout, GET / with any 2xx or 3xx for HTTP, and a query for the root's
// NS records for DNS.
func Defaults(k Kind) Check {
	c := Check{Kind: k, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	switch k {
	case HTTP:
		c.Path, c.StatusMin, c.StatusMax = "/", 200, 399
	case DNS:
		c.Query, c.QType = ".", 2 // NS
	}
	return c
}

// Target is one backend of one service to check.
type Target struct {
	// Service is the service's name, Backend the backend as its file
	// names it (address, and port when the backend has one for every
	// service port): together they identify the target.
	Service string
	Backend string
	// Addr is what is probed: the backend's address and the check's port.
	Addr  netip.AddrPort
	Check Check
}
