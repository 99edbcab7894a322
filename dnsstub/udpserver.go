package dnsstub

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// udpServer serves UDP on one address with one socket per CPU (joined
// with SO_REUSEPORT, so the kernel spreads clients over them) and one
// goroutine per socket that answers cached questions inline. Everything
// else (first questions, forwards, bad packets) goes to a goroutine of its
// own through miekg's unpacking and the handler, as miekg's server would.
//
// It serves a specific address only: a reply must leave from the address
// the query came to, which a wildcard socket would have to choose per
// packet (miekg's server does that, and serves wildcards).
type udpServer struct {
	h      *Handler
	conns  []*net.UDPConn
	closed atomic.Bool
	wg     sync.WaitGroup // the read loops
	// inFlight counts the full-path answers being made.
	inFlight sync.WaitGroup
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	return errors.Join(err, serr)
}

// listenUDP binds the sockets; port 0 picks one port for all of them.
func listenUDP(h *Handler, addr netip.AddrPort) (*udpServer, error) {
	u := &udpServer{h: h}
	if addr.Port() != 0 {
		// SO_REUSEPORT would let us share the port with another
		// process's reuseport socket (a second daemon, say) and split the
		// queries: a plain bind first proves the port is free.
		probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return nil, fmt.Errorf("listen for DNS on %s/udp: %w", addr, err)
		}
		probe.Close()
	}
	lc := net.ListenConfig{Control: reusePort}
	for i := range runtime.GOMAXPROCS(0) {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr.String())
		if err != nil {
			u.close(0)
			return nil, fmt.Errorf("listen for DNS on %s/udp: %w", addr, err)
		}
		conn := pc.(*net.UDPConn)
		_ = conn.SetReadBuffer(udpReadBuffer)
		u.conns = append(u.conns, conn)
		if i == 0 {
			addr = conn.LocalAddr().(*net.UDPAddr).AddrPort()
		}
	}
	return u, nil
}

func (u *udpServer) addr() netip.AddrPort {
	return u.conns[0].LocalAddr().(*net.UDPAddr).AddrPort()
}

// serve runs the read loops and reports the first error that stops one.
func (u *udpServer) serve(errs chan<- error) {
	for _, c := range u.conns {
		u.wg.Go(func() {
			if err := u.loop(c); err != nil {
				errs <- err
			}
		})
	}
}

// batchSize is how many datagrams one recvmmsg/sendmmsg moves at most:
// under load one system call carries many answers.
const batchSize = 32

func (u *udpServer) loop(conn *net.UDPConn) error {
	// ipv4 and ipv6 PacketConns share the batch API (recvmmsg, sendmmsg).
	var batch interface {
		ReadBatch([]ipv4.Message, int) (int, error)
		WriteBatch([]ipv4.Message, int) (int, error)
	} = ipv4.NewPacketConn(conn)
	if u.addr().Addr().Is6() {
		batch = ipv6.NewPacketConn(conn)
	}
	in := make([]ipv4.Message, batchSize)
	out := make([]ipv4.Message, batchSize)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, udpReadSize)}
		out[i].Buffers = [][]byte{make([]byte, 0, maxCachedAnswer)}
	}
	key := make([]byte, 0, 512)
	for {
		n, err := batch.ReadBatch(in, 0)
		if err != nil {
			if u.closed.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("read DNS queries: %w", err)
		}
		k := 0
		for _, m := range in[:n] {
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			pkt := m.Buffers[0][:m.N]
			if resp, ok := u.h.fastAnswer(pkt, from.AddrPort().Addr().Unmap(), out[k].Buffers[0], key); ok {
				out[k].Buffers[0] = resp
				out[k].Addr = from
				k++
				continue
			}
			u.inFlight.Add(1)
			go u.slow(conn, slices.Clone(pkt), from.AddrPort())
		}
		for sent := 0; sent < k; {
			m, err := batch.WriteBatch(out[sent:k], 0)
			if err != nil {
				m = 1 // this one is lost (its client will ask again); on to the next
			}
			sent += m
		}
	}
}

// slow answers pkt the long way, on its own goroutine.
func (u *udpServer) slow(conn *net.UDPConn, pkt []byte, from netip.AddrPort) {
	defer u.inFlight.Done()
	u.h.servePacket(&udpWriter{conn: conn, remote: from}, pkt)
}

// servePacket answers a UDP packet the fast path could not: the checks
// miekg's server makes, its unpacking, then the handler, which caches what
// it can for the fast path.
func (h *Handler) servePacket(w dns.ResponseWriter, pkt []byte) {
	if len(pkt) < 12 {
		return // no header: any reply could be used to reflect
	}
	hdr := dns.Header{
		Id:      binary.BigEndian.Uint16(pkt[0:]),
		Bits:    binary.BigEndian.Uint16(pkt[2:]),
		Qdcount: binary.BigEndian.Uint16(pkt[4:]),
		Ancount: binary.BigEndian.Uint16(pkt[6:]),
		Nscount: binary.BigEndian.Uint16(pkt[8:]),
		Arcount: binary.BigEndian.Uint16(pkt[10:]),
	}
	rcode := dns.RcodeFormatError
	switch dns.DefaultMsgAcceptFunc(hdr) {
	case dns.MsgIgnore:
		return
	case dns.MsgRejectNotImplemented:
		rcode = dns.RcodeNotImplemented
	case dns.MsgAccept:
		req := new(dns.Msg)
		if req.Unpack(pkt) == nil {
			key, _, ok := questionKey(nil, pkt)
			if !ok {
				key = nil
			}
			h.serve(w, req, key)
			return
		}
	}
	resp := &dns.Msg{MsgHdr: dns.MsgHdr{Id: hdr.Id, Response: true, Opcode: int(hdr.Bits>>11) & 0xf, Rcode: rcode}}
	h.stats.count(rcode)
	_ = w.WriteMsg(resp)
}

// close stops the read loops at once and waits up to grace for answers
// in flight (forwards among them); those still waiting then find their
// socket closed.
func (u *udpServer) close(grace time.Duration) {
	u.closed.Store(true)
	// A read deadline in the past ends the read loops but leaves the
	// sockets open for the answers still being made.
	for _, c := range u.conns {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	u.wg.Wait()
	done := make(chan struct{})
	go func() { u.inFlight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
	}
	for _, c := range u.conns {
		c.Close()
	}
}

// udpWriter is the dns.ResponseWriter of the slow path.
type udpWriter struct {
	conn   *net.UDPConn
	remote netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.remote) }
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	wire, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(wire)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.conn.WriteToUDPAddrPort(b, w.remote) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
