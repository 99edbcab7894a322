// Command sockmesh is the sockmesh daemon and its command-line tool.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// exitError carries an exit code for a failure already reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := newRoot().ExecuteContext(ctx)
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		// One line, whatever the error: cobra's usage hints included.
		fmt.Fprintf(os.Stderr, "sockmesh: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

// globalFlags are the flags every command has.
type globalFlags struct {
	logFormat string
	logLevel  string
}

func (g *globalFlags) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("parse --log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("parse --log-format: %q is not text or json", g.logFormat)
}

func newRoot() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "sockmesh",
		Short: "A transparent local service mesh: service VIPs load-balanced at connect() time by cgroup eBPF",
		Long: `sockmesh gives every service in a directory of small YAML files a virtual IP
and sends each connect() or sendmsg() to that VIP straight to a backend, in the
kernel, with no proxy and no per-packet NAT.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(newCheckCmd(g), newRunCmd(g), newStatusCmd(), newDownCmd(), newExecCmd(), newResolverCmd(), newVersionCmd(), newDemoBackendsCmd(g), newRegistryCmd(g))
	root.Version = versionString()
	return root
}
