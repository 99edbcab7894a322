package lb

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"sockmesh/internal/testenv"
)

// TestOpenRetiresPerCPUCounters: counters pinned by an earlier version, in
// a per-CPU map, are carried over into the new preallocated map, and the
// old map's pin is gone.
func TestOpenRetiresPerCPUCounters(t *testing.T) {
	testenv.RequirePrivileged(t)
	pinDir := filepath.Join(testenv.BPFFS(t), "sockmesh")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: "sm_counters", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 16, MaxEntries: 16,
		Flags:   1, // BPF_F_NO_PREALLOC, as earlier versions made it
		Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	cpus := ebpf.MustPossibleCPU()
	vals := make([]counterValue, cpus)
	for i := range vals {
		vals[i] = counterValue{Translations: 10, Refused: 1}
	}
	if err := old.Put(uint32(7), vals); err != nil {
		t.Fatal(err)
	}
	old.Close()

	d, err := Open(Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer Remove(pinDir)
	defer d.Close()
	if typ := d.maps["sm_counters"].Type(); typ != ebpf.Hash {
		t.Fatalf("counter map is %v, want a hash", typ)
	}
	got, err := d.tables.counters.All()
	if err != nil {
		t.Fatal(err)
	}
	want := counterValue{Translations: uint64(10 * cpus), Refused: uint64(cpus)}
	if len(got) != 1 || got[7] != want {
		t.Fatalf("carried counters %+v, want {7: %+v}", got, want)
	}
}
