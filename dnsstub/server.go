package dnsstub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// DefaultListen is where the stub listens unless told otherwise: a
// loopback address of its own, so it never fights systemd-resolved
// (127.0.0.53, 127.0.0.54) or a dnsmasq on 127.0.0.1 for port 53.
var DefaultListen = netip.MustParseAddrPort("127.0.0.153:53")

// Limits on TCP clients, so idle or slow connections cannot starve the
// others: per client address and in all.
const (
	maxTCPPerClient = 32
	maxTCPConns     = 1024
	tcpIdleTimeout  = 10 * time.Second
	ioTimeout       = 2 * time.Second
	// udpReadSize is the largest query read; anything longer is cut and
	// answered FORMERR.
	udpReadSize = 4096
	// udpReadBuffer is the socket receive buffer asked for.
	udpReadBuffer = 4 << 20
)

// Server serves a Handler over UDP and TCP on one or more addresses.
type Server struct {
	handler *Handler
	log     *slog.Logger
	addrs   []netip.AddrPort
	servers []*dns.Server
	udp     []*udpServer
	errs    chan error
}

// Listen binds UDP and TCP on each address (port 0 picks one free port
// for both) and starts serving h.
func Listen(h *Handler, addrs []netip.AddrPort) (*Server, error) {
	s := &Server{handler: h, log: h.cfg.Logger, errs: make(chan error, (2+runtime.GOMAXPROCS(0))*len(addrs))}
	for _, addr := range addrs {
		if err := s.listen(addr); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) listen(addr netip.AddrPort) error {
	h := s.handler
	var udp *udpServer
	var pc net.PacketConn
	var l *net.TCPListener
	var err error
	if addr.Addr().IsUnspecified() {
		pc, l, err = listenBoth(addr)
	} else {
		udp, l, err = listenFast(h, addr)
	}
	if err != nil {
		return err
	}
	bound := netip.AddrPortFrom(addr.Addr(), netip.MustParseAddrPort(l.Addr().String()).Port())
	s.addrs = append(s.addrs, bound)
	servers := []*dns.Server{{
		Listener:      &guardedListener{Listener: l, allowed: h.allowed, perClient: map[netip.Addr]int{}},
		Handler:       h,
		ReadTimeout:   ioTimeout,
		WriteTimeout:  ioTimeout,
		IdleTimeout:   func() time.Duration { return tcpIdleTimeout },
		MsgAcceptFunc: dns.DefaultMsgAcceptFunc,
	}}
	if udp != nil {
		s.udp = append(s.udp, udp)
		udp.serve(s.errs)
	} else {
		servers = append(servers, &dns.Server{
			PacketConn:    pc,
			Handler:       h,
			UDPSize:       udpReadSize,
			ReadTimeout:   ioTimeout,
			WriteTimeout:  ioTimeout,
			MsgAcceptFunc: dns.DefaultMsgAcceptFunc,
		})
	}
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		s.servers = append(s.servers, srv)
		go func() { s.errs <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-s.errs:
			return fmt.Errorf("serve DNS on %s: %w", bound, err)
		}
	}
	s.log.Info("DNS stub listening", "addr", bound, "zone", h.cfg.Zone)
	return nil
}

// listenFast binds the fast UDP server and TCP on the same address and
// port.
func listenFast(h *Handler, addr netip.AddrPort) (*udpServer, *net.TCPListener, error) {
	return withTCPTwin(addr, func() (*udpServer, netip.AddrPort, func(), error) {
		udp, err := listenUDP(h, addr)
		if err != nil {
			return nil, netip.AddrPort{}, nil, err
		}
		return udp, udp.addr(), func() { udp.close(0) }, nil
	})
}

// listenBoth binds a plain UDP socket and TCP on the same address and port.
func listenBoth(addr netip.AddrPort) (net.PacketConn, *net.TCPListener, error) {
	return withTCPTwin(addr, func() (net.PacketConn, netip.AddrPort, func(), error) {
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return nil, netip.AddrPort{}, nil, fmt.Errorf("listen for DNS on %s/udp: %w", addr, err)
		}
		// A deep receive buffer rides out bursts (the kernel caps it at
		// net.core.rmem_max); unbound advises the same.
		_ = pc.SetReadBuffer(udpReadBuffer)
		return pc, pc.LocalAddr().(*net.UDPAddr).AddrPort(), func() { pc.Close() }, nil
	})
}

// withTCPTwin binds UDP with bindUDP (which returns what it bound, the
// address it got and how to undo it), then TCP on the same address and
// port. With port 0 the kernel may pick a UDP port whose TCP twin is
// taken: then it picks again, a few times.
func withTCPTwin[U any](addr netip.AddrPort, bindUDP func() (U, netip.AddrPort, func(), error)) (U, *net.TCPListener, error) {
	for try := 0; ; try++ {
		udp, bound, undo, err := bindUDP()
		if err != nil {
			return udp, nil, err
		}
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(bound))
		if err == nil {
			return udp, l, nil
		}
		undo()
		if addr.Port() != 0 || try == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			var none U
			return none, nil, fmt.Errorf("listen for DNS on %s/tcp: %w", bound, err)
		}
	}
}

// Addrs are the addresses served (with the ports picked for port 0).
func (s *Server) Addrs() []netip.AddrPort { return s.addrs }

// Handler is the handler served.
func (s *Server) Handler() *Handler { return s.handler }

// Errors delivers an error when a listener stops on its own.
func (s *Server) Errors() <-chan error { return s.errs }

// Close stops serving, waiting at most a second for answers in flight.
func (s *Server) Close() error {
	deadline := time.Now().Add(time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var errs []error
	for _, srv := range s.servers {
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, u := range s.udp {
		u.close(time.Until(deadline))
	}
	return errors.Join(errs...)
}

// guardedListener closes TCP connections from clients not allowed, and
// those beyond the per-client and total limits, before reading a byte.
type guardedListener struct {
	net.Listener
	allowed func(netip.Addr) bool

	mu        sync.Mutex
	total     int
	perClient map[netip.Addr]int
}

func (g *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ta, ok := c.RemoteAddr().(*net.TCPAddr)
		if !ok {
			c.Close()
			continue
		}
		addr := ta.AddrPort().Addr().Unmap()
		if !g.allowed(addr) || !g.take(addr) {
			c.Close()
			continue
		}
		return &guardedConn{Conn: c, release: func() { g.give(addr) }}, nil
	}
}

func (g *guardedListener) take(addr netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total >= maxTCPConns || g.perClient[addr] >= maxTCPPerClient {
		return false
	}
	g.total++
	g.perClient[addr]++
	return true
}

func (g *guardedListener) give(addr netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if g.perClient[addr]--; g.perClient[addr] == 0 {
		delete(g.perClient, addr)
	}
}

// guardedConn gives its slot back once, on the first Close.
type guardedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *guardedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
