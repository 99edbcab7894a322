package lb

import (
	"fmt"
	"net/netip"
)

// ExcludedCgroup is a cgroup v2 subtree whose traffic is not balanced.
type ExcludedCgroup struct {
	// ID is the cgroup's id (its directory's inode number), Level its
	// depth below the cgroup v2 root (the root is 0).
	ID    uint64
	Level uint32
}

// MaxExclusions is how many cgroup subtrees, and how many uids, may be
// excluded.
const MaxExclusions = 8

// SetExclusions makes connects and sends from the given cgroup subtrees,
// and from processes running as the given uids, go out unchanged, VIPs
// included: for sidecars and proxies that must reach a VIP themselves.
// The lists replace the previous ones; empty lists exclude nothing.
func (d *Datapath) SetExclusions(cgroups []ExcludedCgroup, uids []uint32) error {
	if len(cgroups) > MaxExclusions || len(uids) > MaxExclusions {
		return fmt.Errorf("set exclusions: at most %d cgroups and %d uids, got %d and %d", MaxExclusions, MaxExclusions, len(cgroups), len(uids))
	}
	var v excludeValue
	v.Ncgroups, v.Nuids = uint32(len(cgroups)), uint32(len(uids))
	for i, c := range cgroups {
		v.Cgroups[i].Id, v.Cgroups[i].Level = c.ID, c.Level
	}
	copy(v.Uids[:], uids)
	if err := d.maps["sm_exclude"].Put(uint32(0), &v); err != nil {
		return fmt.Errorf("set exclusions: %w", err)
	}
	return nil
}

// ConnectedVia reports which service the datapath connected a socket
// (by cookie) to backend through, from the reverse-translation entries:
// false when the socket was not connected to backend by the datapath, or
// its entry aged out of the LRU.
func (d *Datapath) ConnectedVia(cookie uint64, backend netip.AddrPort) (ServiceKey, bool) {
	k := revKey{Cookie: cookie, Backend: addrWords(backend.Addr()), BackendPort: portWord(backend.Port())}
	var v revValue
	if err := d.maps["sm_rev"].Lookup(&k, &v); err != nil {
		return ServiceKey{}, false
	}
	return ServiceKey{VIP: wordsAddr(v.Vip), Port: wordPort(v.VipPort), Proto: Proto(v.Proto)}, true
}
