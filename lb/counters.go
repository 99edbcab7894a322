package lb

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Earlier versions kept the counters in a per-CPU hash map that was not
// preallocated. Its values come from the kernel's atomic per-CPU pool,
// which refused them past about 136,000 entries. The counters now live in
// a preallocated map shared by all CPUs.

// percpuCounters reads a per-CPU counter map pinned by an earlier version,
// summing the CPUs.
type percpuCounters struct{ m *ebpf.Map }

// errOldCounters refuses writes: an earlier version's map is only read.
var errOldCounters = errors.New("write counters: the pinned counter map is from an earlier version")

func (t percpuCounters) Put(uint32, counterValue) error { return errOldCounters }

func (t percpuCounters) Delete(uint32) error { return errOldCounters }

func (t percpuCounters) All() (map[uint32]counterValue, error) {
	out := make(map[uint32]counterValue)
	var k uint32
	var vals []counterValue
	it := t.m.Iterate()
	for it.Next(&k, &vals) {
		var sum counterValue
		for _, v := range vals {
			sum.Translations += v.Translations
			sum.Refused += v.Refused
		}
		out[k] = sum
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", t.m, err)
	}
	return out, nil
}

// retirePerCPUCounters takes over the counters an earlier version pinned
// in pinDir: it reads them and removes the pin, so loading creates the new
// map in its place, and returns them to carry over (see carryCounters).
// The programs still attached keep counting into the old map until Attach
// swaps them; those last counts are lost.
func retirePerCPUCounters(pinDir string) (map[uint32]counterValue, error) {
	path := filepath.Join(pinDir, "sm_counters")
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned counters: %w", err)
	}
	defer m.Close()
	if m.Type() != ebpf.PerCPUHash {
		return nil, nil
	}
	old, err := percpuCounters{m}.All()
	if err != nil {
		return nil, fmt.Errorf("read pinned counters: %w", err)
	}
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("retire pinned counters: %w", err)
	}
	return old, nil
}

// carryCounters writes counters taken from a retired map into the new one.
func carryCounters(t table[uint32, counterValue], carried map[uint32]counterValue) error {
	for id, v := range carried {
		if err := t.Put(id, v); err != nil {
			return fmt.Errorf("carry counter %d over: %w", id, err)
		}
	}
	return nil
}
