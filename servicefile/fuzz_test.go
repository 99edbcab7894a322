package servicefile

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"sockmesh/lb"
)

// FuzzParse feeds the parser arbitrary bytes. It must never panic; what it
// accepts the datapath must accept too; what it refuses comes with errors
// that name the file.
func FuzzParse(f *testing.F) {
	paths, _ := filepath.Glob("../services.d/*.yaml")
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"name: web\nports: [80]\nbackends: [127.0.0.1:8080]\n",
		"name: dns\nports: [53/udp, 53/tcp]\nbackends: ['[fd00::1]:53']\n",
		"name: x\nvip: [198.18.0.1, 'fd6d:6573:6800::1']\nports: [{port: 443, name: https}]\nbackends: [{address: 10.0.0.1, weight: 3, ports: {https: 8443}}]\n",
		"name: x\nvip: 198.18.0.1\nports: [80, 81]\nbackends: [10.0.0.1:80]\nlocal_name: true\n",
		"name: x\nports: [{port: 443, name: https}, 53/udp]\nbackends: [10.0.0.1:8443, {address: 10.0.0.2, state: draining, ports: {https: 9443}}, {address: 10.0.0.3, state: down}]\n" +
			"health: {type: http, port: 8080, interval: 500ms, timeout: 200ms, rise: 1, fall: 2, path: /healthz, host: example, status: 200-299}\n" +
			"policy: maglev\nmaglev: {table: 251}\nclient: netns\naffinity: 10m\nclose_connections: true\n",
		"name: ns\nports: [53/udp]\nbackends: ['[fd00::1]:53']\nhealth: {type: dns, query: example.org, qtype: AAAA}\npolicy: round-robin\naffinity: 1h\n",
		"backends_for: web\nbackends: [10.0.0.1:8080, {address: 'fd00::2', weight: 2, state: draining}]\n",
		"a: &x 1\nb: *x\n",
		"name: [\n",
		"- 1\n",
		"",
	} {
		f.Add([]byte(s))
	}
	lim := lb.Limits{ServiceEntries: 1 << 20, Backends: 1 << 20, Counters: 1 << 20, LocalNames: 1 << 20}
	// Services a backends document is merged into: what Merge lets join
	// the datapath must accept.
	var bases []*Service
	for _, src := range []string{
		"name: b4\nvip: 198.18.0.1\nports: [80, 53/udp]\nbackends: [{address: 10.0.0.1, weight: 7}]\n",
		"name: b6\nvip: 'fd6d:6573:6800::1'\nports: [80, {port: 443, name: https}]\nbackends: []\nlocal_name: true\n",
	} {
		b, err := Parse("base.yaml", []byte(src))
		if err != nil {
			f.Fatal(err)
		}
		bases = append(bases, b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("f.yaml", data)
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %v is not a non-empty Errors", err)
			}
			for _, e := range es {
				if e.File != "f.yaml" || e.Msg == "" {
					t.Fatalf("error without file or message: %+v", e)
				}
			}
			return
		}
		if s.BackendsOnly {
			if s.Name == "" || len(s.Ports) > 0 || len(s.VIPs) > 0 || s.Health != nil {
				t.Fatalf("a backends document with more than a name and backends: %+v", s)
			}
			for _, base := range bases {
				merged, _ := Merge(base, []Contribution{{"f.yaml", s}})
				if err := lb.Validate(merged.LBServices(base.VIPs, nil), lim); err != nil {
					t.Fatalf("Merge let in what the datapath refuses: %v\ninput: %q", err, data)
				}
			}
			return
		}
		vips := s.VIPs
		if len(vips) == 0 {
			for _, fam := range s.Families {
				if fam == IPv4 {
					vips = append(vips, netip.MustParseAddr("198.18.0.1"))
				} else {
					vips = append(vips, netip.MustParseAddr("fd6d:6573:6800::1"))
				}
			}
		}
		if len(vips) == 0 {
			t.Fatalf("accepted a service with no VIP family: %+v", s)
		}
		if err := lb.Validate(s.LBServices(vips, nil), lim); err != nil {
			t.Fatalf("parser accepted what the datapath refuses: %v\ninput: %q", err, data)
		}
		// Every other backend failing its check.
		down := func(name string) bool { return nameAddr(name).As16()[15]%2 == 0 }
		if err := lb.Validate(s.LBServices(vips, down), lim); err != nil {
			t.Fatalf("parser accepted what the datapath refuses with backends down: %v\ninput: %q", err, data)
		}
		for _, tg := range s.HealthTargets() {
			if tg.Addr.Port() == 0 || tg.Check.Interval <= 0 || tg.Check.Timeout <= 0 || tg.Check.Timeout > tg.Check.Interval {
				t.Fatalf("accepted a check with no port or bad timing: %+v\ninput: %q", tg, data)
			}
		}
	})
}
