package lb

import (
	"encoding/binary"
	"net/netip"
)

// The BPF maps hold addresses as 16 bytes and ports as 2 bytes, both in
// network byte order; the generated Go structs see them as native-endian
// words. These helpers convert without caring which endianness is native.

func addrWords(a netip.Addr) [4]uint32 {
	b := a.As16() // IPv4 becomes v4-mapped, as the programs expect
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

func portWord(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func wordPort(w uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], w)
	return binary.BigEndian.Uint16(b[:])
}

func masterKey(k ServiceKey) svcKey {
	return svcKey{Addr: addrWords(k.VIP), Port: portWord(k.Port), Proto: uint8(k.Proto)}
}

func keyOf(sk svcKey) ServiceKey {
	return ServiceKey{VIP: wordsAddr(sk.Addr), Port: wordPort(sk.Port), Proto: Proto(sk.Proto)}
}

func backendOf(bv backendValue) netip.AddrPort {
	return netip.AddrPortFrom(wordsAddr(bv.Addr), wordPort(bv.Port))
}

func family(a netip.Addr) uint8 {
	if a.Unmap().Is4() {
		return afInet
	}
	return afInet6
}
