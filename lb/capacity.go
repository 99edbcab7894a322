package lb

import (
	"errors"
	"fmt"
)

// Limits are the capacities of the datapath maps, fixed when the maps are
// first created.
type Limits struct {
	ServiceEntries int // sm_services: one master and the slots of each service
	Backends       int // sm_backends: one entry per backend of each service
	Counters       int // sm_counters: one per service and one per backend
	LocalNames     int // sm_local_names: one per backend of a local-name service
	Options        int // sm_svc_opts: one per round-robin or affinity service
}

// DefaultLimits are the map sizes Open uses when Options leave them zero.
func DefaultLimits() (Limits, error) {
	spec, err := loadConnect()
	if err != nil {
		return Limits{}, fmt.Errorf("load map sizes: %w", err)
	}
	size := func(name string) int { return int(spec.Maps[name].MaxEntries) }
	return Limits{
		ServiceEntries: size("sm_services"),
		Backends:       size("sm_backends"),
		Counters:       size("sm_counters"),
		LocalNames:     size("sm_local_names"),
		Options:        size("sm_svc_opts"),
	}, nil
}

// WithOptions returns l with the sizes opts sets.
func (l Limits) WithOptions(opts Options) Limits {
	if opts.MaxServiceEntries > 0 {
		l.ServiceEntries = opts.MaxServiceEntries
	}
	if opts.MaxBackends > 0 {
		l.Backends = opts.MaxBackends
	}
	if opts.MaxCounters > 0 {
		l.Counters = opts.MaxCounters
	}
	return l
}

// Limits returns the capacities of the open maps.
func (d *Datapath) Limits() Limits {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.w.limits
}

// Usage is how many map entries a set of services needs. Apply writes a
// changed service's new slots before deleting its old ones, so the set
// needs room for the largest service twice.
type Usage struct {
	ServiceEntries, Backends, Counters, LocalNames, Options int
	// Peak is the largest slot count of one service.
	Peak int
}

// Add counts one service.
func (u *Usage) Add(s Service) {
	n := s.slotsNeeded()
	u.ServiceEntries += 1 + n
	u.Backends += len(s.Backends)
	u.Counters += 1 + len(s.Backends)
	if s.LocalName {
		u.LocalNames += len(s.Backends)
	}
	if s.needsOpts() {
		u.Options++
	}
	u.Peak = max(u.Peak, n)
}

func usageOf(ds []Service, locals int) Usage {
	var u Usage
	for _, s := range ds {
		u.Add(s)
	}
	u.LocalNames = locals
	return u
}

// Fits reports which maps the services would overflow.
func (u Usage) Fits(l Limits) error {
	var errs []error
	if need := u.ServiceEntries + u.Peak; need > l.ServiceEntries {
		errs = append(errs, fmt.Errorf("services need %d service-map entries (slots), the map holds %d: fewer services, backends or lower weights", need, l.ServiceEntries))
	}
	if need := u.Backends + u.Peak; need > l.Backends {
		errs = append(errs, fmt.Errorf("services need %d backend-map entries, the map holds %d", need, l.Backends))
	}
	if need := u.Counters + u.Peak; need > l.Counters {
		errs = append(errs, fmt.Errorf("services need %d counters, the map holds %d", need, l.Counters))
	}
	if need := u.Options; l.Options > 0 && need > l.Options {
		errs = append(errs, fmt.Errorf("round-robin and affinity services need %d option entries, the map holds %d", need, l.Options))
	}
	if need := u.LocalNames; need > l.LocalNames {
		errs = append(errs, fmt.Errorf("services with local names need %d local-name entries, the map holds %d", need, l.LocalNames))
	}
	return errors.Join(errs...)
}

// Validate checks services as Apply would, without a kernel: each service
// alone, no key twice, no getsockname entry claimed twice, and that the set
// fits maps of the given limits.
func Validate(services []Service, l Limits) error {
	ds, err := validateSet(services)
	if err != nil {
		return fmt.Errorf("validate services: %w", err)
	}
	if err := usageOf(ds, len(wantedLocals(ds))).Fits(l); err != nil {
		return fmt.Errorf("validate services: %w", err)
	}
	return nil
}

// Remove uncounts a service counted with Add. Peak stays: it is an upper
// bound, which errs on the side of refusing.
func (u *Usage) Remove(s Service) {
	n := s.slotsNeeded()
	u.ServiceEntries -= 1 + n
	u.Backends -= len(s.Backends)
	u.Counters -= 1 + len(s.Backends)
	if s.LocalName {
		u.LocalNames -= len(s.Backends)
	}
	if s.needsOpts() {
		u.Options--
	}
}
