package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"sockmesh/etcdsource"
	"sockmesh/registry"
	"sockmesh/servicefile"
)

// registryFlags say where the shared registry is: an etcd key prefix.
type registryFlags struct {
	url               string
	caFile, cert, key string
	user              string
}

// passwordEnv holds the etcd password: a flag would show in ps.
const passwordEnv = "SOCKMESH_REGISTRY_PASSWORD"

func (f *registryFlags) add(fs *pflag.FlagSet, what string) {
	fs.StringVar(&f.url, "registry", "", what+": etcd://host:port[,host:port]/prefix (etcds:// for TLS; default prefix /sockmesh/services/)")
	fs.StringVar(&f.caFile, "registry-cacert", "", "CA certificate of the etcd servers (PEM), as etcdctl's --cacert")
	fs.StringVar(&f.cert, "registry-cert", "", "client certificate for etcd (PEM), as etcdctl's --cert")
	fs.StringVar(&f.key, "registry-key", "", "client key for etcd (PEM), as etcdctl's --key")
	fs.StringVar(&f.user, "registry-user", "", "etcd user; the password is read from $"+passwordEnv)
}

// config resolves the flags; ok is false without --registry.
func (f *registryFlags) config() (cfg etcdsource.Config, ok bool, err error) {
	if f.url == "" {
		if f.caFile != "" || f.cert != "" || f.key != "" || f.user != "" {
			return cfg, false, errors.New("parse --registry: the --registry-* options need --registry")
		}
		return cfg, false, nil
	}
	if cfg, err = etcdsource.ParseURL(f.url); err != nil {
		return cfg, false, fmt.Errorf("parse --registry: %w", err)
	}
	if f.caFile != "" || f.cert != "" || f.key != "" {
		if cfg.TLS, err = etcdsource.TLSConfig(f.caFile, f.cert, f.key); err != nil {
			return cfg, false, fmt.Errorf("parse --registry-cacert/--registry-cert/--registry-key: %w", err)
		}
	}
	if f.user != "" {
		cfg.Username, cfg.Password = f.user, os.Getenv(passwordEnv)
		if cfg.Password == "" {
			return cfg, false, fmt.Errorf("parse --registry-user: $%s is empty: etcd needs the user's password", passwordEnv)
		}
	}
	return cfg, true, nil
}

func newRegistryCmd(g *globalFlags) *cobra.Command {
	var rf registryFlags
	var ranges rangeFlags
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Read and change the shared registry on etcd (put, get, delete, list)",
		Long: `registry talks to the etcd key prefix that sockmesh run --registry serves
on every host. put validates a service file exactly as sockmesh check does,
against every service already in etcd, and writes nothing invalid; each key
holds one service, named after it.`,
	}
	rf.add(cmd.PersistentFlags(), "the shared registry")
	ranges.addTo(cmd.PersistentFlags())
	withClient := func(run func(ctx context.Context, cfg etcdsource.Config, c *clientv3.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			cfg, ok, err := rf.config()
			if err != nil {
				return err
			}
			if !ok {
				return errors.New("parse --registry: required: etcd://host:port/prefix")
			}
			c, err := cfg.Client()
			if err != nil {
				return fmt.Errorf("connect to %s: %w", cfg.URL(), err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			return run(ctx, cfg, c, args)
		}
	}
	var putHost string
	put := &cobra.Command{
		Use:   "put FILE",
		Short: "Validate a service file against the registry and write it under its name (a backends document under NAME/backends/HOST/FILE)",
		Args:  cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, cfg etcdsource.Config, c *clientv3.Client, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("read service file: %w", err)
			}
			svc, err := servicefile.Parse(args[0], data)
			if err != nil {
				return err
			}
			host, err := hostKey(putHost)
			if err != nil {
				return fmt.Errorf("parse --host: %w", err)
			}
			key := docKey(svc, host, args[0])
			docs, rev, err := etcdsource.List(ctx, c, cfg.Prefix)
			if err != nil {
				return fmt.Errorf("list %s: %w", cfg.URL(), err)
			}
			rg, err := ranges.ranges()
			if err != nil {
				return err
			}
			if err := checkAgainst(cfg.URL(), args[0], data, svc, key, docs, rg, cmd.ErrOrStderr()); err != nil {
				return err
			}
			// Written only if nothing under the prefix changed since the
			// list the check saw: two clashing puts cannot both pass.
			resp, err := c.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(cfg.Prefix).WithPrefix(), "<", rev+1)).
				Then(clientv3.OpPut(cfg.Prefix+key, string(data))).
				Commit()
			if err != nil {
				return fmt.Errorf("put %s: %w", key, err)
			}
			if !resp.Succeeded {
				return fmt.Errorf("put %s: the registry changed while it was checked: run put again", key)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "put %s\n", registry.DocPath(cfg.URL(), key))
			return nil
		}),
	}
	put.Flags().StringVar(&putHost, "host", "", "the host in a backends document's key (default: this host's name)")
	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Print a service as the registry holds it",
		Args:  cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, cfg etcdsource.Config, c *clientv3.Client, args []string) error {
			d, ok, err := etcdsource.Get(ctx, c, cfg.Prefix, args[0])
			if err != nil {
				return fmt.Errorf("get %s: %w", args[0], err)
			}
			if !ok {
				return fmt.Errorf("get %s: no such service in %s", args[0], cfg.URL())
			}
			_, err = cmd.OutOrStdout().Write(d.Value)
			return err
		}),
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove a service from the registry",
		Args:  cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, cfg etcdsource.Config, c *clientv3.Client, args []string) error {
			existed, err := etcdsource.Delete(ctx, c, cfg.Prefix, args[0])
			if err != nil {
				return fmt.Errorf("delete %s: %w", args[0], err)
			}
			if !existed {
				return fmt.Errorf("delete %s: no such service in %s", args[0], cfg.URL())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", registry.DocPath(cfg.URL(), args[0]))
			// Hosts' backends documents for it stay (under their leases,
			// or until deleted): they wait for a service of that name.
			docs, _, err := etcdsource.List(ctx, c, cfg.Prefix+args[0]+"/backends/")
			if err == nil && len(docs) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d backends documents for %s stay under %s, waiting for a service of that name\n", len(docs), args[0], registry.DocPath(cfg.URL(), args[0]+"/backends/"))
			}
			return nil
		}),
	}
	var output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the services in the registry",
		Args:  cobra.NoArgs,
		RunE: withClient(func(ctx context.Context, cfg etcdsource.Config, c *clientv3.Client, _ []string) error {
			docs, rev, err := etcdsource.List(ctx, c, cfg.Prefix)
			if err != nil {
				return fmt.Errorf("list %s: %w", cfg.URL(), err)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				type docJSON struct {
					Key         string `json:"key"`
					ModRevision int64  `json:"mod_revision"`
					Value       string `json:"value"`
				}
				js := struct {
					Revision int64     `json:"revision"`
					Services []docJSON `json:"services"`
				}{Revision: rev, Services: []docJSON{}}
				for _, d := range docs {
					js.Services = append(js.Services, docJSON{d.Key, d.ModRevision, string(d.Value)})
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(js)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tREVISION\tBYTES")
			for _, d := range docs {
				fmt.Fprintf(tw, "%s\t%d\t%d\n", d.Key, d.ModRevision, len(d.Value))
			}
			return tw.Flush()
		}),
	}
	list.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(put, get, del, list)
	return cmd
}

// checkAgainst validates the service file file (text data, to be written
// under key)
// as sockmesh check would with every document of the registry beside it,
// the document under the same key replaced. It refuses the file's own
// errors, what the whole set no longer fits (capacity), and a derived
// VIP of a service already there that the new file would take away (that
// service would move to another address on every host), and a service
// there that it would take off. A backends document for a service not
// served (yet) is written with a warning to warn: daemons hold it until
// the service comes.
func checkAgainst(source, file string, data []byte, svc *servicefile.Service, key string, docs []etcdsource.Doc, rg registry.Ranges, warn io.Writer) error {
	dir, err := os.MkdirTemp("", "sockmesh-registry-check-")
	if err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	defer os.RemoveAll(dir)
	paths := map[string]string{} // temp file -> what to call it
	for i, d := range docs {
		if d.Key == key {
			continue
		}
		p := filepath.Join(dir, fmt.Sprintf("doc%06d.yaml", i))
		if err := os.WriteFile(p, d.Value, 0o644); err != nil {
			return fmt.Errorf("check against the registry: %w", err)
		}
		paths[p] = registry.DocPath(source, d.Key)
	}
	before, err := registry.Check(registry.Options{Dir: dir, Ranges: rg})
	if err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	// Sorts after every other file: a clash is blamed on the new one.
	mine := filepath.Join(dir, "~new.yaml")
	if err := os.WriteFile(mine, data, 0o644); err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	paths[mine] = file
	after, err := registry.Check(registry.Options{Dir: dir, Ranges: rg})
	if err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	rename := func(msg string) string {
		for p, to := range paths {
			msg = strings.ReplaceAll(msg, p, to)
		}
		return strings.ReplaceAll(msg, dir, source)
	}
	var errs []string
	for _, e := range after.Errors {
		switch {
		case e.File == mine && svc.BackendsOnly && e.Field == "backends_for":
			fmt.Fprintf(warn, "warning: %s\n", rename(e.Error()))
		case e.File == mine || e.File == dir:
			errs = append(errs, rename(e.Error()))
		}
	}
	for _, was := range before.Services {
		if _, ok := after.Lookup(was.Name); ok {
			continue
		}
		why := ""
		for _, e := range after.Errors {
			if e.File == was.File {
				why += "; " + rename(e.Error())
			}
		}
		errs = append(errs, fmt.Sprintf("%s: would take service %q (%s) off every host%s", file, was.Name, rename(was.File), why))
	}
	known := map[string]bool{}
	for _, c := range before.Collisions {
		known[c.Name] = true
	}
	for _, c := range after.Collisions {
		if c.Name != key && !known[c.Name] {
			errs = append(errs, fmt.Sprintf("%s: vip: service %q would lose its VIP %s to this file and move on every host (%s): set another vip, or a name that sorts after it", file, c.Name, c.Wanted, c))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}
