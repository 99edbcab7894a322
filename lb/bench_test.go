package lb

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"sockmesh/internal/cgroupv2"
	"sockmesh/internal/testenv"
)

// helperCRR: args addr count. Connects and closes count times and prints
// "connects/s p50-ns p99-ns" of the connect() calls.
func helperCRR(args []string) int {
	n, _ := strconv.Atoi(args[1])
	durs := make([]time.Duration, 0, n)
	start := time.Now()
	for range n {
		t0 := time.Now()
		c, err := net.Dial("tcp", args[0])
		durs = append(durs, time.Since(t0))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.Close()
	}
	elapsed := time.Since(start)
	slices.Sort(durs)
	fmt.Printf("%f %d %d\n", float64(n)/elapsed.Seconds(), durs[n/2], durs[n*99/100])
	return 0
}

// BenchmarkConnectVIP (run it with -benchtime=1x) measures, in one run and interleaved round by round,
// TCP connect+close to a backend directly and through a VIP, and the
// connect4 program's run time per call on a miss (direct) and on a hit
// (VIP) from the kernel's BPF stats, then the hit again with the reverse
// map full. It reports the VIP/direct ratio.
func BenchmarkConnectVIP(b *testing.B) {
	d, cg, _ := newDatapath(b)
	be := startIDBackend(b, "127.0.0.41:0")
	mustApply(b, d, svc("198.18.7.1", 80, TCP, be))
	stats, err := EnableProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()

	const rounds, perRound = 10, 2000
	var rate [2]float64
	var p50, p99 [2]time.Duration
	var hookNS [3]ProgramStats
	targets := [2]string{be.String(), "198.18.7.1:80"}
	for range rounds {
		for v, target := range targets {
			before, err := d.ProgramStats()
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			out, err := cg.Helper(ctx, b, "crr", target, strconv.Itoa(perRound)).Output()
			cancel()
			if err != nil {
				b.Fatalf("crr %s: %v", target, err)
			}
			after, err := d.ProgramStats()
			if err != nil {
				b.Fatal(err)
			}
			var r float64
			var q50, q99 int64
			if _, err := fmt.Sscan(string(out), &r, &q50, &q99); err != nil {
				b.Fatalf("crr output %q: %v", out, err)
			}
			rate[v] += r / rounds
			p50[v] += time.Duration(q50) / rounds
			p99[v] += time.Duration(q99) / rounds
			hookNS[v].Runs += after["sm_connect4"].Runs - before["sm_connect4"].Runs
			hookNS[v].Runtime += after["sm_connect4"].Runtime - before["sm_connect4"].Runtime
		}
	}
	full := fillReverseMap(b, d)
	for range rounds / 2 {
		st := connectRound(b, d, cg, "198.18.7.1:80", perRound)
		hookNS[2].Runs += st.Runs
		hookNS[2].Runtime += st.Runtime
	}
	b.ReportMetric(rate[0], "direct-conn/s")
	b.ReportMetric(rate[1], "vip-conn/s")
	b.ReportMetric(rate[1]/rate[0], "vip/direct")
	b.ReportMetric(float64(p50[1])/float64(p50[0]), "p50-vip/direct")
	b.ReportMetric(float64(p99[1])/float64(p99[0]), "p99-vip/direct")
	b.ReportMetric(float64(hookNS[0].PerRun().Nanoseconds()), "connect4-miss-ns")
	b.ReportMetric(float64(hookNS[1].PerRun().Nanoseconds()), "connect4-hit-ns")
	b.ReportMetric(float64(hookNS[2].PerRun().Nanoseconds()), "connect4-hit-rev-full-ns")
	fmt.Printf("connect+close  direct %.0f/s  vip %.0f/s  ratio %.3f\n", rate[0], rate[1], rate[1]/rate[0])
	fmt.Printf("connect() p50  direct %v  vip %v; p99 direct %v  vip %v\n", p50[0], p50[1], p99[0], p99[1])
	fmt.Printf("connect4 hook  miss %v/run (%d runs)  hit %v/run (%d runs)\n",
		hookNS[0].PerRun(), hookNS[0].Runs, hookNS[1].PerRun(), hookNS[1].Runs)
	fmt.Printf("connect4 hook  hit with sm_rev full (%d entries, every connect evicts) %v/run (%d runs)\n", full, hookNS[2].PerRun(), hookNS[2].Runs)
}

// connectRound runs one crr helper of n connects to target in the cgroup
// and returns what connect4 cost meanwhile.
func connectRound(b *testing.B, d *Datapath, cg *testenv.Cgroup, target string, n int) ProgramStats {
	before, err := d.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := cg.Helper(ctx, b, "crr", target, strconv.Itoa(n)).CombinedOutput(); err != nil {
		b.Fatalf("crr %s: %v: %s", target, err, out)
	}
	after, err := d.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	return ProgramStats{
		Runs:    after["sm_connect4"].Runs - before["sm_connect4"].Runs,
		Runtime: after["sm_connect4"].Runtime - before["sm_connect4"].Runtime,
	}
}

// fillReverseMap fills sm_rev to its capacity with entries of sockets that
// never existed (cookies far above any real one), so what follows measures
// the steady state of a busy host: every new entry evicts an old one.
func fillReverseMap(b *testing.B, d *Datapath) int {
	m := d.maps["sm_rev"]
	n := int(m.MaxEntries())
	keys := make([]connectRevKey, n)
	vals := make([]connectRevValue, n)
	for i := range keys {
		keys[i].Cookie = 1<<62 + uint64(i)
		keys[i].Backend[3] = uint32(i)
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		b.Fatalf("fill %s: %v", m, err)
	}
	return n
}

// BenchmarkEmptyHookFloor measures what the kernel's BPF stats report for
// a connect4 program that does nothing: the floor under the connect4
// figures of BenchmarkConnectVIP (the cost of timing a run, and of the
// cgroup hook itself).
func BenchmarkEmptyHookFloor(b *testing.B) {
	testenv.RequirePrivileged(b)
	cg := testenv.NewCgroup(b)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	stats, err := EnableProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	be := startIDBackend(b, "127.0.0.42:0")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := cg.Helper(ctx, b, "crr", be.String(), "20000").CombinedOutput(); err != nil {
		b.Fatalf("crr: %v: %s", err, out)
	}
	st, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	per := st.Runtime / time.Duration(max(st.RunCount, 1))
	b.ReportMetric(float64(per.Nanoseconds()), "empty-connect4-ns")
	fmt.Printf("empty connect4 program: %v/run (%d runs)\n", per, st.RunCount)
}

// BenchmarkPolicyHookCost (run it with -benchtime=1x) measures connect4's
// run time per call on a VIP hit for each policy, interleaved round by
// round, and for random again with exclusions set (one cgroup subtree and
// one uid that do not match, the worst case: every entry is checked). It
// reports each as a ratio to random measured in the same rounds.
func BenchmarkPolicyHookCost(b *testing.B) {
	d, cg, _ := newDatapath(b)
	var bs []Backend
	for i := range 3 {
		bs = append(bs, Backend{Addr: startIDBackend(b, fmt.Sprintf("127.0.0.%d:0", 101+i))})
	}
	variants := []struct {
		name string
		vip  string
		set  func(*Service)
	}{
		{"random", "198.18.7.10", func(*Service) {}},
		{"round-robin", "198.18.7.11", func(s *Service) { s.Policy = RoundRobin }},
		{"maglev", "198.18.7.12", func(s *Service) { s.Policy = Maglev }},
		{"random+affinity", "198.18.7.13", func(s *Service) { s.Affinity = time.Hour }},
		{"maglev+netns", "198.18.7.14", func(s *Service) { s.Policy, s.Client = Maglev, ClientNetns }},
	}
	var svcs []Service
	for _, v := range variants {
		s := Service{Key: ServiceKey{VIP: netip.MustParseAddr(v.vip), Port: 80, Proto: TCP}, Backends: bs}
		v.set(&s)
		svcs = append(svcs, s)
	}
	mustApply(b, d, svcs...)
	stats, err := EnableProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()

	const rounds, perRound = 6, 1500
	cost := make([]ProgramStats, len(variants)+1)
	other := cg.Child(b, "other")
	otherID, err := cgroupv2.ID(other.Path)
	if err != nil {
		b.Fatal(err)
	}
	for range rounds {
		for i, v := range variants {
			st := connectRound(b, d, cg, v.vip+":80", perRound)
			cost[i].Runs += st.Runs
			cost[i].Runtime += st.Runtime
		}
		if err := d.SetExclusions([]ExcludedCgroup{{ID: otherID, Level: 2}}, []uint32{65534}); err != nil {
			b.Fatal(err)
		}
		st := connectRound(b, d, cg, variants[0].vip+":80", perRound)
		cost[len(variants)].Runs += st.Runs
		cost[len(variants)].Runtime += st.Runtime
		if err := d.SetExclusions(nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	base := float64(cost[0].PerRun())
	for i := range cost {
		name := "random+exclusions"
		if i < len(variants) {
			name = variants[i].name
		}
		per := cost[i].PerRun()
		b.ReportMetric(float64(per.Nanoseconds()), name+"-ns")
		fmt.Printf("connect4 hit  %-18s %6v/run  ratio to random %.2f  (%d runs)\n", name, per, float64(per)/base, cost[i].Runs)
	}
}
