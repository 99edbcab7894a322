package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"sockmesh/dnsstub"
	"sockmesh/internal/cgroupv2"
	"sockmesh/lb"
	"sockmesh/registry"
)

const defaultPinDir = "/sys/fs/bpf/sockmesh"

type runFlags struct {
	services  string
	cgroup    string
	pinDir    string
	readyFile string
	ranges    rangeFlags
	dns       dnsFlags
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
resolvers (see sockmesh resolver). On SIGTERM or SIGINT it stops watching but leaves the
datapath pinned: traffic keeps flowing while the daemon is down.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), g, f)
		},
	}
	cmd.Flags().StringVar(&f.services, "services", defaultServicesDir, "services directory (need not exist yet)")
	cmd.Flags().StringVar(&f.cgroup, "cgroup", "", "cgroup v2 to attach to: a path, or a name under the cgroup2 mount (created if missing); default the root")
	cmd.Flags().StringVar(&f.pinDir, "pin-dir", defaultPinDir, "bpffs directory for the pinned maps and links")
	cmd.Flags().StringVar(&f.readyFile, "ready-file", "", "file to create once the services directory is served")
	f.ranges.add(cmd)
	f.dns.add(cmd)
	return cmd
}

// cgroupPath resolves --cgroup: empty means the cgroup v2 root, a relative
// name lives under the cgroup2 mount and is created when missing.
func cgroupPath(flag string) (string, error) {
	root, err := cgroupv2.Mountpoint()
	if err != nil {
		return "", err
	}
	if flag == "" {
		return root, nil
	}
	path := flag
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup: %w", err)
	}
	return path, nil
}

func run(ctx context.Context, g *globalFlags, f *runFlags) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	ranges, err := f.ranges.ranges()
	if err != nil {
		return err
	}
	// Every flag is checked before the kernel is touched.
	var dnsHandler *dnsstub.Handler
	var dnsListen []netip.AddrPort
	var onApply func(*registry.Snapshot)
	if f.dns.enabled() {
		cfg, listen, err := f.dns.config(ranges, log)
		if err != nil {
			return err
		}
		if dnsHandler, err = dnsstub.NewHandler(cfg); err != nil {
			return err
		}
		dnsListen = listen
		onApply = publishDNS(dnsHandler)
	}
	cg, err := cgroupPath(f.cgroup)
	if err != nil {
		return err
	}
	d, err := lb.Open(lb.Options{PinDir: f.pinDir})
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Attach(cg); err != nil {
		return err
	}
	log.Info("datapath attached", "cgroup", cg, "pins", f.pinDir, "restored services", len(d.Services()))

	reg, err := registry.New(registry.Options{
		Dir:     f.services,
		Ranges:  ranges,
		Limits:  d.Limits(),
		Logger:  log,
		OnApply: onApply,
	}, d)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	// stop ends the registry before the datapath closes, whatever the
	// reason run returns.
	stop := func(err error) error {
		cancel()
		if rerr := <-done; err == nil {
			err = rerr
		}
		return err
	}
	select {
	case <-reg.Ready():
	case err := <-done:
		cancel()
		return err
	}
	var dnsErrs <-chan error // nil without DNS: never ready
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
	snap := reg.Snapshot()
	log.Info("serving", "dir", f.services, "services", len(snap.Services), "errors", len(snap.Errors))
	if f.readyFile != "" {
		if err := os.WriteFile(f.readyFile, []byte(fmt.Sprintln(os.Getpid())), 0o644); err != nil {
			return stop(fmt.Errorf("write ready file: %w", err))
		}
	}
	select {
	case err = <-done:
		cancel()
	case err = <-dnsErrs:
		err = stop(fmt.Errorf("serve DNS: %w", err))
	}
	log.Info("stopped; the datapath stays pinned and keeps serving", "pins", f.pinDir)
	return err
}
