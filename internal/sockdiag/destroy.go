package sockdiag

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
)

// Target says which sockets to close: those connected to Remote with
// protocol Proto (unix.IPPROTO_UDP or unix.IPPROTO_TCP). An IPv4 Remote
// also matches AF_INET6 sockets connected to its v4-mapped form.
type Target struct {
	Remote netip.AddrPort
	Proto  uint8
}

// Result counts what DestroyConnected did.
type Result struct {
	Namespaces int // network namespaces searched
	Examined   int // connected sockets listed in them
	Matched    int // of those, connected to a target
	Closed     int // of those, kept by the filter and destroyed
}

// Connected-state masks: a connected UDP socket is ESTABLISHED; a TCP
// socket is connected in every state but LISTEN, CLOSE and TIME_WAIT.
const (
	udpConnected = 1 << StateEstablished
	tcpConnected = (1<<13 - 2) &^ (1<<StateListen | 1<<StateClose | 1<<StateTimeWait)
)

// connectedStates is the state mask of the connected sockets of proto.
func connectedStates(proto uint8) (uint32, error) {
	switch proto {
	case unix.IPPROTO_UDP:
		return udpConnected, nil
	case unix.IPPROTO_TCP:
		return tcpConnected, nil
	}
	return 0, fmt.Errorf("unsupported protocol %d", proto)
}

// targetSet matches sockets against targets by unmapped remote address,
// port and protocol.
type targetSet struct {
	set    map[Target]bool
	protos []uint8
}

func newTargetSet(targets []Target) (targetSet, error) {
	ts := targetSet{set: make(map[Target]bool, len(targets))}
	for _, t := range targets {
		if _, err := connectedStates(t.Proto); err != nil {
			return targetSet{}, fmt.Errorf("target %s: %w", t.Remote, err)
		}
		if !t.Remote.Addr().IsValid() {
			return targetSet{}, errors.New("target without address")
		}
		ts.set[normal(t.Remote, t.Proto)] = true
		if !slices.Contains(ts.protos, t.Proto) {
			ts.protos = append(ts.protos, t.Proto)
		}
	}
	return ts, nil
}

func normal(ap netip.AddrPort, proto uint8) Target {
	return Target{netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), proto}
}

func (ts targetSet) match(s Socket) bool { return ts.set[normal(s.Remote, s.Proto)] }

// DestroyConnected closes, in every network namespace of the cgroup
// subtree at cgroupPath (see Namespaces), the connected sockets of both
// families whose remote address (unmapped) and port equal a target's and
// for which match returns true (match nil: all). Connected means state
// ESTABLISHED for UDP, any state but LISTEN, CLOSE and TIME_WAIT for TCP.
//
// A failure in one namespace (or on one socket) does not stop the others;
// the failures are joined in the error, and the Result counts what was
// done.
func DestroyConnected(cgroupPath string, targets []Target, match func(Socket) bool) (Result, error) {
	var res Result
	ts, err := newTargetSet(targets)
	if err != nil || len(targets) == 0 {
		return res, err
	}
	nss, err := Namespaces(cgroupPath)
	defer func() {
		for _, ns := range nss {
			ns.Close()
		}
	}()
	errs := []error{err}
	for _, ns := range nss {
		res.Namespaces++
		if err := destroyIn(ns, ts, match, &res); err != nil {
			errs = append(errs, fmt.Errorf("network namespace %s: %w", ns, err))
		}
	}
	return res, errors.Join(errs...)
}

// destroyIn is DestroyConnected in one namespace.
func destroyIn(ns *Netns, ts targetSet, match func(Socket) bool, res *Result) error {
	c, err := Dial(ns)
	if err != nil {
		return err
	}
	defer c.Close()
	var errs []error
	for _, proto := range ts.protos {
		states, _ := connectedStates(proto)
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := c.Sockets(family, proto, states)
			if err != nil {
				// An interrupted dump still lists real sockets.
				errs = append(errs, err)
			}
			res.Examined += len(socks)
			for _, s := range socks {
				if !ts.match(s) {
					continue
				}
				res.Matched++
				if match != nil && !match(s) {
					continue
				}
				gone, err := c.destroy(s)
				switch {
				case err != nil:
					errs = append(errs, fmt.Errorf("destroy %s: %w", s, err))
				case !gone:
					res.Closed++
				}
			}
		}
	}
	return errors.Join(errs...)
}
