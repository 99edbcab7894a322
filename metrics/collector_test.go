package metrics

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"sockmesh/dnsstub"
	"sockmesh/health"
	"sockmesh/lb"
	"sockmesh/registry"
	"sockmesh/servicefile"
)

var (
	webVIP = netip.MustParseAddr("10.96.0.1")
	dnsVIP = netip.MustParseAddr("10.96.0.2")
	dnsV6  = netip.MustParseAddr("fd00:96::2")
)

// snapshot has two services: web (tcp/80 on one VIP) and dns (udp/53 on
// an IPv4 and an IPv6 VIP, stale), each with two backends, and one error.
func snapshot() *registry.Snapshot {
	return &registry.Snapshot{
		Generation: 3,
		Services: []registry.Service{
			{
				Service: &servicefile.Service{
					Name:  "dns",
					Ports: []servicefile.Port{{Number: 53, Proto: lb.UDP}},
					Backends: []servicefile.Backend{
						{Addr: netip.MustParseAddr("10.0.1.1"), Port: 5353},
						{Addr: netip.MustParseAddr("10.0.1.2"), Port: 5353},
					},
				},
				File:  "services.d/dns.yaml",
				VIPs:  []netip.Addr{dnsVIP, dnsV6},
				Stale: true,
			},
			{
				Service: &servicefile.Service{
					Name:  "web",
					Ports: []servicefile.Port{{Number: 80, Proto: lb.TCP}},
					Backends: []servicefile.Backend{
						{Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080},
						{Addr: netip.MustParseAddr("10.0.0.2"), Port: 8080, State: lb.Draining},
					},
				},
				File:       "services.d/web.yaml",
				VIPs:       []netip.Addr{webVIP},
				HealthDown: []string{"10.0.0.1:8080"},
			},
		},
		Errors:    []*servicefile.Error{{File: "services.d/dns.yaml", Pos: servicefile.Pos{Line: 2}, Field: "ports", Msg: "bad"}},
		Applied:   time.Unix(1700000000, 500_000_000),
		ApplyTime: 1500 * time.Microsecond,
	}
}

func stats() []lb.ServiceStats {
	return []lb.ServiceStats{
		{
			Key:          lb.ServiceKey{VIP: webVIP, Port: 80, Proto: lb.TCP},
			Translations: 30, Refused: 0,
			Backends: []lb.BackendStats{
				{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Translations: 10},
				{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Translations: 20},
			},
		},
		{
			Key:          lb.ServiceKey{VIP: dnsVIP, Port: 53, Proto: lb.UDP},
			Translations: 7, Refused: 2,
			Backends: []lb.BackendStats{
				{Addr: netip.MustParseAddrPort("10.0.1.1:5353"), Translations: 3},
				{Addr: netip.MustParseAddrPort("10.0.1.2:5353"), Translations: 4},
			},
		},
	}
}

func dnsStats() dnsstub.Stats {
	return dnsstub.Stats{
		Rcodes:           map[string]uint64{"NOERROR": 12, "NXDOMAIN": 3, "SERVFAIL": 1},
		Forwarded:        5,
		UpstreamFailures: 1,
		Dropped:          2,
		CacheHits:        9,
	}
}

// fixed are sources that return the fixtures above.
func fixed() Sources {
	return Sources{
		Datapath: func() ([]lb.ServiceStats, error) { return stats(), nil },
		Registry: snapshot,
		DNS:      dnsStats,
	}
}

const (
	helpTranslations = `# HELP sockmesh_service_translations_total Connects and datagrams the datapath sent to a backend of the service key (VIP, port, protocol), summed over CPUs. Resets when the service key is removed and re-created. service is the registry name, empty when unknown.
# TYPE sockmesh_service_translations_total counter
`
	helpRefused = `# HELP sockmesh_service_refused_total Connects and datagrams the datapath refused (ECONNREFUSED) because the service key had no backends, summed over CPUs. Resets when the service key is removed and re-created.
# TYPE sockmesh_service_refused_total counter
`
	helpBackend = `# HELP sockmesh_backend_translations_total Connects and datagrams the datapath sent to this backend (ip:port) of the service key, summed over CPUs. Resets when the backend or service key is removed and re-created.
# TYPE sockmesh_backend_translations_total counter
`
)

func compare(t *testing.T, src Sources, want string, names ...string) {
	t.Helper()
	if err := testutil.CollectAndCompare(NewCollector(src), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestServiceLabels(t *testing.T) {
	compare(t, fixed(), helpTranslations+`sockmesh_service_translations_total{port="53",proto="udp",service="dns",vip="10.96.0.2"} 7
sockmesh_service_translations_total{port="80",proto="tcp",service="web",vip="10.96.0.1"} 30
`+helpRefused+`sockmesh_service_refused_total{port="53",proto="udp",service="dns",vip="10.96.0.2"} 2
sockmesh_service_refused_total{port="80",proto="tcp",service="web",vip="10.96.0.1"} 0
`+helpBackend+`sockmesh_backend_translations_total{backend="10.0.0.1:8080",port="80",proto="tcp",service="web",vip="10.96.0.1"} 10
sockmesh_backend_translations_total{backend="10.0.0.2:8080",port="80",proto="tcp",service="web",vip="10.96.0.1"} 20
sockmesh_backend_translations_total{backend="10.0.1.1:5353",port="53",proto="udp",service="dns",vip="10.96.0.2"} 3
sockmesh_backend_translations_total{backend="10.0.1.2:5353",port="53",proto="udp",service="dns",vip="10.96.0.2"} 4
`, "sockmesh_service_translations_total", "sockmesh_service_refused_total", "sockmesh_backend_translations_total")
}

// TestUnknownService: a datapath key that no service of the snapshot
// expands to (a snapshot not yet applied, or none at all) gets service="".
func TestUnknownService(t *testing.T) {
	v6 := netip.MustParseAddr("fd00:96::9")
	src := Sources{
		Datapath: func() ([]lb.ServiceStats, error) {
			return []lb.ServiceStats{
				{Key: lb.ServiceKey{VIP: webVIP, Port: 80, Proto: lb.TCP}, Translations: 1},
				// Same VIP and port as web, other protocol.
				{Key: lb.ServiceKey{VIP: webVIP, Port: 80, Proto: lb.UDP}, Translations: 2},
				{Key: lb.ServiceKey{VIP: v6, Port: 443, Proto: lb.TCP}, Translations: 3, Refused: 4,
					Backends: []lb.BackendStats{{Addr: netip.MustParseAddrPort("[fd00::1]:8443"), Translations: 3}}},
			}, nil
		},
		Registry: snapshot,
	}
	compare(t, src, helpTranslations+`sockmesh_service_translations_total{port="80",proto="tcp",service="web",vip="10.96.0.1"} 1
sockmesh_service_translations_total{port="80",proto="udp",service="",vip="10.96.0.1"} 2
sockmesh_service_translations_total{port="443",proto="tcp",service="",vip="fd00:96::9"} 3
`+helpRefused+`sockmesh_service_refused_total{port="80",proto="tcp",service="web",vip="10.96.0.1"} 0
sockmesh_service_refused_total{port="80",proto="udp",service="",vip="10.96.0.1"} 0
sockmesh_service_refused_total{port="443",proto="tcp",service="",vip="fd00:96::9"} 4
`+helpBackend+`sockmesh_backend_translations_total{backend="[fd00::1]:8443",port="443",proto="tcp",service="",vip="fd00:96::9"} 3
`, "sockmesh_service_translations_total", "sockmesh_service_refused_total", "sockmesh_backend_translations_total")

	// With no snapshot at all every name is unknown.
	src.Registry = func() *registry.Snapshot { return nil }
	compare(t, src, helpTranslations+`sockmesh_service_translations_total{port="80",proto="tcp",service="",vip="10.96.0.1"} 1
sockmesh_service_translations_total{port="80",proto="udp",service="",vip="10.96.0.1"} 2
sockmesh_service_translations_total{port="443",proto="tcp",service="",vip="fd00:96::9"} 3
`, "sockmesh_service_translations_total")
}

func TestRegistry(t *testing.T) {
	const want = `# HELP sockmesh_services Services in the live registry snapshot, stale ones included.
# TYPE sockmesh_services gauge
sockmesh_services 2
# HELP sockmesh_services_stale Services whose file now has errors and whose last good version is still served.
# TYPE sockmesh_services_stale gauge
sockmesh_services_stale 1
# HELP sockmesh_registry_errors Problems in the service files of the live registry snapshot (see sockmesh check).
# TYPE sockmesh_registry_errors gauge
sockmesh_registry_errors 1
`
	const applied = `# HELP sockmesh_registry_last_apply_timestamp_seconds Unix time at which the datapath took the live registry snapshot.
# TYPE sockmesh_registry_last_apply_timestamp_seconds gauge
sockmesh_registry_last_apply_timestamp_seconds 1.7000000005e+09
# HELP sockmesh_registry_last_apply_duration_seconds How long the datapath took to apply the live registry snapshot.
# TYPE sockmesh_registry_last_apply_duration_seconds gauge
sockmesh_registry_last_apply_duration_seconds 0.0015
`
	names := []string{"sockmesh_services", "sockmesh_services_stale", "sockmesh_registry_errors", "sockmesh_registry_last_apply_timestamp_seconds", "sockmesh_registry_last_apply_duration_seconds"}
	compare(t, Sources{Registry: snapshot}, want+applied, names...)

	// A snapshot the datapath has not taken reports no apply.
	compare(t, Sources{Registry: func() *registry.Snapshot {
		s := snapshot()
		s.Applied, s.ApplyTime = time.Time{}, 0
		return s
	}}, want, names...)

	// Backend states: the file's, down where the health checks say so.
	compare(t, Sources{Registry: snapshot}, `# HELP sockmesh_backend_state 1 for the state the backend is in (active, draining, down: the file's state, down when the health checks say so), 0 for the others. backend is the backend as the file names it (address, and port when it has one).
# TYPE sockmesh_backend_state gauge
sockmesh_backend_state{backend="10.0.0.1:8080",service="web",state="active"} 0
sockmesh_backend_state{backend="10.0.0.1:8080",service="web",state="down"} 1
sockmesh_backend_state{backend="10.0.0.1:8080",service="web",state="draining"} 0
sockmesh_backend_state{backend="10.0.0.2:8080",service="web",state="active"} 0
sockmesh_backend_state{backend="10.0.0.2:8080",service="web",state="down"} 0
sockmesh_backend_state{backend="10.0.0.2:8080",service="web",state="draining"} 1
sockmesh_backend_state{backend="10.0.1.1:5353",service="dns",state="active"} 1
sockmesh_backend_state{backend="10.0.1.1:5353",service="dns",state="down"} 0
sockmesh_backend_state{backend="10.0.1.1:5353",service="dns",state="draining"} 0
sockmesh_backend_state{backend="10.0.1.2:5353",service="dns",state="active"} 1
sockmesh_backend_state{backend="10.0.1.2:5353",service="dns",state="down"} 0
sockmesh_backend_state{backend="10.0.1.2:5353",service="dns",state="draining"} 0
`, "sockmesh_backend_state")
}

func TestDNS(t *testing.T) {
	compare(t, Sources{DNS: dnsStats}, `# HELP sockmesh_dns_responses_total DNS answers the stub sent, by response code.
# TYPE sockmesh_dns_responses_total counter
sockmesh_dns_responses_total{rcode="NOERROR"} 12
sockmesh_dns_responses_total{rcode="NXDOMAIN"} 3
sockmesh_dns_responses_total{rcode="SERVFAIL"} 1
# HELP sockmesh_dns_forwarded_total DNS questions the stub forwarded to an upstream resolver.
# TYPE sockmesh_dns_forwarded_total counter
sockmesh_dns_forwarded_total 5
# HELP sockmesh_dns_upstream_failures_total Forwarded DNS questions that no upstream resolver answered.
# TYPE sockmesh_dns_upstream_failures_total counter
sockmesh_dns_upstream_failures_total 1
# HELP sockmesh_dns_dropped_total DNS queries the stub left unanswered (responses, forwards beyond the limit).
# TYPE sockmesh_dns_dropped_total counter
sockmesh_dns_dropped_total 2
# HELP sockmesh_dns_cache_hits_total DNS answers the stub sent from its packed-answer cache.
# TYPE sockmesh_dns_cache_hits_total counter
sockmesh_dns_cache_hits_total 9
`)

	// A handler that has answered nothing yet has no rcode series but
	// still reports its other counters.
	compare(t, Sources{DNS: func() dnsstub.Stats { return dnsstub.Stats{Rcodes: map[string]uint64{}} }}, `# HELP sockmesh_dns_forwarded_total DNS questions the stub forwarded to an upstream resolver.
# TYPE sockmesh_dns_forwarded_total counter
sockmesh_dns_forwarded_total 0
`, "sockmesh_dns_responses_total", "sockmesh_dns_forwarded_total")
}

func TestNilSources(t *testing.T) {
	if n := testutil.CollectAndCount(NewCollector(Sources{})); n != 0 {
		t.Errorf("no sources: %d metrics, want 0", n)
	}
	for _, tc := range []struct {
		name   string
		src    Sources
		prefix string
		want   int
	}{
		// 2 services + 2 refused + 4 backends.
		{"datapath", Sources{Datapath: fixed().Datapath}, "sockmesh_", 8},
		// 5 registry gauges + 4 backends x 3 states.
		{"registry", Sources{Registry: snapshot}, "sockmesh_", 17},
		// 3 states + 2 results + since + duration.
		{"health", Sources{Health: func() []health.Status {
			return []health.Status{{Target: health.Target{Service: "web", Backend: "10.0.0.1:8080"}, State: health.Down, Passes: 3, Failures: 2}}
		}}, "sockmesh_backend_", 7},
		{"nil snapshot", Sources{Registry: func() *registry.Snapshot { return nil }}, "sockmesh_", 0},
		// 3 rcodes + 4 counters.
		{"dns", Sources{DNS: dnsStats}, "sockmesh_dns_", 7},
	} {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewCollector(tc.src))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		n := 0
		for _, mf := range mfs {
			if !strings.HasPrefix(mf.GetName(), tc.prefix) {
				t.Errorf("%s: unexpected %s", tc.name, mf.GetName())
			}
			n += len(mf.GetMetric())
		}
		if n != tc.want {
			t.Errorf("%s: %d metrics, want %d", tc.name, n, tc.want)
		}
	}
}

// TestDatapathError: a failing read fails the gather with the wrapped
// error (so promhttp answers 500) while the other sources still collect.
func TestDatapathError(t *testing.T) {
	boom := errors.New("boom")
	src := fixed()
	src.Datapath = func() ([]lb.ServiceStats, error) { return nil, boom }
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src))
	mfs, err := reg.Gather()
	if !errors.Is(err, boom) {
		t.Fatalf("gather: %v, want an error wrapping %v", err, boom)
	}
	if !strings.Contains(err.Error(), "read datapath stats: boom") {
		t.Errorf("gather: %v, want it to say read datapath stats", err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{"sockmesh_services", "sockmesh_dns_forwarded_total"} {
		if !got[name] {
			t.Errorf("%s missing after a datapath error", name)
		}
	}
	if got["sockmesh_service_translations_total"] {
		t.Error("sockmesh_service_translations_total reported despite the datapath error")
	}
}

func TestLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(NewCollector(fixed()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
