package main

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// scaleRun is connect() latency against the number of VIPs loaded.
type scaleRun struct {
	Points []ScalePoint
	// NATLoad is how long loading the NAT rules took, per variant and size.
	NATLoad map[Variant]map[int]time.Duration
}

// measureScale measures connect() latency through each daemon (one per
// size, all loaded at once, so the sizes interleave round by round) and
// through the NAT variants loaded with as many VIPs, next to direct.
func (e *env) measureScale(daemons []*daemon, plain string, rounds, count int, d time.Duration) (scaleRun, error) {
	run := scaleRun{NATLoad: map[Variant]map[int]time.Duration{}}
	p50s, p99s := map[Variant]map[int][]float64{}, map[Variant]map[int][]float64{}
	add := func(v Variant, n int, r loadResult) {
		if p50s[v] == nil {
			p50s[v], p99s[v] = map[int][]float64{}, map[int][]float64{}
		}
		p50s[v][n] = append(p50s[v][n], float64(r.ConnectP50))
		p99s[v][n] = append(p99s[v][n], float64(r.ConnectP99))
	}
	direct := fmt.Sprintf("%s:%d", backendIP, crrPort)
	vip := fmt.Sprintf("%s:%d", sockmeshIP, crrPort)
	natTarget := fmt.Sprintf("%s:%d", natVIP, crrPort)
	spec := func(target string) loadSpec {
		return loadSpec{Mode: "crr", Target: target, Duration: d, Count: count}
	}
	for range rounds {
		r, err := e.runLoadIn(plain, spec(direct))
		if err != nil {
			return run, err
		}
		for _, dm := range daemons {
			add(Direct, dm.services, r)
		}
		for _, dm := range daemons {
			r, err := e.runLoadIn(dm.cgroup, spec(vip))
			if err != nil {
				return run, err
			}
			add(Sockmesh, dm.services, r)
		}
		for _, nat := range []natVariant{nftVariant, iptVariant} {
			if run.NATLoad[nat.variant] == nil {
				run.NATLoad[nat.variant] = map[int]time.Duration{}
			}
			for _, dm := range daemons {
				start := time.Now()
				if err := nat.load(dm.services); err != nil {
					return run, err
				}
				run.NATLoad[nat.variant][dm.services] = time.Since(start)
				r, err := e.runLoadIn(plain, spec(natTarget))
				if rerr := nat.remove(); err == nil {
					err = rerr
				}
				if err != nil {
					return run, err
				}
				add(nat.variant, dm.services, r)
			}
		}
	}
	for _, v := range []Variant{Direct, Sockmesh, NftMap, IptLinear} {
		for _, dm := range daemons {
			run.Points = append(run.Points, ScalePoint{
				Variant: v, VIPs: dm.services,
				P50: time.Duration(median(p50s[v][dm.services])),
				P99: time.Duration(median(p99s[v][dm.services])),
			})
		}
	}
	return run, nil
}

// hookCost is what the kernel's BPF stats report for one program over one
// kind of traffic.
type hookCost struct {
	What    string
	Program string
	Runs    uint64
	PerRun  time.Duration
	Target  time.Duration // 0 when the issue sets none
}

// measureHooks turns on BPF run-time stats and measures, per program and
// traffic, the mean run time: connect4 on a VIP hit and on a miss (a
// connect to the backend's own address from inside the mesh), sendmsg4
// and recvmsg4 on unconnected UDP, and, as the floor under all of them, a
// connect4 program that only returns.
func (e *env) measureHooks(daemons []*daemon, count int, d time.Duration) ([]hookCost, error) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable bpf stats: %w", err)
	}
	defer stats.Close()
	var out []hookCost
	floor, err := e.emptyHookFloor(count, d)
	if err != nil {
		return nil, err
	}
	out = append(out, floor)
	direct := fmt.Sprintf("%s:%d", backendIP, crrPort)
	for _, dm := range daemons {
		for _, c := range []struct {
			what, mode, target string
			progs              []string
			targets            []time.Duration
		}{
			{"VIP hit", "crr", fmt.Sprintf("%s:%d", sockmeshIP, crrPort), []string{"connect4"}, []time.Duration{200 * time.Nanosecond}},
			{"miss (not a VIP)", "crr", direct, []string{"connect4"}, []time.Duration{100 * time.Nanosecond}},
			{"unconnected UDP to a VIP", "udp-unconn", fmt.Sprintf("%s:%d", sockmeshIP, udpPort), []string{"sendmsg4", "recvmsg4"}, []time.Duration{0, 0}},
		} {
			before, err := dm.hookStats()
			if err != nil {
				return nil, err
			}
			if _, err := e.runLoadIn(dm.cgroup, loadSpec{Mode: c.mode, Target: c.target, Duration: d, Count: count}); err != nil {
				return nil, err
			}
			after, err := dm.hookStats()
			if err != nil {
				return nil, err
			}
			for i, p := range c.progs {
				runs := after[p].RunCount - before[p].RunCount
				if runs == 0 {
					return nil, fmt.Errorf("%s: %s did not run", c.what, p)
				}
				out = append(out, hookCost{
					What:    fmt.Sprintf("%s, %d services", c.what, dm.services),
					Program: p,
					Runs:    runs,
					PerRun:  (after[p].Runtime - before[p].Runtime) / time.Duration(runs),
					Target:  c.targets[i],
				})
			}
		}
	}
	return out, nil
}

// emptyHookFloor attaches a connect4 program that only returns 1 to a
// cgroup of its own and measures it like the others.
func (e *env) emptyHookFloor(count int, d time.Duration) (hookCost, error) {
	cg, err := e.cgroup("floor")
	if err != nil {
		return hookCost{}, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		return hookCost{}, fmt.Errorf("load empty program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		return hookCost{}, fmt.Errorf("attach empty program: %w", err)
	}
	defer l.Close()
	if _, err := e.runLoadIn(cg, loadSpec{Mode: "crr", Target: fmt.Sprintf("%s:%d", backendIP, crrPort), Duration: d, Count: count}); err != nil {
		return hookCost{}, err
	}
	st, err := prog.Stats()
	if err != nil {
		return hookCost{}, fmt.Errorf("read stats of the empty program: %w", err)
	}
	if st.RunCount == 0 {
		return hookCost{}, fmt.Errorf("the empty program did not run")
	}
	return hookCost{What: "empty program (the floor)", Program: "connect4", Runs: st.RunCount, PerRun: st.Runtime / time.Duration(st.RunCount)}, nil
}
