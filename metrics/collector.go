// Package metrics exports what sockmesh counts as Prometheus metrics: the
// datapath's per-service and per-backend counters, the state of the
// registry and the DNS stub's counters. Everything is read at scrape time
// from the functions in Sources; nothing runs in the background.
package metrics

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"sockmesh/dnsstub"
	"sockmesh/health"
	"sockmesh/lb"
	"sockmesh/registry"
)

const namespace = "sockmesh"

// Sources are what the collector reads at each scrape; nil fields are left
// out. Each function may be called concurrently by overlapping scrapes.
type Sources struct {
	// Datapath reads the datapath's counters, usually (*lb.Datapath).Stats.
	// An error fails the scrape (see Collect).
	Datapath func() ([]lb.ServiceStats, error)
	// Registry returns the live snapshot, usually
	// (*registry.Registry).Snapshot. It may return nil before the first
	// snapshot.
	Registry func() *registry.Snapshot
	// DNS reads the DNS stub's counters, usually (*dnsstub.Handler).Stats.
	DNS func() dnsstub.Stats
	// Health returns the health checks' results, usually
	// (*health.Monitor).Statuses.
	Health func() []health.Status
}

// collector is a prometheus.Collector over Sources.
type collector struct {
	src Sources

	serviceTranslations *prometheus.Desc
	serviceRefused      *prometheus.Desc
	backendTranslations *prometheus.Desc

	services          *prometheus.Desc
	servicesStale     *prometheus.Desc
	registryErrors    *prometheus.Desc
	lastApplyTime     *prometheus.Desc
	lastApplyDuration *prometheus.Desc

	dnsResponses        *prometheus.Desc
	dnsForwarded        *prometheus.Desc
	dnsUpstreamFailures *prometheus.Desc
	dnsDropped          *prometheus.Desc
	dnsCacheHits        *prometheus.Desc

	sourceStale    *prometheus.Desc
	sourceRevision *prometheus.Desc
	sourceServices *prometheus.Desc

	backendState        *prometheus.Desc
	healthState         *prometheus.Desc
	healthChecks        *prometheus.Desc
	healthSince         *prometheus.Desc
	healthCheckDuration *prometheus.Desc
}

var (
	serviceLabels = []string{"service", "vip", "port", "proto"}
	backendLabels = []string{"service", "vip", "port", "proto", "backend"}
)

// NewCollector returns a collector that reads src at each scrape.
func NewCollector(src Sources) prometheus.Collector {
	desc := func(subsystem, name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, subsystem, name), help, labels, nil)
	}
	return &collector{
		src: src,

		serviceTranslations: desc("service", "translations_total",
			"Connects and datagrams the datapath sent to a backend of the service key (VIP, port, protocol), summed over CPUs. "+
				"Resets when the service key is removed and re-created. service is the registry name, empty when unknown.",
			serviceLabels...),
		serviceRefused: desc("service", "refused_total",
			"Connects and datagrams the datapath refused (ECONNREFUSED) because the service key had no backends, summed over CPUs. "+
				"Resets when the service key is removed and re-created.",
			serviceLabels...),
		backendTranslations: desc("backend", "translations_total",
			"Connects and datagrams the datapath sent to this backend (ip:port) of the service key, summed over CPUs. "+
				"Resets when the backend or service key is removed and re-created.",
			backendLabels...),

		services: desc("", "services",
			"Services in the live registry snapshot, stale ones included."),
		servicesStale: desc("", "services_stale",
			"Services whose file now has errors and whose last good version is still served."),
		registryErrors: desc("registry", "errors",
			"Problems in the service files of the live registry snapshot (see sockmesh check)."),
		lastApplyTime: desc("registry", "last_apply_timestamp_seconds",
			"Unix time at which the datapath took the live registry snapshot."),
		lastApplyDuration: desc("registry", "last_apply_duration_seconds",
			"How long the datapath took to apply the live registry snapshot."),

		dnsResponses: desc("dns", "responses_total",
			"DNS answers the stub sent, by response code.",
			"rcode"),
		dnsForwarded: desc("dns", "forwarded_total",
			"DNS questions the stub forwarded to an upstream resolver."),
		dnsUpstreamFailures: desc("dns", "upstream_failures_total",
			"Forwarded DNS questions that no upstream resolver answered."),
		dnsDropped: desc("dns", "dropped_total",
			"DNS queries the stub left unanswered (responses, forwards beyond the limit)."),
		dnsCacheHits: desc("dns", "cache_hits_total",
			"DNS answers the stub sent from its packed-answer cache."),

		sourceStale: desc("registry", "source_stale",
			"1 while a registry source (an etcd prefix) cannot be reached and its last documents are served, 0 when current.",
			"source"),
		sourceRevision: desc("registry", "source_revision",
			"The source's revision (etcd's) the registry has caught up with.",
			"source"),
		sourceServices: desc("registry", "source_services",
			"Service documents the source holds.",
			"source"),

		backendState: desc("backend", "state",
			"1 for the state the backend is in (active, draining, down: the file's state, down when the health checks say so), 0 for the others. "+
				"backend is the backend as the file names it (address, and port when it has one).",
			"service", "backend", "state"),
		healthState: desc("backend", "health",
			"1 for what the health checks say of the backend (unknown before the first check, up, down), 0 for the others.",
			"service", "backend", "state"),
		healthChecks: desc("backend", "health_checks_total",
			"Health checks run against the backend since it was added, by result (pass, fail).",
			"service", "backend", "result"),
		healthSince: desc("backend", "health_since_timestamp_seconds",
			"Unix time at which the health checks' verdict on the backend last changed.",
			"service", "backend"),
		healthCheckDuration: desc("backend", "health_check_duration_seconds",
			"How long the last health check of the backend took.",
			"service", "backend"),
	}
}

// Describe sends the descriptors of every metric the collector can
// produce, whichever sources are set.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.serviceTranslations, c.serviceRefused, c.backendTranslations,
		c.services, c.servicesStale, c.registryErrors, c.lastApplyTime, c.lastApplyDuration,
		c.dnsResponses, c.dnsForwarded, c.dnsUpstreamFailures, c.dnsDropped, c.dnsCacheHits,
		c.sourceStale, c.sourceRevision, c.sourceServices,
		c.backendState, c.healthState, c.healthChecks, c.healthSince, c.healthCheckDuration,
	} {
		ch <- d
	}
}

// Collect reads the sources and sends their metrics. A failing Datapath
// read is sent as an invalid metric (prometheus.NewInvalidMetric), as the
// client library recommends: the registry's Gather then returns the error
// and the default promhttp handler fails the scrape with HTTP 500, so
// Prometheus reports the target down rather than silently missing
// counters.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var snap *registry.Snapshot
	if c.src.Registry != nil {
		snap = c.src.Registry()
	}
	if snap != nil {
		c.collectRegistry(ch, snap)
	}
	if c.src.Datapath != nil {
		c.collectDatapath(ch, snap)
	}
	if c.src.DNS != nil {
		c.collectDNS(ch, c.src.DNS())
	}
	if c.src.Health != nil {
		c.collectHealth(ch, c.src.Health())
	}
}

func (c *collector) collectHealth(ch chan<- prometheus.Metric, sts []health.Status) {
	for _, st := range sts {
		name, be := st.Service, st.Backend
		for _, s := range []health.State{health.Unknown, health.Up, health.Down} {
			send(ch, c.healthState, prometheus.GaugeValue, oneIf(st.State == s), name, be, s.String())
		}
		send(ch, c.healthChecks, prometheus.CounterValue, float64(st.Passes), name, be, "pass")
		send(ch, c.healthChecks, prometheus.CounterValue, float64(st.Failures), name, be, "fail")
		send(ch, c.healthSince, prometheus.GaugeValue, float64(st.Since.UnixNano())/1e9, name, be)
		send(ch, c.healthCheckDuration, prometheus.GaugeValue, st.LastDuration.Seconds(), name, be)
	}
}

func oneIf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) collectRegistry(ch chan<- prometheus.Metric, snap *registry.Snapshot) {
	stale := 0
	for _, sv := range snap.Services {
		if sv.Stale {
			stale++
		}
	}
	send(ch, c.services, prometheus.GaugeValue, float64(len(snap.Services)))
	send(ch, c.servicesStale, prometheus.GaugeValue, float64(stale))
	send(ch, c.registryErrors, prometheus.GaugeValue, float64(len(snap.Errors)))
	for _, s := range snap.Sources {
		send(ch, c.sourceStale, prometheus.GaugeValue, oneIf(s.Stale), s.Name)
		send(ch, c.sourceRevision, prometheus.GaugeValue, float64(s.Revision), s.Name)
		send(ch, c.sourceServices, prometheus.GaugeValue, float64(s.Docs), s.Name)
	}
	for _, sv := range snap.Services {
		for _, b := range sv.Backends {
			state := sv.BackendState(b)
			for _, s := range []lb.BackendState{lb.Active, lb.Draining, lb.Down} {
				send(ch, c.backendState, prometheus.GaugeValue, oneIf(state == s), sv.Name, b.Name(), s.String())
			}
		}
	}
	// A snapshot that was only checked has no apply to report.
	if !snap.Applied.IsZero() {
		send(ch, c.lastApplyTime, prometheus.GaugeValue, float64(snap.Applied.UnixNano())/1e9)
		send(ch, c.lastApplyDuration, prometheus.GaugeValue, snap.ApplyTime.Seconds())
	}
}

func (c *collector) collectDatapath(ch chan<- prometheus.Metric, snap *registry.Snapshot) {
	stats, err := c.src.Datapath()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.serviceTranslations, fmt.Errorf("read datapath stats: %w", err))
		return
	}
	names := serviceNames(snap)
	for _, st := range stats {
		k := st.Key
		name := names[k.Normalize()]
		vip, port, proto := k.VIP.String(), strconv.Itoa(int(k.Port)), k.Proto.String()
		send(ch, c.serviceTranslations, prometheus.CounterValue, float64(st.Translations), name, vip, port, proto)
		send(ch, c.serviceRefused, prometheus.CounterValue, float64(st.Refused), name, vip, port, proto)
		for _, b := range st.Backends {
			send(ch, c.backendTranslations, prometheus.CounterValue, float64(b.Translations), name, vip, port, proto, b.Addr.String())
		}
	}
}

func (c *collector) collectDNS(ch chan<- prometheus.Metric, st dnsstub.Stats) {
	for rcode, n := range st.Rcodes {
		send(ch, c.dnsResponses, prometheus.CounterValue, float64(n), rcode)
	}
	send(ch, c.dnsForwarded, prometheus.CounterValue, float64(st.Forwarded))
	send(ch, c.dnsUpstreamFailures, prometheus.CounterValue, float64(st.UpstreamFailures))
	send(ch, c.dnsDropped, prometheus.CounterValue, float64(st.Dropped))
	send(ch, c.dnsCacheHits, prometheus.CounterValue, float64(st.CacheHits))
}

// serviceNames maps each datapath service key of the snapshot to the name
// of the service it expands from.
func serviceNames(snap *registry.Snapshot) map[lb.ServiceKey]string {
	if snap == nil {
		return nil
	}
	names := make(map[lb.ServiceKey]string)
	for _, sv := range snap.Services {
		for _, ls := range sv.LBServices(sv.VIPs, nil) {
			names[ls.Key.Normalize()] = sv.Name
		}
	}
	return names
}

// normalize unmaps a v4-mapped VIP, as the datapath does, so keys from
// the registry and the datapath compare equal.
// send builds a const metric and sends it, or sends the error as an
// invalid metric should the label values be unusable.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, fmt.Errorf("build metric: %w", err))
	}
	ch <- m
}
