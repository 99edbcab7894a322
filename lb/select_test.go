package lb

import (
	"testing"

	"github.com/cilium/ebpf"

	"sockmesh/internal/testenv"
)

// selector runs select_backend, the code connect/sendmsg run, through the
// SEC("syscall") wrapper in bpf/selftest.c against the datapath's maps.
type selector struct {
	t    *testing.T
	prog *ebpf.Program
}

func newSelector(t *testing.T, d *Datapath) *selector {
	t.Helper()
	spec, err := loadSelftest()
	if err != nil {
		t.Fatal(err)
	}
	repl := make(map[string]*ebpf.Map)
	for name := range spec.Maps {
		repl[name] = d.maps[name]
	}
	var objs selftestObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		t.Fatalf("load selftest: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return &selector{t, objs.SmSelect}
}

const (
	resMiss   = 0
	resOK     = 1
	resRefuse = 2
)

func (s *selector) run(k ServiceKey, entropy uint32) selftestSelectArgs {
	s.t.Helper()
	var args selftestSelectArgs
	mk := masterKey(k)
	args.Key.Addr, args.Key.Port, args.Key.Proto = mk.Addr, mk.Port, mk.Proto
	args.Entropy = entropy
	var out selftestSelectArgs
	if _, err := s.prog.Run(&ebpf.RunOptions{Context: args, ContextOut: &out}); err != nil {
		s.t.Fatalf("run sm_select: %v", err)
	}
	return out
}

func openDatapath(t *testing.T) *Datapath {
	t.Helper()
	testenv.RequirePrivileged(t)
	pinDir := testenv.BPFFS(t) + "/sockmesh"
	d, err := Open(Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { d.Close(); Remove(pinDir) })
	return d
}

func TestSelectBackend(t *testing.T) {
	d := openDatapath(t)
	sel := newSelector(t, d)
	web := weighted(svc("198.18.0.10", 80, TCP, ap("127.0.0.1:1"), ap("127.0.0.1:2"), ap("127.0.0.1:3")), 1, 1, 2)
	empty := svc("198.18.0.11", 80, TCP)
	mustApply(t, d, web, empty)

	// Slots are [b1 b2 b3 b3]; entropy e picks slot e*4>>32.
	for _, tc := range []struct {
		entropy uint32
		want    string
	}{
		{0, "127.0.0.1:1"},
		{1<<30 - 1, "127.0.0.1:1"},
		{1 << 30, "127.0.0.1:2"},
		{1 << 31, "127.0.0.1:3"},
		{1<<32 - 1, "127.0.0.1:3"},
	} {
		out := sel.run(web.Key, tc.entropy)
		if out.Result != resOK {
			t.Fatalf("entropy %#x: result %d, want OK", tc.entropy, out.Result)
		}
		if got := backendOf(out.Backend).String(); got != tc.want {
			t.Errorf("entropy %#x: backend %s, want %s", tc.entropy, got, tc.want)
		}
	}

	if out := sel.run(ServiceKey{VIP: web.Key.VIP, Port: 81, Proto: TCP}, 0); out.Result != resMiss {
		t.Errorf("other port: result %d, want miss", out.Result)
	}
	if out := sel.run(ServiceKey{VIP: web.Key.VIP, Port: 80, Proto: UDP}, 0); out.Result != resMiss {
		t.Errorf("other protocol: result %d, want miss", out.Result)
	}
	if out := sel.run(empty.Key, 0); out.Result != resRefuse {
		t.Errorf("no backends: result %d, want refuse", out.Result)
	}

	// After an update the master points at the other region.
	web2 := svc("198.18.0.10", 80, TCP, ap("127.0.0.1:9"))
	mustApply(t, d, web2, empty)
	if out := sel.run(web.Key, 1<<31); out.Result != resOK || backendOf(out.Backend).String() != "127.0.0.1:9" {
		t.Errorf("after update: result %d backend %s, want 127.0.0.1:9", out.Result, backendOf(out.Backend))
	}

	// A master whose slot has vanished (a reader racing an old region's
	// deletion, frozen) is retried and then refused, never misread.
	k := masterKey(web2.Key)
	master, err := d.tables.services.All()
	if err != nil {
		t.Fatal(err)
	}
	m := master[k]
	m.Count = 2 // slot base+2 does not exist
	if err := d.tables.services.Put(k, m); err != nil {
		t.Fatal(err)
	}
	if out := sel.run(web.Key, 1<<31); out.Result != resRefuse {
		t.Errorf("missing slot: result %d, want refuse after retries", out.Result)
	}
	if out := sel.run(web.Key, 0); out.Result != resOK {
		t.Errorf("present slot: result %d, want OK", out.Result)
	}
}
