// Package sockdiag lists and destroys TCP and UDP sockets through the
// kernel's sock_diag netlink interface (NETLINK_SOCK_DIAG, with
// INET_DIAG_DESTROY for SOCK_DESTROY), in any network namespace.
//
// sockmesh uses it to close the connected sockets that the datapath pinned
// to a backend once that backend is gone, so that applications such as
// resolvers reconnect and reach a live one. sock_diag only sees the network
// namespace of its netlink socket, while cgroup programs ignore network
// namespaces, so DestroyConnected searches every namespace of a cgroup
// subtree (see Namespaces).
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// TCP states, the numbering sock_diag reports for TCP and UDP alike. A UDP
// socket is StateEstablished when connected and StateClose otherwise.
const (
	StateEstablished = 1
	StateTimeWait    = 6
	StateClose       = 7
	StateListen      = 10
)

// AllStates is the Sockets state mask that selects every state.
const AllStates = ^uint32(0)

// Socket is one socket as sock_diag reports it.
type Socket struct {
	Family uint8 // unix.AF_INET or unix.AF_INET6
	Proto  uint8 // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	// State uses the TCP numbering (UDP: StateEstablished when connected,
	// StateClose when not).
	State uint8
	// Local and Remote are as reported: an AF_INET6 socket talking IPv4
	// has v4-mapped addresses.
	Local, Remote netip.AddrPort
	// Interface is the index of the device the socket is bound to, 0 if
	// none. Destroy needs it to find the socket again.
	Interface uint32
	Cookie    uint64
	Inode     uint32
	UID       uint32
}

func (s Socket) String() string {
	proto := fmt.Sprintf("proto %d", s.Proto)
	switch s.Proto {
	case unix.IPPROTO_TCP:
		proto = "tcp"
	case unix.IPPROTO_UDP:
		proto = "udp"
	}
	return fmt.Sprintf("%s %s -> %s state %d cookie %d", proto, s.Local, s.Remote, s.State, s.Cookie)
}

// ErrDumpInterrupted is returned by Sockets, with the sockets of the last
// attempt, when the kernel kept flagging the dump as inconsistent.
var ErrDumpInterrupted = errors.New("socket dump interrupted")

// dumpAttempts bounds the retries of an interrupted dump.
const dumpAttempts = 4

// recvTimeout bounds each wait for the kernel's answer.
const recvTimeout = 10 * time.Second

// Conn is a NETLINK_SOCK_DIAG socket opened inside one network namespace.
// It is safe for concurrent use; requests are serialised.
type Conn struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// Dial opens a sock_diag socket in the network namespace ns, or in the
// caller's (that of the calling thread) if ns is nil. The socket keeps
// seeing ns whichever thread later uses it.
func Dial(ns *Netns) (*Conn, error) {
	var fd int
	var err error
	if ns == nil {
		fd, err = openDiagSocket()
	} else {
		fd, err = ns.do(openDiagSocket)
	}
	if err != nil {
		return nil, fmt.Errorf("open sock_diag socket: %w", err)
	}
	return &Conn{fd: fd, seq: uint32(time.Now().UnixNano()), buf: make([]byte, 64<<10)}, nil
}

func openDiagSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Close closes the netlink socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// Sockets dumps the sockets of one family (unix.AF_INET or unix.AF_INET6)
// and protocol whose state is in the mask states (bit 1<<state; AllStates
// for all). An AF_INET6 dump includes dual-stack sockets talking IPv4; an
// AF_INET dump does not. A dump the kernel flags as interrupted is retried;
// if it stays interrupted, the last attempt's sockets come with
// ErrDumpInterrupted.
func (c *Conn) Sockets(family, proto uint8, states uint32) ([]Socket, error) {
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return nil, fmt.Errorf("dump sockets: unsupported family %d", family)
	}
	req := encodeReq(family, proto, states, sockID{cookie: noCookie})
	var socks []Socket
	for range dumpAttempts {
		socks = socks[:0]
		intr, err := c.request(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP, req, func(b []byte) error {
			s, err := decodeMsg(b, proto)
			if err != nil {
				return err
			}
			socks = append(socks, s)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("dump sockets: %w", err)
		}
		if !intr {
			return socks, nil
		}
	}
	return socks, ErrDumpInterrupted
}

// Destroy closes s with SOCK_DESTROY, finding it by its exact identity
// (addresses, ports, interface and cookie), so a socket that has since
// been replaced by another with the same addresses is left alone (a Cookie
// of 0, which the kernel never gives, matches any). The owner of a UDP
// socket gets ECONNABORTED from its next receive and the socket is
// disconnected; a TCP connection is reset (RST to the peer, ECONNABORTED
// to the owner). A socket already gone is not an error: the kernel's
// ENOENT, which it also gives when the socket it finds by the addresses
// has another cookie. It needs CAP_NET_ADMIN; a kernel without
// CONFIG_INET_DIAG_DESTROY answers EOPNOTSUPP.
func (c *Conn) Destroy(s Socket) error {
	if _, err := c.destroy(s); err != nil {
		return fmt.Errorf("destroy %s: %w", s, err)
	}
	return nil
}

// destroy is Destroy reporting whether the socket was already gone.
func (c *Conn) destroy(s Socket) (gone bool, err error) {
	id, err := idOf(s)
	if err != nil {
		return false, err
	}
	_, err = c.request(unix.SOCK_DESTROY, unix.NLM_F_ACK, encodeReq(s.Family, s.Proto, 0, id), func([]byte) error {
		return errors.New("unexpected answer to SOCK_DESTROY")
	})
	if errors.Is(err, unix.ENOENT) {
		return true, nil
	}
	return false, err
}

// request sends one request and reads the kernel's answers until the dump
// ends or the request is acknowledged, calling fn with the payload of each
// data message. It reports whether any message carried NLM_F_DUMP_INTR.
func (c *Conn) request(typ, flags uint16, body []byte, fn func([]byte) error) (intr bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return false, os.ErrClosed
	}
	c.seq++
	seq := c.seq
	msg := make([]byte, unix.NLMSG_HDRLEN+len(body))
	putHeader(msg, typ, unix.NLM_F_REQUEST|flags, seq)
	copy(msg[unix.NLMSG_HDRLEN:], body)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("send: %w", err)
	}
	// After fn fails, the rest of the answer is read and dropped: the
	// kernel refuses a new dump (EBUSY) while one is unfinished. Answers
	// left queued by a failed receive are skipped by sequence number.
	var ferr error
	each := func(b []byte) error {
		if ferr == nil {
			ferr = fn(b)
		}
		return nil
	}
	for {
		n, _, rflags, from, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return intr, fmt.Errorf("receive: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return intr, errors.New("receive: message truncated")
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		done, i, err := parseMessages(c.buf[:n], seq, each)
		intr = intr || i
		if err != nil {
			return intr, err
		}
		if done {
			return intr, ferr
		}
	}
}

func putHeader(b []byte, typ, flags uint16, seq uint32) {
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	binary.NativeEndian.PutUint32(b[12:16], 0)
}

// parseMessages walks the netlink messages in one datagram. Messages of
// other requests (another sequence number) are skipped. It returns done at
// NLMSG_DONE or at the NLMSG_ERROR that acknowledges or fails the request,
// and intr if a message carried NLM_F_DUMP_INTR.
func parseMessages(b []byte, seq uint32, fn func([]byte) error) (done, intr bool, err error) {
	for len(b) > 0 {
		if len(b) < unix.NLMSG_HDRLEN {
			return false, intr, fmt.Errorf("short netlink message: %d bytes", len(b))
		}
		l := binary.NativeEndian.Uint32(b[0:4])
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.NLMSG_HDRLEN || uint64(l) > uint64(len(b)) {
			return false, intr, fmt.Errorf("bad netlink message length %d (%d bytes left)", l, len(b))
		}
		payload := b[unix.NLMSG_HDRLEN:l]
		if next := nlmAlign(l); uint64(next) < uint64(len(b)) {
			b = b[next:]
		} else {
			b = nil
		}
		if mseq != seq {
			continue
		}
		if flags&unix.NLM_F_DUMP_INTR != 0 {
			intr = true
		}
		switch typ {
		case unix.NLMSG_NOOP:
		case unix.NLMSG_DONE:
			// Since Linux 4.x a failed dump ends with its error here.
			if len(payload) >= 4 {
				if e := int32(binary.NativeEndian.Uint32(payload)); e < 0 {
					return true, intr, unix.Errno(-e)
				}
			}
			return true, intr, nil
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return true, intr, errors.New("short netlink error message")
			}
			if e := int32(binary.NativeEndian.Uint32(payload)); e < 0 {
				return true, intr, unix.Errno(-e)
			}
			return true, intr, nil // acknowledgement
		case unix.NLMSG_OVERRUN:
			return true, intr, errors.New("netlink overrun")
		default:
			if err := fn(payload); err != nil {
				return false, intr, err
			}
		}
	}
	return false, intr, nil
}

func nlmAlign(l uint32) uint32 { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// Wire sizes of struct inet_diag_sockid, inet_diag_req_v2 and
// inet_diag_msg (linux/inet_diag.h).
const (
	sizeofSockID  = 48
	sizeofReqV2   = 8 + sizeofSockID
	sizeofDiagMsg = 4 + sizeofSockID + 20
)

// noCookie is INET_DIAG_NOCOOKIE in both words: match any cookie.
const noCookie = ^uint64(0)

// sockID is struct inet_diag_sockid: addresses are 16 bytes, an IPv4
// address in the first four.
type sockID struct {
	sport, dport uint16
	src, dst     [16]byte
	ifindex      uint32
	cookie       uint64
}

func (id *sockID) put(b []byte) {
	binary.BigEndian.PutUint16(b[0:2], id.sport)
	binary.BigEndian.PutUint16(b[2:4], id.dport)
	copy(b[4:20], id.src[:])
	copy(b[20:36], id.dst[:])
	binary.NativeEndian.PutUint32(b[36:40], id.ifindex)
	// The kernel stores the cookie as two host-order u32, low word first.
	binary.NativeEndian.PutUint32(b[40:44], uint32(id.cookie))
	binary.NativeEndian.PutUint32(b[44:48], uint32(id.cookie>>32))
}

func getID(b []byte) sockID {
	var id sockID
	id.sport = binary.BigEndian.Uint16(b[0:2])
	id.dport = binary.BigEndian.Uint16(b[2:4])
	copy(id.src[:], b[4:20])
	copy(id.dst[:], b[20:36])
	id.ifindex = binary.NativeEndian.Uint32(b[36:40])
	id.cookie = uint64(binary.NativeEndian.Uint32(b[40:44])) | uint64(binary.NativeEndian.Uint32(b[44:48]))<<32
	return id
}

// encodeReq encodes struct inet_diag_req_v2.
func encodeReq(family, proto uint8, states uint32, id sockID) []byte {
	b := make([]byte, sizeofReqV2)
	b[0] = family
	b[1] = proto
	// b[2] idiag_ext, b[3] pad: no extensions.
	binary.NativeEndian.PutUint32(b[4:8], states)
	id.put(b[8:])
	return b
}

// decodeMsg decodes struct inet_diag_msg (attributes after it are ignored).
func decodeMsg(b []byte, proto uint8) (Socket, error) {
	if len(b) < sizeofDiagMsg {
		return Socket{}, fmt.Errorf("short inet_diag_msg: %d bytes", len(b))
	}
	s := Socket{Family: b[0], Proto: proto, State: b[1]}
	id := getID(b[4 : 4+sizeofSockID])
	var src, dst netip.Addr
	switch s.Family {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(id.src[:4]))
		dst = netip.AddrFrom4([4]byte(id.dst[:4]))
	case unix.AF_INET6:
		src = netip.AddrFrom16(id.src)
		dst = netip.AddrFrom16(id.dst)
	default:
		return Socket{}, fmt.Errorf("inet_diag_msg of family %d", s.Family)
	}
	s.Local = netip.AddrPortFrom(src, id.sport)
	s.Remote = netip.AddrPortFrom(dst, id.dport)
	s.Interface = id.ifindex
	s.Cookie = id.cookie
	rest := b[4+sizeofSockID:]
	// expires, rqueue, wqueue, uid, inode
	s.UID = binary.NativeEndian.Uint32(rest[12:16])
	s.Inode = binary.NativeEndian.Uint32(rest[16:20])
	return s, nil
}

// idOf is the inet_diag_sockid that names s in a SOCK_DESTROY request.
func idOf(s Socket) (sockID, error) {
	id := sockID{sport: s.Local.Port(), dport: s.Remote.Port(), ifindex: s.Interface, cookie: s.Cookie}
	if id.cookie == 0 {
		id.cookie = noCookie
	}
	for _, a := range []struct {
		addr netip.Addr
		dst  *[16]byte
	}{{s.Local.Addr(), &id.src}, {s.Remote.Addr(), &id.dst}} {
		switch {
		case !a.addr.IsValid():
			return sockID{}, errors.New("socket without address")
		case s.Family == unix.AF_INET:
			if !a.addr.Unmap().Is4() {
				return sockID{}, fmt.Errorf("IPv6 address %s on an AF_INET socket", a.addr)
			}
			v4 := a.addr.Unmap().As4()
			copy(a.dst[:], v4[:])
		case s.Family == unix.AF_INET6:
			// An IPv4 address becomes v4-mapped, as the kernel reports it.
			*a.dst = a.addr.As16()
		default:
			return sockID{}, fmt.Errorf("unsupported family %d", s.Family)
		}
	}
	return id, nil
}
