package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The load generator: one client doing one transaction at a time with
// blocking system calls (as netperf's *_RR and *_CRR tests do), so that
// what a variant adds to a connect or a datagram shows in full in the
// rate. It runs as its own process, started straight into the cgroup of
// the variant under test.

// loadSpec is what one load run does.
type loadSpec struct {
	Mode     string        // crr, rr, udp-conn or udp-unconn
	Target   string        // address:port to reach
	Duration time.Duration // stop after this long ...
	Count    int           // ... or after this many transactions (0: no limit)
}

// loadResult is what one load run measured.
type loadResult struct {
	Ops     int           // transactions completed
	Elapsed time.Duration // time they took
	// ConnectP50 and ConnectP99 are connect() latencies (crr only).
	ConnectP50, ConnectP99 time.Duration
	// Mismatched counts replies whose source was not the target (an
	// unconnected UDP reply the variant failed to translate back).
	Mismatched int
}

// Rate is transactions per second.
func (r loadResult) Rate() float64 { return float64(r.Ops) / r.Elapsed.Seconds() }

// runLoad is the load role: spec as JSON in argv, result as JSON on stdout.
func runLoad(args []string) error {
	if len(args) != 1 {
		return errors.New("load: want one JSON spec")
	}
	var spec loadSpec
	if err := json.Unmarshal([]byte(args[0]), &spec); err != nil {
		return fmt.Errorf("parse load spec: %w", err)
	}
	target, err := netip.ParseAddrPort(spec.Target)
	if err != nil {
		return fmt.Errorf("parse load target: %w", err)
	}
	runtime.LockOSThread()
	var res loadResult
	switch spec.Mode {
	case "crr":
		res, err = loadCRR(spec, target)
	case "rr":
		res, err = loadRR(spec, target)
	case "udp-conn", "udp-unconn":
		res, err = loadUDP(spec, target, spec.Mode == "udp-conn")
	default:
		err = fmt.Errorf("load: unknown mode %q", spec.Mode)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func family(ap netip.AddrPort) int {
	if ap.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// until reports whether a run that started at start and did ops
// transactions should go on.
func (s loadSpec) until(start time.Time, ops int) bool {
	if s.Count > 0 && ops >= s.Count {
		return false
	}
	// Reading the clock every transaction costs ~30 ns against tens of µs.
	return time.Since(start) < s.Duration
}

// exchange writes one byte and reads one back.
func exchange(fd int, buf []byte) error {
	if _, err := unix.Write(fd, buf[:1]); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	n, err := unix.Read(fd, buf)
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Read(fd, buf)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if n == 0 {
		return errors.New("read: connection closed")
	}
	return nil
}

// loadCRR connects, exchanges one byte each way and closes, over and over:
// TCP_CRR. Each connect() is timed. The close resets the connection
// (SO_LINGER 0), so no TIME_WAIT socket is left on either side: tens of
// thousands of them would make every connect() search longer for a free
// port as the run goes on, a drift that has nothing to do with the
// variant measured.
func loadCRR(spec loadSpec, target netip.AddrPort) (loadResult, error) {
	sa, fam := sockaddr(target), family(target)
	buf := make([]byte, 64)
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	ops := 0
	for spec.until(start, ops) {
		fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return loadResult{}, fmt.Errorf("socket: %w", err)
		}
		t0 := time.Now()
		err = unix.Connect(fd, sa)
		lat = append(lat, time.Since(t0))
		if err == nil {
			err = exchange(fd, buf)
		}
		if err == nil {
			err = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(fd)
		if err != nil {
			return loadResult{}, fmt.Errorf("connect+close %s after %d: %w", target, ops, err)
		}
		ops++
	}
	res := loadResult{Ops: ops, Elapsed: time.Since(start)}
	res.ConnectP50, res.ConnectP99 = percentiles(lat)
	return res, nil
}

// loadRR exchanges one byte each way on one kept connection: TCP_RR.
func loadRR(spec loadSpec, target netip.AddrPort) (loadResult, error) {
	fd, err := unix.Socket(family(target), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return loadResult{}, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sockaddr(target)); err != nil {
		return loadResult{}, fmt.Errorf("connect %s: %w", target, err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return loadResult{}, fmt.Errorf("set TCP_NODELAY: %w", err)
	}
	buf := make([]byte, 64)
	start := time.Now()
	ops := 0
	for spec.until(start, ops) {
		if err := exchange(fd, buf); err != nil {
			return loadResult{}, fmt.Errorf("request/response %s after %d: %w", target, ops, err)
		}
		ops++
	}
	return loadResult{Ops: ops, Elapsed: time.Since(start)}, nil
}

// loadUDP sends one datagram and waits for the echo, over and over: on a
// connected socket (send/recv: the connect hook runs once) or an
// unconnected one (sendto/recvfrom: the sendmsg and recvmsg hooks run on
// every datagram, and each reply must come from the target).
func loadUDP(spec loadSpec, target netip.AddrPort, connected bool) (loadResult, error) {
	fd, err := unix.Socket(family(target), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return loadResult{}, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return loadResult{}, fmt.Errorf("set SO_RCVTIMEO: %w", err)
	}
	sa := sockaddr(target)
	if connected {
		if err := unix.Connect(fd, sa); err != nil {
			return loadResult{}, fmt.Errorf("connect %s: %w", target, err)
		}
	}
	buf := make([]byte, 64)
	var res loadResult
	start := time.Now()
	for spec.until(start, res.Ops) {
		if connected {
			err = exchange(fd, buf)
		} else {
			err = sendRecvFrom(fd, sa, target, buf, &res)
		}
		if err != nil {
			return loadResult{}, fmt.Errorf("udp %s after %d: %w", target, res.Ops, err)
		}
		res.Ops++
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

func sendRecvFrom(fd int, sa unix.Sockaddr, target netip.AddrPort, buf []byte, res *loadResult) error {
	if err := unix.Sendto(fd, buf[:1], 0, sa); err != nil {
		return fmt.Errorf("sendto: %w", err)
	}
	_, from, err := unix.Recvfrom(fd, buf, 0)
	for errors.Is(err, unix.EINTR) {
		_, from, err = unix.Recvfrom(fd, buf, 0)
	}
	if err != nil {
		return fmt.Errorf("recvfrom: %w", err)
	}
	if from4, ok := from.(*unix.SockaddrInet4); !ok || netip.AddrPortFrom(netip.AddrFrom4(from4.Addr), uint16(from4.Port)) != target {
		res.Mismatched++
	}
	return nil
}

// percentiles returns the median and the 99th percentile of d (sorted in
// place).
func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*99/100]
}

// formatRate prints a rate with thousands separators.
func formatRate(r float64) string {
	s := strconv.FormatInt(int64(r+0.5), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
