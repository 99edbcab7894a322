package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"log/slog"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"sockmesh/dnsstub"
	"sockmesh/etcdsource"
	"sockmesh/health"
	"sockmesh/internal/cgroupv2"
	"sockmesh/internal/hostnet"
	"sockmesh/lb"
	"sockmesh/metrics"
	"sockmesh/registry"
)

type runFlags struct {
	services  string
	cgroup    string
	paths     pathFlags
	readyFile string
	metrics   string
	noRoutes  bool
	ranges    rangeFlags
	dns       dnsFlags
	maps      mapSizeFlags
	// excludeCgroups and excludeUIDs are clients whose traffic is never
	// balanced.
	excludeCgroups []string
	excludeUIDs    []uint
	// registry is the shared registry on etcd, if any; publish a
	// directory this host publishes there with a lease of publishTTL.
	registry   registryFlags
	publish    string
	publishTTL time.Duration
	publishAs  string // this host's name in the keys of its backends documents
}

// mapSizeFlags size the datapath maps when run creates them; pinned maps
// keep the size they were created with until sockmesh down.
type mapSizeFlags struct {
	serviceEntries, backends, counters int
}

func (m *mapSizeFlags) add(cmd *cobra.Command) {
	cmd.Flags().IntVar(&m.serviceEntries, "max-service-entries", 0, "size of the service map (one entry per VIP and port, plus one per backend slot); 0 keeps the built-in 131072")
	cmd.Flags().IntVar(&m.backends, "max-backends", 0, "size of the backend map (one entry per backend of each VIP and port); 0 keeps the built-in 65536")
	cmd.Flags().IntVar(&m.counters, "max-counters", 0, "size of the counter map (one per VIP and port and one per backend); 0 keeps the built-in 131072")
}

func (m mapSizeFlags) check() error {
	for _, v := range []struct {
		flag string
		n    int
	}{{"--max-service-entries", m.serviceEntries}, {"--max-backends", m.backends}, {"--max-counters", m.counters}} {
		if v.n < 0 || v.n > 1<<24 {
			return fmt.Errorf("parse %s: %d is not a map size: use 0 for the default, or up to %d", v.flag, v.n, 1<<24)
		}
	}
	return nil
}

func newRunCmd(g *globalFlags) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon: load the datapath, attach it to a cgroup and serve the services directory",
		Long: `run loads the socket programs (or takes over the pinned ones a previous run
left), attaches them to a cgroup v2 (default: the root, i.e. the whole host),
and keeps the service maps in step with the services directory, applying each
change as it lands. A DNS stub answers <service>.mesh.internal with the VIPs
once the datapath routes them, and forwards other names to the host's
resolvers (see sockmesh resolver). Each VIP range gets an unreachable route,
so a process outside the cgroup fails fast instead of sending VIP traffic to
the default gateway.

Readiness: systemd's sd_notify (Type=notify) and --ready-file. SIGHUP reads
every service file again and converges the maps in full. SIGTERM and SIGINT
stop the daemon but leave the datapath pinned and the routes in place:
traffic keeps flowing while it is down or being upgraded. sockmesh down
removes everything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), g, f)
		},
	}
	cmd.Flags().StringVar(&f.services, "services", defaultServicesDir, "services directory (need not exist yet); off for none (with --registry)")
	cmd.Flags().StringVar(&f.cgroup, "cgroup", "", "cgroup v2 to attach to: a path, or a name under the cgroup2 mount (created if missing); default the root: the whole host")
	f.paths.add(cmd)
	cmd.Flags().StringVar(&f.readyFile, "ready-file", "", "file to create (holding the pid) once the services are served")
	cmd.Flags().StringVar(&f.metrics, "metrics-listen", "off", "address:port to serve Prometheus metrics on (/metrics), e.g. 127.0.0.1:9617; off for none")
	cmd.Flags().BoolVar(&f.noRoutes, "no-routes", false, "install no unreachable routes for the VIP ranges (and skip the overlap check)")
	f.ranges.add(cmd)
	f.dns.add(cmd)
	f.maps.add(cmd)
	cmd.Flags().StringArrayVar(&f.excludeCgroups, "exclude-cgroup", nil, "cgroup v2 subtree (a path, or a name under the cgroup2 mount) whose connects and sends to VIPs go out unchanged, e.g. a sidecar's; repeatable, up to 8")
	f.registry.add(cmd.Flags(), "also serve the services of this etcd key prefix, shared by every host")
	cmd.Flags().StringVar(&f.publish, "publish", "", "directory of service files this host publishes to --registry under a lease (its own backends: they leave every host when this one dies)")
	cmd.Flags().DurationVar(&f.publishTTL, "publish-ttl", 10*time.Second, "lease of the published services: how long after this host dies they stay on the others (whole seconds, etcd's minimum is about 2s)")
	cmd.Flags().StringVar(&f.publishAs, "publish-as", "", "this host's name in the keys of the backends documents it publishes (NAME/backends/HOST/FILE; default: the host name)")
	cmd.Flags().UintSliceVar(&f.excludeUIDs, "exclude-uid", nil, "uid whose connects and sends to VIPs go out unchanged; repeatable or comma-separated, up to 8")
	return cmd
}

// cgroupPath resolves --cgroup: empty means the cgroup v2 root, a relative
// name lives under the cgroup2 mount; a missing one is created.
func cgroupPath(flag string) (path string, created bool, err error) {
	root, err := cgroupv2.Mountpoint()
	if err != nil {
		return "", false, err
	}
	if flag == "" {
		return root, false, nil
	}
	path = flag
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	path = filepath.Clean(path)
	if path != root && !strings.HasPrefix(path, root+"/") {
		return "", false, fmt.Errorf("parse --cgroup: %s is not under the cgroup v2 mount %s", flag, root)
	}
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return "", false, fmt.Errorf("create cgroup: %w", err)
	}
	return path, true, nil
}

// lockPinDir takes the pin directory for this daemon. A status probe may
// hold it for an instant, so a busy lock is tried again briefly.
func lockPinDir(paths *pathFlags) (*lb.PinLock, error) {
	var err error
	for range 10 {
		var l *lb.PinLock
		if l, err = lb.Lock(paths.pinDir); !errors.Is(err, lb.ErrLocked) {
			return l, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	holder := "another sockmesh daemon"
	if st, _ := readState(paths.stateFile()); st != nil && st.PID != 0 {
		holder += fmt.Sprintf(" (pid %d)", st.PID)
	}
	return nil, fmt.Errorf("%s already serves %s: stop it first, or give this one its own --pin-dir and --state-dir", holder, paths.pinDir)
}

func run(ctx context.Context, g *globalFlags, f *runFlags) error {
	// SIGHUP would end the process by default: catch it from the start,
	// and reload once serving.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log, err := g.logger()
	if err != nil {
		return err
	}
	cfg, err := f.check(log)
	if err != nil {
		return err
	}
	ranges, dnsHandler, dnsListen := cfg.ranges, cfg.dns, cfg.dnsListen
	if !f.noRoutes {
		if err := hostnet.CheckRanges([]netip.Prefix{ranges.V4, ranges.V6}); err != nil {
			return fmt.Errorf("%w: VIPs there would not be reached; pick an unused range with --vip-range4 or --vip-range6 (any /16 of 198.18.0.0/15 or a unique local /64 of fd00::/8)", err)
		}
	}
	bpffsMounted := ""
	if !lb.IsBPFFS(filepath.Dir(f.paths.pinDir)) {
		bpffsMounted = filepath.Dir(f.paths.pinDir)
	}
	lock, err := lockPinDir(&f.paths)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if f.readyFile != "" {
		// A ready file left by an earlier run must not announce this one
		// (only the lock holder may touch it).
		if err := os.Remove(f.readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove old ready file: %w", err)
		}
		defer os.Remove(f.readyFile)
	}
	prev, err := readState(f.paths.stateFile())
	if err != nil {
		log.Warn("ignoring the previous run's state", "err", err)
		prev = nil
	}
	cg, cgCreated, err := cgroupPath(f.cgroup)
	if err != nil {
		return err
	}
	st := daemonState{
		PID: os.Getpid(), Version: versionString(), Started: time.Now(),
		PinDir: f.paths.pinDir, ServicesDir: f.services,
		Cgroup: cg, CgroupCreated: cgCreated, BPFFSMounted: bpffsMounted,
	}
	var lastGood map[string][]byte
	if prev != nil && prev.PinDir == st.PinDir {
		// What an earlier run added to the host is still ours to remove.
		st.CgroupCreated = cgCreated || prev.CgroupCreated && prev.Cgroup == cg
		st.BPFFSMounted = cmp.Or(bpffsMounted, prev.BPFFSMounted)
		st.LocalAddrs, st.Routes = prev.LocalAddrs, prev.Routes
		// Documents of the shared registry are kept whatever the
		// directory; the directory's files only for the same directory.
		lastGood = map[string][]byte{}
		for path, src := range prev.lastGood() {
			if prev.ServicesDir == f.services || strings.Contains(path, "://") {
				lastGood[path] = src
			}
		}
	}
	// record writes what this run changed on the host at once, so down
	// can undo it even if the run fails before its first snapshot. The
	// previous run's services stay in it until then.
	record := func() error {
		tmp := st
		if prev != nil {
			tmp.Services, tmp.Errors = prev.Services, prev.Errors
		}
		return writeState(f.paths.stateFile(), &tmp)
	}
	if err := record(); err != nil {
		return err
	}
	d, err := lb.Open(lb.Options{
		PinDir:            f.paths.pinDir,
		MaxServiceEntries: f.maps.serviceEntries,
		MaxBackends:       f.maps.backends,
		MaxCounters:       f.maps.counters,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	// Exclusions first: an excluded sidecar is never balanced, not even
	// in the moment after the programs attach.
	if err := d.SetExclusions(cfg.excludeCgroups, cfg.excludeUIDs); err != nil {
		return err
	}
	if len(cfg.excludeCgroups)+len(cfg.excludeUIDs) > 0 {
		log.Info("not balanced: traffic of excluded clients", "cgroups", f.excludeCgroups, "uids", cfg.excludeUIDs)
	}
	if err := d.Attach(cg); err != nil {
		return err
	}
	log.Info("datapath attached", "cgroup", cg, "pins", f.paths.pinDir, "restored services", len(d.Services()))

	if err := f.setUpNetwork(cfg, &st, record, log); err != nil {
		return err
	}
	sw := newStateWriter(f.paths.stateFile(), st, log)
	var onApply func(*registry.Snapshot)
	if dnsHandler != nil {
		onApply = publishDNS(dnsHandler)
	}
	// Health checks run from this process, straight to the backends'
	// addresses; a change of state re-applies the services concerned.
	var reg *registry.Registry
	regReady := make(chan struct{})
	mon := health.NewMonitor(health.Options{Logger: log, OnChange: func(services []string) {
		<-regReady
		reg.HealthChanged(services)
	}})
	closer := newSocketCloser(cg, d, log)
	healthStop, healthDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(healthDone)
		writeHealth(f.paths.healthFile(), mon, healthStop, log)
	}()
	// Stopped after the registry (stop below): the last snapshot's
	// callbacks have run by then.
	defer func() {
		mon.Close()
		closer.close()
		close(healthStop)
		<-healthDone
	}()

	var sources []registry.Source
	if cfg.useRegistry {
		src, err := etcdsource.New(cfg.registry, log)
		if err != nil {
			return err
		}
		sources = append(sources, src)
		log.Info("serving the shared registry too", "registry", src.Name())
	}
	reg, err = registry.New(registry.Options{
		Dir:      f.services,
		Sources:  sources,
		Ranges:   ranges,
		Limits:   d.Limits(),
		Logger:   log,
		LastGood: lastGood,
		Health:   mon,
		OnApply: func(s *registry.Snapshot) {
			if onApply != nil {
				onApply(s)
			}
			mon.Sync(healthTargets(s))
			closer.add(s.Stats.Gone)
			sw.publish(s)
		},
	}, d)
	close(regReady)
	if err != nil {
		sw.close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	// stop ends the registry (and with it the state writer's input)
	// before the datapath closes, whatever the reason run returns.
	stopped := false
	stop := func(err error) error {
		if stopped {
			return err
		}
		stopped = true
		_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
		cancel()
		if rerr := <-done; err == nil {
			err = rerr
		}
		sw.close()
		return err
	}
	defer stop(nil)
	select {
	case <-reg.Ready():
	case err := <-done:
		done <- err
		return stop(nil)
	}
	var publishErrs <-chan error // nil without --publish: never ready
	if f.publish != "" {
		ch := make(chan error, 1)
		publishErrs = ch
		go func() { ch <- publishDir(ctx, f.publish, cfg.registry, f.publishTTL, f.publishAs, log) }()
	}
	var dnsErrs, metricsErrs <-chan error // nil when off: never ready
	if dnsHandler != nil {
		// Listen only now: the first snapshot is in the zone (publishDNS
		// builds it before Ready), so no client gets an NXDOMAIN to cache
		// for a service about to exist.
		dnsServer, err := dnsstub.Listen(dnsHandler, dnsListen)
		if err != nil {
			return stop(fmt.Errorf("%w (pick another address with --dns-listen, or --dns-listen off)", err))
		}
		defer dnsServer.Close()
		dnsErrs = dnsServer.Errors()
	}
	if cfg.metricsAddr.IsValid() {
		src := metrics.Sources{Datapath: d.Stats, Registry: reg.Snapshot, Health: mon.Statuses}
		if dnsHandler != nil {
			src.DNS = dnsHandler.Stats
		}
		ms, err := metrics.Listen(cfg.metricsAddr.String(), metrics.NewCollector(src))
		if err != nil {
			return stop(fmt.Errorf("serve metrics: %w (pick another address with --metrics-listen)", err))
		}
		defer ms.Close()
		metricsErrs = ms.Errors()
		log.Info("serving metrics", "url", "http://"+cfg.metricsAddr.String()+"/metrics")
	}
	snap := reg.Snapshot()
	// The state file names what is served before anyone is told it is.
	if err := sw.write(snap); err != nil {
		return stop(err)
	}
	log.Info("serving", "dir", f.services, "services", len(snap.Services), "errors", len(snap.Errors))
	if ctx.Err() != nil { // stopped while starting: never announce
		return stop(nil)
	}
	if f.readyFile != "" {
		if err := writeReadyFile(f.readyFile); err != nil {
			return stop(err)
		}
	}
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("tell systemd we are ready", "err", err)
	}
wait:
	for {
		select {
		case <-hup:
			reg.Reload()
			if dnsHandler != nil && len(f.dns.upstreams) == 0 {
				// The host's resolvers may have changed (DHCP, VPN).
				ups, _ := f.dns.upstreamList(dnsListen, log)
				dnsHandler.SetUpstreams(ups)
				log.Info("DNS upstreams re-read from /etc/resolv.conf", "upstreams", ups)
			}
		case err = <-done:
			done <- err // for stop
			err = stop(nil)
			break wait
		case err = <-dnsErrs:
			err = stop(fmt.Errorf("serve DNS: %w", err))
			break wait
		case err = <-metricsErrs:
			err = stop(fmt.Errorf("serve metrics: %w", err))
			break wait
		case err = <-publishErrs:
			if err != nil {
				err = stop(err)
				break wait
			}
		}
	}
	log.Info("stopped; the datapath stays pinned and keeps serving (sockmesh down removes it)", "pins", f.paths.pinDir)
	return err
}

// writeReadyFile creates path holding the pid (replaceFile: never
// following a link someone planted at path).
func writeReadyFile(path string) error {
	if err := replaceFile(path, []byte(fmt.Sprintln(os.Getpid()))); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}

// runConfig is what run's flags ask for, checked.
type runConfig struct {
	ranges      registry.Ranges
	dns         *dnsstub.Handler // nil with --dns-listen off
	dnsListen   []netip.AddrPort
	metricsAddr netip.AddrPort // invalid when off
	// registry says how to reach the shared registry; useRegistry is
	// false without --registry.
	registry    etcdsource.Config
	useRegistry bool
	// excludeCgroups and excludeUIDs are --exclude-cgroup and
	// --exclude-uid, resolved.
	excludeCgroups []lb.ExcludedCgroup
	excludeUIDs    []uint32
}

// check checks every flag, before anything on the host is touched, and
// makes paths absolute: the state file names files whatever the cwd.
func (f *runFlags) check(log *slog.Logger) (*runConfig, error) {
	var cfg runConfig
	var err error
	if cfg.ranges, err = f.ranges.ranges(); err != nil {
		return nil, err
	}
	if err := f.maps.check(); err != nil {
		return nil, err
	}
	if cfg.registry, cfg.useRegistry, err = f.registry.config(); err != nil {
		return nil, err
	}
	if f.publish != "" {
		if !cfg.useRegistry {
			return nil, errors.New("parse --publish: needs --registry")
		}
		if f.publishTTL < time.Second {
			return nil, fmt.Errorf("parse --publish-ttl: %s is under a second", f.publishTTL)
		}
		if f.publish, err = filepath.Abs(f.publish); err != nil {
			return nil, fmt.Errorf("parse --publish: %w", err)
		}
		if fi, err := os.Stat(f.publish); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("parse --publish: %s is not a directory", f.publish)
		}
		if f.publishAs, err = hostKey(f.publishAs); err != nil {
			return nil, fmt.Errorf("parse --publish-as: %w", err)
		}
	}
	switch {
	case f.services == "off" && !cfg.useRegistry:
		return nil, errors.New("parse --services: off needs --registry: services must come from somewhere")
	case f.services == "off":
		f.services = ""
	default:
		if f.services, err = filepath.Abs(f.services); err != nil {
			return nil, fmt.Errorf("parse --services: %w", err)
		}
	}
	if f.paths.pinDir, err = filepath.Abs(f.paths.pinDir); err != nil {
		return nil, fmt.Errorf("parse --pin-dir: %w", err)
	}
	if f.dns.enabled() {
		dc, listen, err := f.dns.config(cfg.ranges, log)
		if err != nil {
			return nil, err
		}
		if cfg.dns, err = dnsstub.NewHandler(dc); err != nil {
			return nil, err
		}
		cfg.dnsListen = listen
	}
	if cfg.excludeCgroups, cfg.excludeUIDs, err = f.exclusions(); err != nil {
		return nil, err
	}
	if f.metrics != "off" {
		if cfg.metricsAddr, err = parseAddrPort(f.metrics, 0); err != nil || cfg.metricsAddr.Port() == 0 {
			return nil, fmt.Errorf("parse --metrics-listen: %q is not address:port or off", f.metrics)
		}
	}
	return &cfg, nil
}

// setUpNetwork routes the VIP ranges nowhere and makes the stub's address
// local, recording each change in st at once.
func (f *runFlags) setUpNetwork(cfg *runConfig, st *daemonState, record func() error, log *slog.Logger) error {
	if !f.noRoutes {
		installed, err := hostnet.InstallRoutes([]netip.Prefix{cfg.ranges.V4, cfg.ranges.V6})
		for _, p := range installed {
			if !slices.Contains(st.Routes, p) {
				st.Routes = append(st.Routes, p)
			}
		}
		if rerr := record(); err == nil {
			err = rerr
		}
		if err != nil {
			return err
		}
		log.Info("VIP ranges routed nowhere outside the mesh", "ranges", []netip.Prefix{cfg.ranges.V4, cfg.ranges.V6}, "installed", installed)
	}
	for _, ap := range cfg.dnsListen {
		added, err := hostnet.EnsureLocal(ap.Addr())
		if err != nil {
			return fmt.Errorf("set up the DNS address: %w", err)
		}
		if added && !slices.Contains(st.LocalAddrs, ap.Addr()) {
			log.Info("added the DNS stub's address to lo", "addr", ap.Addr())
			st.LocalAddrs = append(st.LocalAddrs, ap.Addr())
			if err := record(); err != nil {
				return err
			}
		}
	}
	for _, ap := range cfg.dnsListen {
		st.DNSListen = append(st.DNSListen, ap.String())
	}
	if cfg.dns != nil {
		st.DNSZone = cfg.dns.Zone()
	}
	if cfg.metricsAddr.IsValid() {
		st.Metrics = cfg.metricsAddr.String()
	}
	return nil
}

// exclusions resolves --exclude-cgroup and --exclude-uid. An excluded
// cgroup must exist: its id is what the datapath compares.
func (f *runFlags) exclusions() ([]lb.ExcludedCgroup, []uint32, error) {
	if len(f.excludeCgroups) > lb.MaxExclusions {
		return nil, nil, fmt.Errorf("parse --exclude-cgroup: %d given, at most %d", len(f.excludeCgroups), lb.MaxExclusions)
	}
	if len(f.excludeUIDs) > lb.MaxExclusions {
		return nil, nil, fmt.Errorf("parse --exclude-uid: %d given, at most %d", len(f.excludeUIDs), lb.MaxExclusions)
	}
	var cgs []lb.ExcludedCgroup
	if len(f.excludeCgroups) > 0 {
		// The datapath compares the kernel's cgroup levels; inside a
		// cgroup namespace the paths this process sees start lower.
		if own, init := nsLink("self"), nsLink("1"); own != "" && init != "" && own != init {
			return nil, nil, fmt.Errorf("parse --exclude-cgroup: sockmesh runs in a cgroup namespace (%s, not the host's %s): run it in the host's to exclude cgroups", own, init)
		}
		root, err := cgroupv2.Mountpoint()
		if err != nil {
			return nil, nil, err
		}
		for _, c := range f.excludeCgroups {
			path := c
			if !filepath.IsAbs(path) {
				path = filepath.Join(root, path)
			}
			level, err := cgroupv2.Level(root, path)
			if err != nil {
				return nil, nil, fmt.Errorf("parse --exclude-cgroup %s: %w", c, err)
			}
			id, err := cgroupv2.ID(path)
			if err != nil {
				return nil, nil, fmt.Errorf("parse --exclude-cgroup %s: %w", c, err)
			}
			cgs = append(cgs, lb.ExcludedCgroup{ID: id, Level: level})
		}
	}
	var uids []uint32
	for _, u := range f.excludeUIDs {
		if u > 1<<32-2 {
			return nil, nil, fmt.Errorf("parse --exclude-uid: %d is not a uid", u)
		}
		uids = append(uids, uint32(u))
	}
	return cgs, uids, nil
}

// nsLink is the cgroup namespace of a process, as /proc names it; empty
// when it cannot be read.
func nsLink(pid string) string {
	l, _ := os.Readlink("/proc/" + pid + "/ns/cgroup")
	return l
}
