package hostnet

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"sockmesh/internal/testenv"
)

func TestEnsureLocal(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, tc := range []struct {
		addr  string
		added bool
	}{
		{"127.0.0.153", false}, // local through 127.0.0.0/8 on lo
		{"127.0.0.1", false},
		{"::1", false},
		{"0.0.0.0", false},
		{"::", false},
		{"198.51.100.53", true},
		{"::ffff:198.51.100.54", true},
		{"2001:db8:53::53", true},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			addr := netip.MustParseAddr(tc.addr)
			added, err := EnsureLocal(addr)
			if err != nil {
				t.Fatalf("EnsureLocal: %v", err)
			}
			if added {
				t.Cleanup(func() { RemoveLocal(addr) })
			}
			if added != tc.added {
				t.Fatalf("EnsureLocal = %v, want %v", added, tc.added)
			}
			if addr.IsUnspecified() {
				return
			}
			addr = addr.Unmap()
			mustBeLocal(t, addr, true)
			if again, err := EnsureLocal(addr); again || err != nil {
				t.Errorf("second EnsureLocal = %v, %v; want false, nil", again, err)
			}
			if !tc.added {
				return
			}

			checkOnLo(t, addr)
			// Usable at once: the address can be bound to, without DAD.
			pc, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
			if err != nil {
				t.Errorf("bind to %s: %v", addr, err)
			} else {
				pc.Close()
			}
			ours, err := OurLocalAddrs()
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(ours, addr); got != addr.Is4() {
				t.Errorf("OurLocalAddrs = %v; lists %s: %v, want %v", ours, addr, got, addr.Is4())
			}

			if err := RemoveLocal(addr); err != nil {
				t.Fatalf("RemoveLocal: %v", err)
			}
			mustBeLocal(t, addr, false)
			if ours, err := OurLocalAddrs(); err != nil || slices.Contains(ours, addr) {
				t.Errorf("OurLocalAddrs after RemoveLocal = %v, %v", ours, err)
			}
			if err := RemoveLocal(addr); err != nil {
				t.Errorf("second RemoveLocal: %v", err)
			}
		})
	}
}

func TestRemoveLocalLeavesForeign(t *testing.T) {
	testenv.RequirePrivileged(t)
	addAddr(t, "198.51.100.60/32")
	addr := netip.MustParseAddr("198.51.100.60")
	if added, err := EnsureLocal(addr); added || err != nil {
		t.Errorf("EnsureLocal = %v, %v; want false, nil", added, err)
	}
	if ours, err := OurLocalAddrs(); err != nil || len(ours) > 0 {
		t.Errorf("OurLocalAddrs = %v, %v; want none", ours, err)
	}
	if err := RemoveLocal(addr); err != nil {
		t.Fatalf("RemoveLocal: %v", err)
	}
	mustBeLocal(t, addr, true)
}

func mustBeLocal(t *testing.T, addr netip.Addr, want bool) {
	t.Helper()
	local, err := isLocal(addr)
	if err != nil {
		t.Fatal(err)
	}
	if local != want {
		t.Errorf("%s local: %v, want %v", addr, local, want)
	}
}

// checkOnLo checks how addr sits on lo: a host prefix, labelled (IPv4) or
// without DAD (IPv6).
func checkOnLo(t *testing.T, addr netip.Addr) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(lo, family(addr))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		p, _ := prefixOf(a.IPNet)
		if p.Addr() != addr {
			continue
		}
		if p.Bits() != addr.BitLen() {
			t.Errorf("%s on lo as %s, want a host prefix", addr, p)
		}
		if addr.Is4() && a.Label != Label {
			t.Errorf("%s on lo has label %q, want %q", addr, a.Label, Label)
		}
		if addr.Is6() && (a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_TENTATIVE != 0) {
			t.Errorf("%s on lo has flags %#x, want nodad and not tentative", addr, a.Flags)
		}
		return
	}
	t.Errorf("%s not on lo: %v", addr, addrs)
}
