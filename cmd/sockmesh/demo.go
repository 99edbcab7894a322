package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"

	"github.com/spf13/cobra"

	"sockmesh/lb"
	"sockmesh/registry"
)

// newDemoBackendsCmd serves the backends of a services directory, for
// make run and the tests: every loopback TCP backend answers HTTP with
// its own address, so a client sees which one it reached.
func newDemoBackendsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:    "demo-backends DIR",
		Short:  "Serve HTTP on every loopback backend address of DIR's services (a demo)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			return serveDemoBackends(cmd.Context(), args[0], log)
		},
	}
}

func serveDemoBackends(ctx context.Context, dir string, log *slog.Logger) error {
	snap, err := registry.Check(registry.Options{Dir: dir})
	if err != nil {
		return err
	}
	var addrs []netip.AddrPort
	for _, sv := range snap.Services {
		for _, ls := range sv.LBServices(sv.VIPs, nil) {
			for _, b := range ls.Backends {
				if ls.Key.Proto == lb.TCP && b.Addr.Addr().IsLoopback() && !slices.Contains(addrs, b.Addr) {
					addrs = append(addrs, b.Addr)
				}
			}
		}
	}
	if len(addrs) == 0 {
		return fmt.Errorf("serve demo backends: no loopback TCP backends in %s", dir)
	}
	errs := make(chan error, len(addrs))
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a.String())
		if err != nil {
			return fmt.Errorf("serve demo backends: %w", err)
		}
		body := fmt.Sprintf("backend %s\n", a)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, body)
		})}
		go func() { errs <- srv.Serve(ln) }()
		defer srv.Close()
	}
	log.Info("demo backends serving", "addresses", addrs)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve demo backends: %w", err)
	}
}
