package lb

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Go names for the structs shared with the BPF programs (bpf/sockmesh.h).
type (
	svcKey       = connectSvcKey
	svcValue     = connectSvcValue
	backendValue = connectBackend
	counterValue = connectCounters
	localKey     = connectLocalKey
	localValue   = connectLocalValue
	optsValue    = connectSvcOpts
	excludeValue = connectExclude
	revKey       = connectRevKey
	revValue     = connectRevValue
)

// Constants mirrored from bpf/sockmesh.h.
const (
	slotRegion     = 0x10000
	flagLocalName  = 1 << 0
	flagPolicyBit  = 1 // policy in bits 1-2
	flagPolicyMask = 3 << flagPolicyBit
	flagNetns      = 1 << 3
	flagAffinity   = 1 << 4
	afInet         = 2
	afInet6        = 10
	metaNextIDSlot = 0
)

// table is one BPF map as the map writer sees it. The kernel implementation
// wraps an *ebpf.Map; tests use a fake that can fail on purpose.
type table[K comparable, V any] interface {
	Put(K, V) error
	// Delete removes k; a missing key is not an error.
	Delete(K) error
	// All reads every entry (restore, dump).
	All() (map[K]V, error)
}

// tables are the maps the writer programs.
type tables struct {
	services   table[svcKey, svcValue]
	backends   table[uint32, backendValue]
	counters   table[uint32, counterValue]
	localNames table[localKey, localValue]
	// filter holds the VIP filter at key 0 (filter.go); nil in a
	// read-only view of maps pinned by a version without it.
	filter table[uint32, vipFilter]
	// opts holds round-robin tickets and affinity timeouts by service id;
	// nil in a read-only view of maps pinned by a version without it.
	opts table[uint32, optsValue]
	// meta holds the next id to hand out at key 0, so ids are never reused,
	// not even across restarts.
	meta table[uint32, uint64]
}

type kernelTable[K comparable, V any] struct{ m *ebpf.Map }

func (t kernelTable[K, V]) Put(k K, v V) error { return t.m.Put(k, v) }

func (t kernelTable[K, V]) Delete(k K) error {
	if err := t.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

func (t kernelTable[K, V]) All() (map[K]V, error) {
	out := make(map[K]V)
	var k K
	var v V
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", t.m, err)
	}
	return out, nil
}
