package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	put := &cobra.Command{
		Use:   "put FILE",
		Short: "Validate a service file against the registry and write it under its name",
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
			docs, _, err := etcdsource.List(ctx, c, cfg.Prefix)
			if err != nil {
				return fmt.Errorf("list %s: %w", cfg.URL(), err)
			}
			rg, err := ranges.ranges()
			if err != nil {
				return err
			}
			var expect int64
			for _, d := range docs {
				if d.Key == svc.Name {
					expect = d.ModRevision
				}
			}
			if err := checkAgainst(args[0], data, svc.Name, docs, rg); err != nil {
				return err
			}
			ok, err := etcdsource.Put(ctx, c, cfg.Prefix, svc.Name, data, expect)
			if err != nil {
				return fmt.Errorf("put %s: %w", svc.Name, err)
			}
			if !ok {
				return fmt.Errorf("put %s: someone changed it meanwhile: run put again", svc.Name)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "put %s\n", registry.DocPath(cfg.URL(), svc.Name))
			return nil
		}),
	}
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

// checkAgainst validates the service file file (text data, service name)
// as sockmesh check would with every document of the registry beside it,
// the document of the same name replaced: the errors it reports about the
// new file, with the file's own name.
func checkAgainst(file string, data []byte, name string, docs []etcdsource.Doc, rg registry.Ranges) error {
	dir, err := os.MkdirTemp("", "sockmesh-registry-check-")
	if err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	defer os.RemoveAll(dir)
	for i, d := range docs {
		if d.Key == name {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("doc%06d.yaml", i)), d.Value, 0o644); err != nil {
			return fmt.Errorf("check against the registry: %w", err)
		}
	}
	// Sorts after every other file: a clash is blamed on the new one.
	mine := filepath.Join(dir, "~new.yaml")
	if err := os.WriteFile(mine, data, 0o644); err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	snap, err := registry.Check(registry.Options{Dir: dir, Ranges: rg})
	if err != nil {
		return fmt.Errorf("check against the registry: %w", err)
	}
	var errs []string
	for _, e := range snap.Errors {
		if e.File != mine {
			continue // a problem of the registry's, not of this file
		}
		e2 := *e
		e2.File = file
		msg := e2.Error()
		msg = strings.ReplaceAll(msg, dir+"/", "registry: ")
		errs = append(errs, msg)
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}
