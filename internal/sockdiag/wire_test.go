package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// The layout of struct inet_diag_req_v2 and inet_diag_sockid from
// linux/inet_diag.h, spelled out byte by byte.
func TestEncodeDestroyRequest(t *testing.T) {
	s := Socket{
		Family:    unix.AF_INET,
		Proto:     unix.IPPROTO_UDP,
		Local:     netip.MustParseAddrPort("127.0.0.1:40000"),
		Remote:    netip.MustParseAddrPort("10.1.2.3:53"),
		Interface: 7,
		Cookie:    0x1122334455667788,
	}
	id, err := idOf(s)
	if err != nil {
		t.Fatal(err)
	}
	got := encodeReq(s.Family, s.Proto, 0, id)
	want := []byte{unix.AF_INET, unix.IPPROTO_UDP, 0, 0}
	want = binary.NativeEndian.AppendUint32(want, 0)                      // states
	want = append(want, 0x9c, 0x40, 0, 53)                                // sport, dport (big endian)
	want = append(want, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) // src
	want = append(want, 10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  // dst
	want = binary.NativeEndian.AppendUint32(want, 7)                      // if
	want = binary.NativeEndian.AppendUint32(want, 0x55667788)             // cookie low
	want = binary.NativeEndian.AppendUint32(want, 0x11223344)             // cookie high
	if !bytes.Equal(got, want) {
		t.Errorf("request\n got %x\nwant %x", got, want)
	}
	if len(got) != 56 {
		t.Errorf("inet_diag_req_v2 is 56 bytes, encoded %d", len(got))
	}
}

func TestIDOfIPv6(t *testing.T) {
	for _, tc := range []struct {
		local, remote string
		wantDst       string
	}{
		{"[::1]:1000", "[::1]:53", "::1"},
		{"[::ffff:127.0.0.1]:1000", "[::ffff:127.0.0.2]:53", "::ffff:127.0.0.2"},
		// A plain IPv4 address on an AF_INET6 socket is sent v4-mapped.
		{"[::ffff:127.0.0.1]:1000", "127.0.0.2:53", "::ffff:127.0.0.2"},
	} {
		s := Socket{Family: unix.AF_INET6, Proto: unix.IPPROTO_UDP,
			Local: netip.MustParseAddrPort(tc.local), Remote: netip.MustParseAddrPort(tc.remote)}
		id, err := idOf(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := netip.AddrFrom16(id.dst); got != netip.MustParseAddr(tc.wantDst) {
			t.Errorf("%s: dst %s, want %s", tc.remote, got, tc.wantDst)
		}
	}
	if _, err := idOf(Socket{Family: unix.AF_INET, Local: netip.MustParseAddrPort("[::1]:1"), Remote: netip.MustParseAddrPort("[::1]:2")}); err == nil {
		t.Error("AF_INET socket with IPv6 addresses: no error")
	}
	id, err := idOf(Socket{Family: unix.AF_INET, Local: netip.MustParseAddrPort("127.0.0.1:1"), Remote: netip.MustParseAddrPort("127.0.0.1:2")})
	if err != nil || id.cookie != noCookie {
		t.Errorf("socket without a cookie: cookie %#x, %v; want INET_DIAG_NOCOOKIE", id.cookie, err)
	}
	if _, err := idOf(Socket{Family: unix.AF_INET}); err == nil {
		t.Error("socket without addresses: no error")
	}
}

// diagMsg builds an inet_diag_msg as the kernel sends it.
func diagMsg(family, state uint8, id sockID, uid, inode uint32) []byte {
	b := make([]byte, sizeofDiagMsg+8) // and an attribute's worth of bytes
	b[0], b[1] = family, state
	id.put(b[4:])
	binary.NativeEndian.PutUint32(b[4+sizeofSockID+12:], uid)
	binary.NativeEndian.PutUint32(b[4+sizeofSockID+16:], inode)
	return b
}

func TestDecodeMsg(t *testing.T) {
	id := sockID{sport: 40000, dport: 53, ifindex: 3, cookie: 0xdeadbeef00000042}
	copy(id.src[:], netip.MustParseAddr("::ffff:127.0.0.1").AsSlice())
	copy(id.dst[:], netip.MustParseAddr("::ffff:10.0.0.1").AsSlice())
	s, err := decodeMsg(diagMsg(unix.AF_INET6, 1, id, 1000, 4242), unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	want := Socket{
		Family: unix.AF_INET6, Proto: unix.IPPROTO_UDP, State: 1,
		Local:     netip.MustParseAddrPort("[::ffff:127.0.0.1]:40000"),
		Remote:    netip.MustParseAddrPort("[::ffff:10.0.0.1]:53"),
		Interface: 3, Cookie: 0xdeadbeef00000042, Inode: 4242, UID: 1000,
	}
	if s != want {
		t.Errorf("decoded\n%+v\nwant\n%+v", s, want)
	}
	// And back: the destroy request names the same socket.
	back, err := idOf(s)
	if err != nil {
		t.Fatal(err)
	}
	if back != id {
		t.Errorf("idOf(decoded) = %+v, want %+v", back, id)
	}

	var id4 sockID
	copy(id4.src[:], []byte{127, 0, 0, 1})
	copy(id4.dst[:], []byte{127, 0, 0, 2})
	id4.sport, id4.dport = 1, 2
	s, err = decodeMsg(diagMsg(unix.AF_INET, 10, id4, 0, 1), unix.IPPROTO_TCP)
	if err != nil {
		t.Fatal(err)
	}
	if s.Local != netip.MustParseAddrPort("127.0.0.1:1") || s.Remote != netip.MustParseAddrPort("127.0.0.2:2") || s.State != StateListen {
		t.Errorf("decoded %+v", s)
	}

	if _, err := decodeMsg(make([]byte, sizeofDiagMsg-1), unix.IPPROTO_TCP); err == nil {
		t.Error("short message: no error")
	}
	if _, err := decodeMsg(diagMsg(unix.AF_UNIX, 1, id, 0, 0), unix.IPPROTO_TCP); err == nil {
		t.Error("AF_UNIX message: no error")
	}
}

// nlmsg builds one netlink message, padded to alignment.
func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+len(payload))
	putHeader(b, typ, flags, seq)
	copy(b[unix.NLMSG_HDRLEN:], payload)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func errno(e int32) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(e))
}

func TestParseMessages(t *testing.T) {
	const seq = 9
	data := func(s string) []byte { return nlmsg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, seq, []byte(s)) }
	for _, tc := range []struct {
		name       string
		in         []byte
		want       []string
		done, intr bool
		err        error
	}{
		{name: "multi-part, not done", in: slices.Concat(data("a"), data("bcdef")), want: []string{"a", "bcdef"}},
		{name: "done", in: slices.Concat(data("a"), nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, seq, errno(0))), want: []string{"a"}, done: true},
		{name: "done without payload", in: nlmsg(unix.NLMSG_DONE, 0, seq, nil), done: true},
		{name: "done with error", in: nlmsg(unix.NLMSG_DONE, 0, seq, errno(-int32(unix.ENOBUFS))), done: true, err: unix.ENOBUFS},
		{name: "interrupted", in: slices.Concat(data("a"), nlmsg(unix.NLMSG_DONE, unix.NLM_F_DUMP_INTR, seq, errno(0))), want: []string{"a"}, done: true, intr: true},
		{name: "ack", in: nlmsg(unix.NLMSG_ERROR, 0, seq, slices.Concat(errno(0), make([]byte, 16))), done: true},
		{name: "error", in: nlmsg(unix.NLMSG_ERROR, 0, seq, slices.Concat(errno(-int32(unix.ENOENT)), make([]byte, 16))), done: true, err: unix.ENOENT},
		{name: "other request skipped", in: slices.Concat(nlmsg(unix.NLMSG_ERROR, 0, seq-1, errno(-1)), data("x")), want: []string{"x"}},
		{name: "noop", in: nlmsg(unix.NLMSG_NOOP, 0, seq, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			done, intr, err := parseMessages(tc.in, seq, func(b []byte) error {
				got = append(got, string(b))
				return nil
			})
			if !slices.Equal(got, tc.want) || done != tc.done || intr != tc.intr || !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
				t.Errorf("got %q done %v intr %v err %v; want %q done %v intr %v err %v",
					got, done, intr, err, tc.want, tc.done, tc.intr, tc.err)
			}
		})
	}
	for _, bad := range [][]byte{
		make([]byte, 5),                          // shorter than a header
		nlmsg(unix.NLMSG_DONE, 0, seq, nil)[:12], // truncated header
		func() []byte { b := data("abc"); binary.NativeEndian.PutUint32(b, 200); return b }(), // length past the end
		func() []byte { b := data("abc"); binary.NativeEndian.PutUint32(b, 3); return b }(),   // length inside the header
		nlmsg(unix.NLMSG_ERROR, 0, seq, []byte{1}),                                            // short error
	} {
		if _, _, err := parseMessages(bad, seq, func([]byte) error { return nil }); err == nil {
			t.Errorf("parseMessages(%x): no error", bad)
		}
	}
}

func FuzzParseMessages(f *testing.F) {
	var id sockID
	f.Add(slices.Concat(
		nlmsg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI, 1, diagMsg(unix.AF_INET, 1, id, 0, 0)),
		nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, 1, errno(0))))
	f.Add(nlmsg(unix.NLMSG_ERROR, 0, 1, errno(-2)))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseMessages(b, 1, func(p []byte) error {
			s, err := decodeMsg(p, unix.IPPROTO_UDP)
			if err != nil {
				return err
			}
			id, err := idOf(s)
			if err != nil {
				t.Fatalf("idOf(%+v) of a decoded socket: %v", s, err)
			}
			want := s
			if want.Cookie == 0 { // sent as INET_DIAG_NOCOOKIE
				want.Cookie = noCookie
			}
			if got, _ := decodeMsg(diagMsg(s.Family, s.State, id, s.UID, s.Inode), unix.IPPROTO_UDP); got != want {
				t.Fatalf("round trip: %+v became %+v", want, got)
			}
			return nil
		})
	})
}

func TestParseIDs(t *testing.T) {
	ids, err := parseIDs([]byte("12\n345\n\n6\n"))
	if err != nil || !slices.Equal(ids, []int{12, 345, 6}) {
		t.Errorf("parseIDs = %v, %v", ids, err)
	}
	for _, bad := range []string{"x\n", "-1\n", "0\n"} {
		if _, err := parseIDs([]byte(bad)); err == nil {
			t.Errorf("parseIDs(%q): no error", bad)
		}
	}
}

func TestTargetSet(t *testing.T) {
	ts, err := newTargetSet([]Target{
		{netip.MustParseAddrPort("127.0.0.1:53"), unix.IPPROTO_UDP},
		{netip.MustParseAddrPort("[::ffff:10.0.0.1]:80"), unix.IPPROTO_TCP},
		{netip.MustParseAddrPort("[fe80::1%lo]:53"), unix.IPPROTO_UDP},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ts.protos, []uint8{unix.IPPROTO_UDP, unix.IPPROTO_TCP}) {
		t.Errorf("protos %v", ts.protos)
	}
	sock := func(proto uint8, remote string) Socket {
		return Socket{Proto: proto, Remote: netip.MustParseAddrPort(remote)}
	}
	for _, tc := range []struct {
		s    Socket
		want bool
	}{
		{sock(unix.IPPROTO_UDP, "127.0.0.1:53"), true},
		{sock(unix.IPPROTO_UDP, "[::ffff:127.0.0.1]:53"), true},
		{sock(unix.IPPROTO_TCP, "127.0.0.1:53"), false},
		{sock(unix.IPPROTO_UDP, "127.0.0.1:54"), false},
		{sock(unix.IPPROTO_UDP, "127.0.0.2:53"), false},
		{sock(unix.IPPROTO_TCP, "10.0.0.1:80"), true},
		{sock(unix.IPPROTO_TCP, "[::ffff:10.0.0.1]:80"), true},
		{sock(unix.IPPROTO_UDP, "[fe80::1]:53"), true},
	} {
		if got := ts.match(tc.s); got != tc.want {
			t.Errorf("match(%s) = %v, want %v", tc.s, got, tc.want)
		}
	}
	if _, err := newTargetSet([]Target{{netip.MustParseAddrPort("127.0.0.1:1"), unix.IPPROTO_ICMP}}); err == nil {
		t.Error("ICMP target: no error")
	}
	if _, err := newTargetSet([]Target{{Proto: unix.IPPROTO_UDP}}); err == nil {
		t.Error("target without address: no error")
	}
}

func TestConnectedStates(t *testing.T) {
	for state := range 13 {
		tcp := tcpConnected&(1<<state) != 0
		want := state >= 1 && state != StateListen && state != StateClose && state != StateTimeWait
		if tcp != want {
			t.Errorf("TCP state %d connected = %v, want %v", state, tcp, want)
		}
	}
	if udpConnected != 1<<1 {
		t.Errorf("UDP connected mask %#x", udpConnected)
	}
}
