package lb

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"sockmesh/internal/testenv"
)

type applyRecord struct {
	start, end int64
	set        map[string]bool
}

// Test 5: while clients connect in a bounded loop, the service is rewritten
// at least 1,000 times (backends added, removed, replaced, reweighted).
// Zero connects fail, and each reaches a backend that was in the service
// at that moment: in a set that was live at some point between the
// client's connect() call and its return.
func TestChurn(t *testing.T) {
	d, cg, _ := newDatapath(t)
	var pool []netip.AddrPort
	for i := range 6 {
		pool = append(pool, startIDBackend(t, fmt.Sprintf("127.0.0.%d:0", 21+i)))
	}
	key := ServiceKey{VIP: netip.MustParseAddr("198.18.5.1"), Port: 9000, Proto: TCP}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() Service {
		s := Service{Key: key}
		for _, i := range rng.Perm(len(pool))[:1+rng.IntN(4)] {
			s.Backends = append(s.Backends, Backend{Addr: pool[i], Weight: uint16(1 + rng.IntN(3))})
		}
		return s
	}
	var records []applyRecord
	apply := func(s Service) {
		r := applyRecord{start: time.Now().UnixNano(), set: map[string]bool{}}
		mustApply(t, d, s)
		r.end = time.Now().UnixNano()
		for _, b := range s.Backends {
			r.set[b.Addr.String()] = true
		}
		records = append(records, r)
	}
	apply(pick())

	const clients, perClient = 2, 15000
	outs := make([]string, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for i := range clients {
		cmd := cg.Helper(ctx, t, "dial-loop", "198.18.5.1:9000", fmt.Sprint(perClient), "60")
		cmd.Stderr = os.Stderr
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := cmd.Output()
			outs[i], errs[i] = string(out), err
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// Churn until the clients are done, and at least 1,000 times.
	deadline := time.Now().Add(60 * time.Second)
churn:
	for time.Now().Before(deadline) {
		select {
		case <-done:
			if len(records) > 1000 {
				break churn
			}
		default:
		}
		apply(pick())
		time.Sleep(200 * time.Microsecond)
	}
	<-done
	rewrites := len(records) - 1
	if rewrites < 1000 {
		t.Fatalf("only %d rewrites", rewrites)
	}

	var results []dialResult
	for i := range clients {
		if errs[i] != nil {
			t.Fatalf("client %d: %v", i, errs[i])
		}
		results = append(results, parseDialResults(t, outs[i])...)
	}
	failed, wrong := 0, 0
	for _, r := range results {
		if r.Err != "" || r.Backend == "" {
			failed++
			if failed <= 5 {
				t.Errorf("connect failed: %+v", r)
			}
			continue
		}
		// Set k is live from its apply's start until the next apply's
		// end; look at every set live at some point in [r.Start, r.End].
		first := sort.Search(len(records), func(k int) bool {
			return k+1 == len(records) || records[k+1].end >= r.Start
		})
		ok := false
		for k := first; k < len(records) && records[k].start <= r.End; k++ {
			if records[k].set[r.Backend] {
				ok = true
				break
			}
		}
		if !ok {
			wrong++
			if wrong <= 5 {
				t.Errorf("connect at [%d,%d] reached %s, not in any set live then", r.Start, r.End, r.Backend)
			}
		}
	}
	t.Logf("%d connects across %d rewrites: %d failed, %d to a backend outside the service", len(results), rewrites, failed, wrong)
	if len(results) < clients*perClient/2 {
		t.Errorf("only %d connects ran", len(results))
	}
	if failed != 0 || wrong != 0 {
		t.Fatalf("%d failed, %d wrong", failed, wrong)
	}
}

type loadReport struct {
	Stats     ApplyStats
	Restored  int
	LinkIDs   []uint32
	ProgIDs   []uint32
	DumpLines int
}

// helperLoad: args pinDir cgroup vip:port backend... Opens (or restores)
// the datapath, attaches (or upgrades the pinned links), applies one TCP
// service and exits, leaving the datapath pinned.
func helperLoad(args []string) int {
	d, err := Open(Options{PinDir: args[0]})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%+v\n", err)
		return 1
	}
	defer d.Close()
	rep := loadReport{Restored: len(d.Services())}
	if err := d.Attach(args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, l := range d.links {
		info, err := l.Info()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		rep.LinkIDs = append(rep.LinkIDs, uint32(info.ID))
		rep.ProgIDs = append(rep.ProgIDs, uint32(info.Program))
	}
	vip := netip.MustParseAddrPort(args[2])
	s := Service{Key: ServiceKey{VIP: vip.Addr(), Port: vip.Port(), Proto: TCP}}
	for _, b := range args[3:] {
		s.Backends = append(s.Backends, Backend{Addr: netip.MustParseAddrPort(b)})
	}
	if rep.Stats, err = d.Apply([]Service{s}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dump, _ := d.Dump()
	rep.DumpLines = strings.Count(dump, "\n")
	json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

// Test 6: the loader exits and connects keep working with no sockmesh
// process at all; new processes restore the state from the pins and
// upgrade the programs in place (link.Update); zero connects fail
// throughout.
func TestRestartUpgrade(t *testing.T) {
	testenv.RequirePrivileged(t)
	cg := testenv.NewCgroup(t)
	pinDir := testenv.BPFFS(t) + "/sockmesh"
	t.Cleanup(func() {
		if err := Remove(pinDir); err != nil {
			t.Errorf("remove: %v", err)
		}
	})
	b1 := startIDBackend(t, "127.0.0.31:0")
	b2 := startIDBackend(t, "127.0.0.32:0")
	load := func() loadReport {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := testenv.HelperOutside(ctx, "load", pinDir, cg.Path, "198.18.6.1:80", b1.String(), b2.String())
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("loader: %v", err)
		}
		var rep loadReport
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("loader output %q: %v", out, err)
		}
		return rep
	}
	first := load()
	if first.Restored != 0 || first.Stats.Added != 1 || len(first.LinkIDs) != 10 {
		t.Fatalf("first load: %+v", first)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := cg.Helper(ctx, t, "dial-loop", "198.18.6.1:80", "6000", "30")
	var out strings.Builder
	client.Stdout, client.Stderr = &out, os.Stderr
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	prev := first
	for i := range 5 {
		time.Sleep(50 * time.Millisecond) // no sockmesh process runs now
		rep := load()
		if rep.Restored != 1 || rep.Stats.Unchanged != 1 || rep.Stats.Writes != 0 {
			t.Errorf("restart %d: %+v; want the service restored and nothing written", i, rep)
		}
		if !slices.Equal(rep.LinkIDs, prev.LinkIDs) {
			t.Errorf("restart %d: links %v, want the pinned ones %v kept", i, rep.LinkIDs, prev.LinkIDs)
		}
		for j := range rep.ProgIDs {
			if rep.ProgIDs[j] == prev.ProgIDs[j] {
				t.Errorf("restart %d: link %d still runs program %d: not upgraded", i, rep.LinkIDs[j], rep.ProgIDs[j])
			}
		}
		prev = rep
	}
	if err := client.Wait(); err != nil {
		t.Fatalf("client: %v", err)
	}
	results := parseDialResults(t, out.String())
	failed := 0
	for _, r := range results {
		if r.Err != "" || (r.Backend != b1.String() && r.Backend != b2.String()) {
			failed++
			if failed <= 5 {
				t.Errorf("connect: %+v", r)
			}
		}
	}
	t.Logf("%d connects across 5 restarts and upgrades, %d failed", len(results), failed)
	if len(results) < 1000 || failed != 0 {
		t.Fatalf("%d connects, %d failed", len(results), failed)
	}
}
