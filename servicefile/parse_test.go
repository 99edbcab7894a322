package servicefile

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sockmesh/health"
	"sockmesh/lb"
)

const file = "services.d/web.yaml"

func TestParseSmallest(t *testing.T) {
	src := []byte("name: web\nports: [80]\nbackends: [127.0.0.1:8080]\n")
	s, err := Parse(file, src)
	if err != nil {
		t.Fatal(err)
	}
	src[0] = '#' // the service keeps its own copy of the text
	want := &Service{
		Name:     "web",
		Families: []Family{IPv4, IPv6},
		Ports:    []Port{{Number: 80, Proto: lb.TCP, Pos: Pos{2, 9}}},
		Backends: []Backend{{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Weight: 1, Pos: Pos{3, 12}}},
		NamePos:  Pos{1, 7},
		Source:   []byte("name: web\nports: [80]\nbackends: [127.0.0.1:8080]\n"),
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("got  %+v\nwant %+v", s, want)
	}
}

func TestParseFull(t *testing.T) {
	in := `# a service with every field
name: api
vip: [198.18.7.7, "fd6d:6573:6800::7"]
ports:
  - port: 443
    name: https
  - 80
  - {port: 53, protocol: tcp, name: dns}
backends:
  - 10.0.0.1:8443
  - address: 10.0.0.2
    weight: 3
    ports: {https: 9443, "80": 9080, 53/tcp: 5353}
local_name: false
`
	s, err := Parse(file, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "api" || len(s.VIPs) != 2 || !reflect.DeepEqual(s.Families, []Family{IPv4, IPv6}) {
		t.Fatalf("name/vips/families: %+v", s)
	}
	if got := len(s.Ports); got != 3 || s.Ports[0].Name != "https" || s.Ports[2].Proto != lb.TCP {
		t.Fatalf("ports: %+v", s.Ports)
	}
	// Targets: the first backend has one port for all, the second maps
	// each service port.
	targets := map[string][]uint16{}
	for _, p := range s.Ports {
		for _, b := range s.Backends {
			targets[p.String()] = append(targets[p.String()], b.TargetPort(p))
		}
	}
	want := map[string][]uint16{"443/tcp": {8443, 9443}, "80/tcp": {8443, 9080}, "53/tcp": {8443, 5353}}
	if !reflect.DeepEqual(targets, want) {
		t.Fatalf("targets %v, want %v", targets, want)
	}
	if s.Backends[1].Weight != 3 {
		t.Fatalf("weight %d", s.Backends[1].Weight)
	}
	ls := s.LBServices(s.VIPs, nil)
	if len(ls) != 6 {
		t.Fatalf("%d datapath services, want 2 VIPs x 3 ports", len(ls))
	}
	if err := lb.Validate(ls, lb.Limits{ServiceEntries: 100, Backends: 100, Counters: 100, LocalNames: 100}); err != nil {
		t.Fatalf("the datapath refuses what the parser accepted: %v", err)
	}
}

func TestParseDerivedFamilies(t *testing.T) {
	for _, tc := range []struct {
		ports, backends string
		want            []Family
	}{
		{"[80]", "[10.0.0.1:80]", []Family{IPv4, IPv6}},
		{"[53/udp]", "[10.0.0.1:53]", []Family{IPv4}},
		{"[53/udp]", "['[fd00::1]:53']", []Family{IPv6}},
		{"[80]", "['[fd00::1]:80', 10.0.0.1:80]", []Family{IPv6}},
		{"[80]", "[]", []Family{IPv4, IPv6}},
	} {
		s, err := Parse(file, []byte("name: x\nports: "+tc.ports+"\nbackends: "+tc.backends+"\n"))
		if err != nil {
			t.Fatalf("%s %s: %v", tc.ports, tc.backends, err)
		}
		if !reflect.DeepEqual(s.Families, tc.want) {
			t.Errorf("ports %s backends %s: families %v, want %v", tc.ports, tc.backends, s.Families, tc.want)
		}
	}
}

// TestParseErrors gives every validation error with its full message: the
// file, line and column, the field, what is wrong and what is allowed.
func TestParseErrors(t *testing.T) {
	const base = "name: web\nports: [80]\nbackends: [127.0.0.1:8080]\n"
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"empty", "", []string{
			`services.d/web.yaml: file is empty: a service needs at least name, ports and backends`}},
		{"comments only", "# nothing\n", []string{
			`services.d/web.yaml: file is empty: a service needs at least name, ports and backends`}},
		{"not yaml", "name: [\n", []string{
			`services.d/web.yaml:1: not valid YAML: did not find expected node content`}},
		{"tabs", "name: web\n\tports: [80]\n", []string{
			`services.d/web.yaml:2: not valid YAML: found a tab character that violates indentation`}},
		{"list", "- web\n", []string{
			`services.d/web.yaml:1:1: want a mapping of fields (name, vip, ports, backends, local_name, health, policy, maglev, client, affinity, close_connections), found a list`}},
		{"two documents", base + "---\n" + base, []string{
			`services.d/web.yaml:4:1: a second YAML document: one service per file`}},
		{"alias", "name: &n web\nports: [80]\nbackends: [*n]\n", []string{
			`services.d/web.yaml:3:12: YAML aliases (*n) are not supported: write the value out`}},
		{"unknown field with typo", base + "backend: 10.0.0.1:80\n", []string{
			`services.d/web.yaml:4:1: unknown field "backend" (allowed: name, vip, ports, backends, local_name, health, policy, maglev, client, affinity, close_connections); did you mean "backends"?`}},
		{"unknown field", base + "balance: maglev\n", []string{
			`services.d/web.yaml:4:1: unknown field "balance" (allowed: name, vip, ports, backends, local_name, health, policy, maglev, client, affinity, close_connections)`}},
		{"field twice", base + "name: api\n", []string{
			`services.d/web.yaml:4:1: name: set twice (first on line 1)`}},
		{"missing fields", "name: web\n", []string{
			`services.d/web.yaml:1:1: ports: missing: every service needs name, ports and backends (backends: [] refuses connections)`,
			`services.d/web.yaml:1:1: backends: missing: every service needs name, ports and backends (backends: [] refuses connections)`}},
		{"name upper case", "name: Web\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:1:7: name: "Web" is not a DNS label: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'`}},
		{"name dot", "name: web.api\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:1:7: name: "web.api" is not a DNS label: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'`}},
		{"name too long", "name: " + strings.Repeat("a", 64) + "\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:1:7: name: "` + strings.Repeat("a", 64) + `" is not a DNS label: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'`}},
		{"name list", "name: [a]\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:1:7: name: want a single value, found a list`}},
		{"port range", "name: web\nports: [0, 65536, -1, http]\nbackends: []\n", []string{
			`services.d/web.yaml:2:9: ports[0]: "0" is not a valid port: want a whole number from 1 to 65535`,
			`services.d/web.yaml:2:12: ports[1]: "65536" is not a valid port: want a whole number from 1 to 65535`,
			`services.d/web.yaml:2:19: ports[2]: "-1" is not a valid port: want a whole number from 1 to 65535`,
			`services.d/web.yaml:2:23: ports[3]: "http" is not a valid port: want a whole number from 1 to 65535`}},
		{"port protocol", "name: web\nports: [53/sctp, {port: 5, protocol: icmp}]\nbackends: []\n", []string{
			`services.d/web.yaml:2:9: ports[0]: "53/sctp": protocol "sctp" is not tcp or udp`,
			`services.d/web.yaml:2:38: ports[1].protocol: "icmp" is not a protocol: want tcp or udp`}},
		{"port twice", "name: web\nports: [80, 80/tcp]\nbackends: []\n", []string{
			`services.d/web.yaml:2:13: ports[1]: 80/tcp is listed twice (first on line 2)`}},
		{"no ports", "name: web\nports: []\nbackends: []\n", []string{
			`services.d/web.yaml:2:8: ports: no ports: list at least one, e.g. [80] or [53/udp]`}},
		{"port name", "name: web\nports: [{port: 80, name: HTTP}, {port: 81, name: '8080'}, {port: 82, name: a-very-long-port-name}]\nbackends: []\n", []string{
			`services.d/web.yaml:2:26: ports[0].name: "HTTP" is not a port name: use 1-15 lower-case letters, digits and single '-', with at least one letter (RFC 6335), e.g. http`,
			`services.d/web.yaml:2:50: ports[1].name: "8080" is not a port name: use 1-15 lower-case letters, digits and single '-', with at least one letter (RFC 6335), e.g. http`,
			`services.d/web.yaml:2:76: ports[2].name: "a-very-long-port-name" is not a port name: use 1-15 lower-case letters, digits and single '-', with at least one letter (RFC 6335), e.g. http`}},
		{"port name twice", "name: web\nports: [{port: 80, name: web}, {port: 81, name: web}]\nbackends: []\n", []string{
			`services.d/web.yaml:2:32: ports[1].name: port name "web" is used twice (first on line 2)`}},
		{"port missing number", "name: web\nports: [{name: web}]\nbackends: []\n", []string{
			`services.d/web.yaml:2:9: ports[0].port: missing: a port entry needs a port number`}},
		{"bad address", "name: web\nports: [80]\nbackends: [10.0.0.300:80, db.example:5432, '10.0.0.1:0', 0.0.0.0:80, 224.0.0.1:80, 'fe80::1%eth0']\n", []string{
			`services.d/web.yaml:3:12: backends[0]: "10.0.0.300:80" is not an IP address with optional port (want e.g. 10.0.0.1:8080, [fd00::1]:8080, or 10.0.0.1 to use the service port; host names are not resolved)`,
			`services.d/web.yaml:3:27: backends[1]: "db.example:5432" is not an IP address with optional port (want e.g. 10.0.0.1:8080, [fd00::1]:8080, or 10.0.0.1 to use the service port; host names are not resolved)`,
			`services.d/web.yaml:3:44: backends[2]: 10.0.0.1:0: port 0 is not allowed (1-65535)`,
			`services.d/web.yaml:3:58: backends[3]: 0.0.0.0:80 cannot be a backend: want a unicast address`,
			`services.d/web.yaml:3:70: backends[4]: 224.0.0.1:80 cannot be a backend: want a unicast address`,
			`services.d/web.yaml:3:84: backends[5]: fe80::1%eth0: addresses with a zone are not allowed`}},
		{"backends null", "name: web\nports: [80]\nbackends:\n", []string{
			`services.d/web.yaml:3:10: backends: empty: list backends, or write backends: [] to refuse connections`}},
		{"weight", "name: web\nports: [80]\nbackends: [{address: 10.0.0.1:80, weight: 0}, {address: 10.0.0.2:80, weight: 70000}, {address: 10.0.0.3:80, weight: 1.5}]\n", []string{
			`services.d/web.yaml:3:43: backends[0].weight: "0" is not a valid weight: want a whole number from 1 to 65535`,
			`services.d/web.yaml:3:78: backends[1].weight: "70000" is not a valid weight: want a whole number from 1 to 65535`,
			`services.d/web.yaml:3:117: backends[2].weight: want a weight (1-65535), found "1.5"`}},
		{"backend unknown field", "name: web\nports: [80]\nbackends: [{address: 10.0.0.1:80, wieght: 2}]\n", []string{
			`services.d/web.yaml:3:35: backends[0]: unknown field "wieght" (allowed: address, weight, ports, state); did you mean "weight"?`}},
		{"backend missing address", "name: web\nports: [80]\nbackends: [{weight: 2}]\n", []string{
			`services.d/web.yaml:3:12: backends[0].address: missing: a backend entry needs an address such as 10.0.0.1:8080`}},
		{"backend twice", "name: web\nports: [80]\nbackends: [10.0.0.1:80, 10.0.0.1:80]\n", []string{
			`services.d/web.yaml:3:25: backends[1]: 10.0.0.1:80 is listed twice for port 80/tcp (also backends[0]): give one entry a weight instead`}},
		{"backend twice via default port", "name: web\nports: [80]\nbackends: [10.0.0.1, 10.0.0.1:80]\n", []string{
			`services.d/web.yaml:3:22: backends[1]: 10.0.0.1:80 is listed twice for port 80/tcp (also backends[0]): give one entry a weight instead`}},
		{"backend port map", "name: web\nports: [{port: 443, name: https}]\nbackends: [{address: 10.0.0.1, ports: {http: 80, https: 0}}]\n", []string{
			`services.d/web.yaml:3:40: backends[0].ports: "http" is not one of the service's ports (by name, number or number/protocol)`,
			`services.d/web.yaml:3:57: backends[0].ports.https: "0" is not a valid port: want a whole number from 1 to 65535`}},
		{"too many slots", "name: web\nports: [80]\nbackends: [{address: 10.0.0.1:80, weight: 65535}, {address: 10.0.0.2:80, weight: 65534}]\n", []string{
			`services.d/web.yaml:3:11: backends: weights need 131069 slots after dividing by their common divisor, at most 65535: lower the weights`}},
		{"vip bad", "name: web\nvip: [198.18.0.300]\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:2:7: vip[0]: "198.18.0.300" is not an IP address (want e.g. 198.18.0.10 or fd6d:6573:6800::10)`}},
		{"vip mapped", "name: web\nvip: '::ffff:198.18.0.1'\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:2:6: vip: ::ffff:198.18.0.1: write IPv4 VIPs in dotted form (198.18.0.1)`}},
		{"vip unspecified", "name: web\nvip: 0.0.0.0\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:2:6: vip: 0.0.0.0 cannot be a VIP: want a unicast address`}},
		{"vip two of a family", "name: web\nvip: [198.18.0.1, 198.18.0.2]\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:2:19: vip[1]: a second IPv4 VIP (first on line 2): a service has at most one IPv4 and one IPv6 VIP`}},
		{"vip empty list", "name: web\nvip: []\nports: [80]\nbackends: []\n", []string{
			`services.d/web.yaml:2:6: vip: empty list: leave vip out to derive addresses from the name`}},
		{"v4 vip v6 backend", "name: web\nvip: 198.18.0.1\nports: [80]\nbackends: ['[fd00::1]:80']\n", []string{
			`services.d/web.yaml:4:12: backends[0]: IPv6 backend fd00::1 cannot serve IPv4 VIP 198.18.0.1 (line 2): an IPv4 socket cannot be sent to IPv6; add an IPv6 vip, or use IPv4 backends`}},
		{"v6 udp vip v4 backend", "name: web\nvip: 'fd6d:6573:6800::1'\nports: [53/udp]\nbackends: [10.0.0.1:53]\n", []string{
			`services.d/web.yaml:4:12: backends[0]: IPv4 backend 10.0.0.1 cannot serve the UDP ports of IPv6 VIP fd6d:6573:6800::1 (line 2): the kernel cannot redirect unconnected IPv6 datagrams to IPv4; use an IPv4 vip, or IPv6 backends`}},
		{"mixed families udp", "name: web\nports: [53/udp]\nbackends: [10.0.0.1:53, '[fd00::1]:53']\n", []string{
			`services.d/web.yaml:3:1: backends: IPv4 and IPv6 backends behind UDP ports: no VIP can reach both (IPv4 VIPs cannot reach IPv6 backends; IPv6 UDP cannot be redirected to IPv4); split the service in two, one per family`}},
		{"local_name two vips", "name: web\nports: [80]\nbackends: [10.0.0.1:80]\nlocal_name: true\n", []string{
			`services.d/web.yaml:4:13: local_name: needs exactly one VIP to report, but the service has an IPv4 and an IPv6 one: set vip: to a single address`}},
		{"local_name shared backend port", "name: web\nvip: 198.18.0.1\nports: [80, 81]\nbackends: [10.0.0.1:80]\nlocal_name: true\n", []string{
			`services.d/web.yaml:5:13: local_name: backend 10.0.0.1:80/tcp serves both port 80/tcp and port 81/tcp, so getsockname cannot tell which VIP port to report: give the ports different backend ports`}},
		{"local_name not bool", base + "local_name: yes please\n", []string{
			`services.d/web.yaml:4:13: local_name: want true or false, found "yes please"`}},
		{"health type", base + "health: icmp\n", []string{
			`services.d/web.yaml:4:9: health: "icmp" is not a check type: want tcp, http or dns`}},
		{"health type short", base + "health: udp\n", []string{
			`services.d/web.yaml:4:9: health: "udp" is not a check type: want tcp, http or dns`}},
		{"health type case", base + "health: TCP\n", []string{
			`services.d/web.yaml:4:9: health: "TCP" is not a check type: want tcp, http or dns; did you mean "tcp"?`}},
		{"health list", base + "health: [tcp]\n", []string{
			`services.d/web.yaml:4:9: health: want a check type (tcp, http or dns) or a mapping such as {type: http, path: /healthz}, found a list`}},
		{"health empty", base + "health:\n", []string{
			`services.d/web.yaml:4:8: health: want a check type (tcp, http or dns) or a mapping such as {type: http, path: /healthz}, found nothing`}},
		{"health missing type", base + "health: {port: 80}\n", []string{
			`services.d/web.yaml:4:9: health.type: missing: a check needs a type (tcp, http or dns)`}},
		{"health mapping type", base + "health: {type: htttp}\n", []string{
			`services.d/web.yaml:4:16: health.type: "htttp" is not a check type: want tcp, http or dns; did you mean "http"?`}},
		{"health unknown field", base + "health: {type: tcp, intervall: 2s}\n", []string{
			`services.d/web.yaml:4:21: health: unknown field "intervall" (allowed: type, port, interval, timeout, rise, fall, path, host, status, query, qtype); did you mean "interval"?`}},
		{"health field twice", base + "health: {type: tcp, rise: 2, rise: 3}\n", []string{
			`services.d/web.yaml:4:30: health.rise: set twice (first on line 4)`}},
		{"health port", base + "health: {type: tcp, port: 0}\n", []string{
			`services.d/web.yaml:4:27: health.port: "0" is not a valid port: want a whole number from 1 to 65535`}},
		{"health interval", base + "health:\n  type: tcp\n  interval: 5ms\n", []string{
			`services.d/web.yaml:6:13: health.interval: "5ms" is not a valid interval: want a duration from 10ms to 1h, such as 2s or 500ms`}},
		{"health interval long", base + "health: {type: tcp, interval: 61m, timeout: 1s}\n", []string{
			`services.d/web.yaml:4:31: health.interval: "61m" is not a valid interval: want a duration from 10ms to 1h, such as 2s or 500ms`}},
		{"health interval unit", base + "health: {type: tcp, interval: 2}\n", []string{
			`services.d/web.yaml:4:31: health.interval: "2" is not a valid interval: want a duration from 10ms to 1h, such as 2s or 500ms`}},
		{"health interval list", base + "health: {type: tcp, interval: [2s]}\n", []string{
			`services.d/web.yaml:4:31: health.interval: want a duration from 10ms to 1h, such as 2s or 500ms, found a list`}},
		{"health timeout zero", base + "health: {type: tcp, timeout: 0s}\n", []string{
			`services.d/web.yaml:4:30: health.timeout: "0s" is not a valid timeout: want a duration above 0 and at most the interval (2s), such as 1s`}},
		{"health timeout above the default interval", base + "health: {type: tcp, timeout: 3s}\n", []string{
			`services.d/web.yaml:4:30: health.timeout: "3s" is not a valid timeout: want a duration above 0 and at most the interval (2s), such as 1s`}},
		{"health timeout above the interval", base + "health: {type: tcp, interval: 1m30s, timeout: 2m}\n", []string{
			`services.d/web.yaml:4:47: health.timeout: "2m" is not a valid timeout: want a duration above 0 and at most the interval (1m30s), such as 1s`}},
		{"health timeout and interval", base + "health: {type: tcp, interval: 1ms, timeout: -1s}\n", []string{
			`services.d/web.yaml:4:31: health.interval: "1ms" is not a valid interval: want a duration from 10ms to 1h, such as 2s or 500ms`,
			`services.d/web.yaml:4:45: health.timeout: "-1s" is not a valid timeout: want a duration above 0 and at most the interval, such as 1s`}},
		{"health rise and fall", base + "health: {type: tcp, rise: 0, fall: 101}\n", []string{
			`services.d/web.yaml:4:27: health.rise: "0" is not a valid count: want a whole number from 1 to 100`,
			`services.d/web.yaml:4:36: health.fall: "101" is not a valid count: want a whole number from 1 to 100`}},
		{"health http fields on tcp", base + "health: {type: tcp, path: /healthz, host: example, status: 200}\n", []string{
			`services.d/web.yaml:4:21: health.path: only http checks take path; this tcp check takes type, port, interval, timeout, rise, fall`,
			`services.d/web.yaml:4:37: health.host: only http checks take host; this tcp check takes type, port, interval, timeout, rise, fall`,
			`services.d/web.yaml:4:52: health.status: only http checks take status; this tcp check takes type, port, interval, timeout, rise, fall`}},
		{"health dns fields on http", base + "health: {type: http, query: example.org, qtype: A}\n", []string{
			`services.d/web.yaml:4:22: health.query: only dns checks take query; this http check takes type, port, interval, timeout, rise, fall, path, host, status`,
			`services.d/web.yaml:4:42: health.qtype: only dns checks take qtype; this http check takes type, port, interval, timeout, rise, fall, path, host, status`}},
		{"health http fields on dns", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: dns, path: /}\n", []string{
			`services.d/web.yaml:4:21: health.path: only http checks take path; this dns check takes type, port, interval, timeout, rise, fall, query, qtype`}},
		{"health path", base + "health: {type: http, path: healthz}\n", []string{
			`services.d/web.yaml:4:28: health.path: "healthz" is not a valid path: want one starting with '/', without spaces or control characters, such as /healthz`}},
		{"health path space", base + "health: {type: http, path: '/a b'}\n", []string{
			`services.d/web.yaml:4:28: health.path: "/a b" is not a valid path: want one starting with '/', without spaces or control characters, such as /healthz`}},
		{"health path list", base + "health: {type: http, path: [/]}\n", []string{
			`services.d/web.yaml:4:28: health.path: want a single value, found a list`}},
		{"health host", base + "health: {type: http, host: 'a b'}\n", []string{
			`services.d/web.yaml:4:28: health.host: "a b" is not a valid host: want a name for the Host header, with an optional port, such as example.org or example.org:8080`}},
		{"health host empty", base + "health: {type: http, host: ''}\n", []string{
			`services.d/web.yaml:4:28: health.host: "" is not a valid host: want a name for the Host header, with an optional port, such as example.org or example.org:8080`}},
		{"health host url", base + "health: {type: http, host: 'http://example.org/'}\n", []string{
			`services.d/web.yaml:4:28: health.host: "http://example.org/" is not a valid host: want a name for the Host header, with an optional port, such as example.org or example.org:8080`}},
		{"health status", base + "health:\n  type: http\n  status: 600\n", []string{
			`services.d/web.yaml:6:11: health.status: "600" is not a valid status: want a code from 100 to 599 or a range of them, lower first, such as 204 or 200-399`}},
		{"health status range", base + "health: {type: http, status: 399-200}\n", []string{
			`services.d/web.yaml:4:30: health.status: "399-200" is not a valid status: want a code from 100 to 599 or a range of them, lower first, such as 204 or 200-399`}},
		{"health status low", base + "health: {type: http, status: 99-200}\n", []string{
			`services.d/web.yaml:4:30: health.status: "99-200" is not a valid status: want a code from 100 to 599 or a range of them, lower first, such as 204 or 200-399`}},
		{"health status class", base + "health: {type: http, status: 2xx}\n", []string{
			`services.d/web.yaml:4:30: health.status: "2xx" is not a valid status: want a code from 100 to 599 or a range of them, lower first, such as 204 or 200-399`}},
		{"health status list", base + "health: {type: http, status: [200, 204]}\n", []string{
			`services.d/web.yaml:4:30: health.status: want a code from 100 to 599 or a range of them, lower first, such as 204 or 200-399, found a list`}},
		{"health query", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: dns, query: 'example..org'}\n", []string{
			`services.d/web.yaml:4:28: health.query: "example..org" is not a valid query: want a domain name such as example.org, or . for the root`}},
		{"health query space", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: dns, query: 'a b.org'}\n", []string{
			`services.d/web.yaml:4:28: health.query: "a b.org" is not a valid query: want a domain name such as example.org, or . for the root`}},
		{"health qtype", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: dns, qtype: BOGUS}\n", []string{
			`services.d/web.yaml:4:28: health.qtype: "BOGUS" is not a DNS query type: want a record type such as A, AAAA, NS, SOA, SRV or TXT`}},
		{"health qtype transfer", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: dns, qtype: AXFR}\n", []string{
			`services.d/web.yaml:4:28: health.qtype: "AXFR" is not a DNS query type: want a record type such as A, AAAA, NS, SOA, SRV or TXT`}},
		{"health qtype number", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: dns, qtype: 28}\n", []string{
			`services.d/web.yaml:4:28: health.qtype: "28" is not a DNS query type: want a record type such as A, AAAA, NS, SOA, SRV or TXT`}},
		{"health tcp without a tcp port", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: tcp\n", []string{
			`services.d/web.yaml:4:9: health: tcp checks probe the backends on the service's first tcp port, and the service has none: give the check a port, e.g. {type: tcp, port: 8080}`}},
		{"health http without a tcp port", "name: ns\nports: [53/udp]\nbackends: [10.0.0.1:53]\nhealth: {type: http, path: /ready}\n", []string{
			`services.d/web.yaml:4:9: health: http checks probe the backends on the service's first tcp port, and the service has none: give the check a port, e.g. {type: http, port: 8080}`}},
		{"health dns without a udp port", base + "health: dns\n", []string{
			`services.d/web.yaml:4:9: health: dns checks probe the backends on the service's first udp port, and the service has none: give the check a port, e.g. {type: dns, port: 53}`}},
		{"policy", base + "policy: roundrobin\n", []string{
			`services.d/web.yaml:4:9: policy: "roundrobin" is not a policy: want random, round-robin or maglev; did you mean "round-robin"?`}},
		{"policy unknown", base + "policy: least-connections\n", []string{
			`services.d/web.yaml:4:9: policy: "least-connections" is not a policy: want random, round-robin or maglev`}},
		{"policy list", base + "policy: [maglev]\n", []string{
			`services.d/web.yaml:4:9: policy: want a single value, found a list`}},
		{"maglev table", base + "policy: maglev\nmaglev: {table: 1000}\n", []string{
			`services.d/web.yaml:5:17: maglev.table: "1000" is not a Maglev table size: want one of 251, 509, 1021, 2039, 4093, 8191, 16381, 32749 or 65521 (primes)`}},
		{"maglev table list", base + "policy: maglev\nmaglev: {table: [251]}\n", []string{
			`services.d/web.yaml:5:17: maglev.table: want a table size, one of 251, 509, 1021, 2039, 4093, 8191, 16381, 32749 or 65521, found a list`}},
		{"maglev not a mapping", base + "policy: maglev\nmaglev: 4093\n", []string{
			`services.d/web.yaml:5:9: maglev: want a mapping such as {table: 16381}, found "4093"`}},
		{"maglev unknown field", base + "policy: maglev\nmaglev: {size: 4093}\n", []string{
			`services.d/web.yaml:5:10: maglev: unknown field "size" (allowed: table)`}},
		{"maglev without the policy", base + "maglev: {table: 251}\n", []string{
			`services.d/web.yaml:4:1: maglev: needs policy: maglev (the policy is random, the default): set that policy or leave maglev out`}},
		{"maglev with round-robin", base + "policy: round-robin\nmaglev: {table: 251}\n", []string{
			`services.d/web.yaml:5:1: maglev: needs policy: maglev (the policy is round-robin): set that policy or leave maglev out`}},
		{"maglev with a bad policy", base + "policy: magelv\nmaglev: {table: 251}\n", []string{
			`services.d/web.yaml:4:9: policy: "magelv" is not a policy: want random, round-robin or maglev; did you mean "maglev"?`}},
		{"client", base + "policy: maglev\nclient: pid\n", []string{
			`services.d/web.yaml:5:9: client: "pid" is not a client key: want cgroup or netns`}},
		{"client case", base + "policy: maglev\nclient: NetNS\n", []string{
			`services.d/web.yaml:5:9: client: "NetNS" is not a client key: want cgroup or netns; did you mean "netns"?`}},
		{"client unused", base + "client: netns\n", []string{
			`services.d/web.yaml:4:1: client: used only by policy: maglev and by affinity, and the service has neither (the policy is random, the default): set one or leave client out`}},
		{"client unused round-robin", base + "policy: round-robin\nclient: cgroup\n", []string{
			`services.d/web.yaml:5:1: client: used only by policy: maglev and by affinity, and the service has neither (the policy is round-robin): set one or leave client out`}},
		{"client with a bad affinity", base + "affinity: forever\nclient: netns\n", []string{
			`services.d/web.yaml:4:11: affinity: "forever" is not a valid affinity: want a duration from 1s to 24h, such as 10m`}},
		{"affinity short", base + "affinity: 500ms\n", []string{
			`services.d/web.yaml:4:11: affinity: "500ms" is not a valid affinity: want a duration from 1s to 24h, such as 10m`}},
		{"affinity long", base + "affinity: 25h\n", []string{
			`services.d/web.yaml:4:11: affinity: "25h" is not a valid affinity: want a duration from 1s to 24h, such as 10m`}},
		{"affinity unit", base + "affinity: 600\n", []string{
			`services.d/web.yaml:4:11: affinity: "600" is not a valid affinity: want a duration from 1s to 24h, such as 10m`}},
		{"affinity mapping", base + "affinity: {timeout: 10m}\n", []string{
			`services.d/web.yaml:4:11: affinity: want a duration from 1s to 24h, such as 10m, found a mapping`}},
		{"close_connections not bool", base + "close_connections: 1\n", []string{
			`services.d/web.yaml:4:20: close_connections: want true or false, found "1"`}},
		{"backend state", "name: web\nports: [80]\nbackends: [{address: 10.0.0.1:80, state: up}, {address: 10.0.0.2:80, state: Down}, {address: 10.0.0.3:80, state: [down]}]\n", []string{
			`services.d/web.yaml:3:42: backends[0].state: "up" is not a backend state: want active, draining or down`,
			`services.d/web.yaml:3:77: backends[1].state: "Down" is not a backend state: want active, draining or down; did you mean "down"?`,
			`services.d/web.yaml:3:114: backends[2].state: want a single value, found a list`}},
		{"backend state typo", "name: web\nports: [80]\nbackends:\n  - address: 10.0.0.1:80\n    state: drainign\n", []string{
			`services.d/web.yaml:5:12: backends[0].state: "drainign" is not a backend state: want active, draining or down; did you mean "draining"?`}},
		{"too big", "name: web\n#" + strings.Repeat("x", MaxSize), []string{
			`services.d/web.yaml: file is 1048587 bytes, at most 1048576 allowed`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(file, []byte(tc.in))
			if err == nil {
				t.Fatalf("accepted: %+v", s)
			}
			if s != nil {
				t.Errorf("returned a service with the error")
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is %T, want Errors", err)
			}
			var got []string
			for _, e := range es {
				got = append(got, e.Error())
				if e.File != file {
					t.Errorf("error names file %q", e.File)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// TestExampleFiles parses the files shipped in services.d/.
func TestExampleFiles(t *testing.T) {
	paths, err := filepath.Glob("../services.d/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 2 {
		t.Fatalf("want at least 2 example files in services.d/, found %d", len(paths))
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(p, data); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// check is kind's default check changed by set.
func check(k health.Kind, set func(c *health.Check)) *health.Check {
	c := health.Defaults(k)
	if set != nil {
		set(&c)
	}
	return &c
}

// TestParseHealth gives the accepted forms of health, with the defaults
// they fill in.
func TestParseHealth(t *testing.T) {
	const (
		tcp = "name: web\nports: [80]\nbackends: [127.0.0.1:8080]\n"
		udp = "name: ns\nports: [53/udp]\nbackends: [127.0.0.1:5353]\n"
	)
	for _, tc := range []struct {
		name, in string
		want     *health.Check
	}{
		{"none", tcp, nil},
		{"tcp", tcp + "health: tcp\n", check(health.TCP, nil)},
		{"http", tcp + "health: http\n", check(health.HTTP, nil)},
		{"dns", udp + "health: dns\n", check(health.DNS, nil)},
		{"mapping with only a type", tcp + "health: {type: tcp}\n", check(health.TCP, nil)},
		{"tcp every field", tcp + "health: {type: tcp, port: 9000, interval: 5s, timeout: 5s, rise: 1, fall: 100}\n",
			check(health.TCP, func(c *health.Check) {
				c.Port, c.Interval, c.Timeout, c.Rise, c.Fall = 9000, 5*time.Second, 5*time.Second, 1, 100
			})},
		{"http every field", tcp + "health:\n  type: http\n  port: 8081\n  interval: 10ms\n  timeout: 10ms\n  rise: 100\n  fall: 1\n  path: /healthz?full=1\n  host: example\n  status: 200-299\n",
			check(health.HTTP, func(c *health.Check) {
				c.Port, c.Interval, c.Timeout, c.Rise, c.Fall = 8081, 10*time.Millisecond, 10*time.Millisecond, 100, 1
				c.Path, c.Host, c.StatusMin, c.StatusMax = "/healthz?full=1", "example", 200, 299
			})},
		{"http one status", tcp + "health: {type: http, status: 204, host: 'example.org:8080'}\n",
			check(health.HTTP, func(c *health.Check) { c.StatusMin, c.StatusMax, c.Host = 204, 204, "example.org:8080" })},
		{"http widest status", tcp + "health: {type: http, status: 100-599}\n",
			check(health.HTTP, func(c *health.Check) { c.StatusMin, c.StatusMax = 100, 599 })},
		{"dns every field", udp + "health: {type: dns, port: 53, interval: 1h, timeout: 1m, query: example.org, qtype: AAAA}\n",
			check(health.DNS, func(c *health.Check) {
				c.Port, c.Interval, c.Timeout, c.Query, c.QType = 53, time.Hour, time.Minute, "example.org.", dns.TypeAAAA
			})},
		{"dns root, type in lower case", udp + "health: {type: dns, query: ., qtype: soa}\n",
			check(health.DNS, func(c *health.Check) { c.Query, c.QType = ".", dns.TypeSOA })},
		{"dns fully qualified", udp + "health: {type: dns, query: ns1.example., qtype: SRV}\n",
			check(health.DNS, func(c *health.Check) { c.Query, c.QType = "ns1.example.", dns.TypeSRV })},
		{"dns on a tcp service, with a port", tcp + "health: {type: dns, port: 53}\n",
			check(health.DNS, func(c *health.Check) { c.Port = 53 })},
		{"tcp on a udp service, with a port", udp + "health: {type: tcp, port: 53}\n",
			check(health.TCP, func(c *health.Check) { c.Port = 53 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(file, []byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Health, tc.want) {
				t.Errorf("got  %+v\nwant %+v", s.Health, tc.want)
			}
		})
	}
}

// TestParsePicking gives the accepted forms of policy, maglev, client,
// affinity and close_connections, with their defaults.
func TestParsePicking(t *testing.T) {
	const base = "name: web\nports: [80]\nbackends: [127.0.0.1:8080]\n"
	type picking struct {
		Policy           lb.Policy
		Client           lb.ClientKey
		MaglevTable      int
		Affinity         time.Duration
		CloseConnections bool
	}
	for _, tc := range []struct {
		name, in string
		want     picking
	}{
		{"defaults", "", picking{lb.Random, lb.ClientCgroup, 0, 0, false}},
		{"random", "policy: random\n", picking{Policy: lb.Random}},
		{"round-robin", "policy: round-robin\n", picking{Policy: lb.RoundRobin}},
		{"maglev", "policy: maglev\n", picking{Policy: lb.Maglev}},
		{"maglev empty mapping", "policy: maglev\nmaglev: {}\n", picking{Policy: lb.Maglev}},
		{"maglev smallest table", "policy: maglev\nmaglev: {table: 251}\n", picking{Policy: lb.Maglev, MaglevTable: 251}},
		{"maglev largest table", "maglev:\n  table: 65521\npolicy: maglev\n", picking{Policy: lb.Maglev, MaglevTable: 65521}},
		{"maglev netns", "policy: maglev\nclient: netns\n", picking{Policy: lb.Maglev, Client: lb.ClientNetns}},
		{"maglev cgroup", "policy: maglev\nclient: cgroup\n", picking{Policy: lb.Maglev, Client: lb.ClientCgroup}},
		{"affinity", "affinity: 10m\n", picking{Affinity: 10 * time.Minute}},
		{"affinity shortest", "affinity: 1s\n", picking{Affinity: time.Second}},
		{"affinity longest", "affinity: 24h\n", picking{Affinity: 24 * time.Hour}},
		{"affinity mixed units", "affinity: 1h30m\n", picking{Affinity: 90 * time.Minute}},
		{"affinity with client", "policy: round-robin\naffinity: 30s\nclient: netns\n", picking{Policy: lb.RoundRobin, Client: lb.ClientNetns, Affinity: 30 * time.Second}},
		{"close_connections", "close_connections: true\n", picking{CloseConnections: true}},
		{"close_connections false", "close_connections: false\n", picking{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(file, []byte(base+tc.in))
			if err != nil {
				t.Fatal(err)
			}
			got := picking{s.Policy, s.Client, s.MaglevTable, s.Affinity, s.CloseConnections}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseBackendState(t *testing.T) {
	in := "name: web\nports: [80]\nbackends:\n  - 10.0.0.1:80\n  - {address: 10.0.0.2:80}\n  - {address: 10.0.0.3:80, state: active}\n  - {address: 10.0.0.4:80, state: draining}\n  - {address: 10.0.0.5:80, state: down, weight: 2}\n"
	s, err := Parse(file, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var got []lb.BackendState
	for _, b := range s.Backends {
		got = append(got, b.State)
	}
	want := []lb.BackendState{lb.Active, lb.Active, lb.Active, lb.Draining, lb.Down}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}
}

func TestLBServices(t *testing.T) {
	in := `name: web
vip: 198.18.0.1
ports: [80, 81]
backends:
  - 10.0.0.1:8080
  - {address: 10.0.0.2:8080, state: draining, weight: 2}
  - {address: 10.0.0.3:8080, state: down}
  - 10.0.0.4
policy: maglev
maglev: {table: 251}
client: netns
affinity: 10m
close_connections: true
`
	s, err := Parse(file, []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	be := func(addr string, weight uint16, st lb.BackendState) lb.Backend {
		return lb.Backend{Addr: netip.MustParseAddrPort(addr), Weight: weight, State: st}
	}
	svc := func(port uint16, backends ...lb.Backend) lb.Service {
		return lb.Service{
			Key:      lb.ServiceKey{VIP: netip.MustParseAddr("198.18.0.1"), Port: port, Proto: lb.TCP},
			Backends: backends,
			Policy:   lb.Maglev, Client: lb.ClientNetns, MaglevTable: 251, Affinity: 10 * time.Minute, CloseConnections: true,
		}
	}
	lim := lb.Limits{ServiceEntries: 1 << 20, Backends: 1 << 20, Counters: 1 << 20, LocalNames: 1 << 20}

	// Without health checks, each backend has its own state.
	got := s.LBServices(s.VIPs, nil)
	want := []lb.Service{
		svc(80, be("10.0.0.1:8080", 1, lb.Active), be("10.0.0.2:8080", 2, lb.Draining), be("10.0.0.3:8080", 1, lb.Down), be("10.0.0.4:80", 1, lb.Active)),
		svc(81, be("10.0.0.1:8080", 1, lb.Active), be("10.0.0.2:8080", 2, lb.Draining), be("10.0.0.3:8080", 1, lb.Down), be("10.0.0.4:81", 1, lb.Active)),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if err := lb.Validate(got, lim); err != nil {
		t.Fatalf("the datapath refuses what the parser accepted: %v", err)
	}

	// A failed check takes an active or a draining backend down; a
	// passing one leaves the state alone. down is asked once per backend.
	failing := map[netip.Addr]bool{netip.MustParseAddr("10.0.0.2"): true, netip.MustParseAddr("10.0.0.4"): true}
	asked := map[netip.Addr]int{}
	got = s.LBServices(s.VIPs, func(name string) bool {
		a := nameAddr(name)
		asked[a]++
		return failing[a]
	})
	want = []lb.Service{
		svc(80, be("10.0.0.1:8080", 1, lb.Active), be("10.0.0.2:8080", 2, lb.Down), be("10.0.0.3:8080", 1, lb.Down), be("10.0.0.4:80", 1, lb.Down)),
		svc(81, be("10.0.0.1:8080", 1, lb.Active), be("10.0.0.2:8080", 2, lb.Down), be("10.0.0.3:8080", 1, lb.Down), be("10.0.0.4:81", 1, lb.Down)),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("with down: got  %+v\nwant %+v", got, want)
	}
	for _, b := range s.Backends {
		if asked[b.Addr] != 1 {
			t.Errorf("down(%s) asked %d times, want once", b.Addr, asked[b.Addr])
		}
	}
	if err := lb.Validate(got, lim); err != nil {
		t.Fatalf("the datapath refuses what the parser accepted: %v", err)
	}
}

func TestHealthTargets(t *testing.T) {
	const svc = `name: mixed
ports: [53/udp, {port: 443, name: https}, 80, 5353/udp]
backends:
  - 10.0.0.1:8000
  - address: 10.0.0.2
    ports: {https: 8443, 53/udp: 5300}
`
	a1, a2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, tc := range []struct {
		health string
		want   []netip.AddrPort // per backend
	}{
		// The first tcp port is 443: 10.0.0.2 serves it on 8443.
		{"tcp", []netip.AddrPort{netip.AddrPortFrom(a1, 8000), netip.AddrPortFrom(a2, 8443)}},
		{"http", []netip.AddrPort{netip.AddrPortFrom(a1, 8000), netip.AddrPortFrom(a2, 8443)}},
		// The first udp port is 53: 10.0.0.2 serves it on 5300.
		{"dns", []netip.AddrPort{netip.AddrPortFrom(a1, 8000), netip.AddrPortFrom(a2, 5300)}},
		// The check's own port wins.
		{"{type: tcp, port: 9000}", []netip.AddrPort{netip.AddrPortFrom(a1, 9000), netip.AddrPortFrom(a2, 9000)}},
		{"{type: dns, port: 5353}", []netip.AddrPort{netip.AddrPortFrom(a1, 5353), netip.AddrPortFrom(a2, 5353)}},
	} {
		t.Run(tc.health, func(t *testing.T) {
			s, err := Parse(file, []byte(svc+"health: "+tc.health+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			var want []health.Target
			for i, ap := range tc.want {
				want = append(want, health.Target{Service: "mixed", Backend: s.Backends[i].Name(), Addr: ap, Check: *s.Health})
			}
			if got := s.HealthTargets(); !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
	s, err := Parse(file, []byte(svc))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.HealthTargets(); got != nil {
		t.Errorf("no check: targets %+v, want none", got)
	}
}

// TestREADME parses every YAML example of the README's service-file
// section.
func TestREADME(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Service files\n")
	if !ok {
		t.Fatal("README.md has no \"## Service files\" section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var examples int
	for rest := section; ; {
		var block string
		if _, rest, ok = strings.Cut(rest, "\n```yaml\n"); !ok {
			break
		}
		if block, rest, ok = strings.Cut(rest, "\n```\n"); !ok {
			t.Fatal("README.md: a yaml block is not closed")
		}
		examples++
		if _, err := Parse("README.md", []byte(block+"\n")); err != nil {
			t.Errorf("example %d:\n%s\n%v", examples, block, err)
		}
	}
	if examples < 3 {
		t.Fatalf("found %d YAML examples in the service-file section, want at least 3", examples)
	}
}

// nameAddr is the address in a backend's Name.
func nameAddr(name string) netip.Addr {
	if ap, err := netip.ParseAddrPort(name); err == nil {
		return ap.Addr()
	}
	return netip.MustParseAddr(name)
}

func TestBackendName(t *testing.T) {
	for _, tc := range []struct {
		b    Backend
		want string
	}{
		{Backend{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080}, "127.0.0.1:8080"},
		{Backend{Addr: netip.MustParseAddr("::1"), Port: 53}, "[::1]:53"},
		{Backend{Addr: netip.MustParseAddr("10.0.0.1")}, "10.0.0.1"},
	} {
		if got := tc.b.Name(); got != tc.want {
			t.Errorf("Name() = %q, want %q", got, tc.want)
		}
	}
}

// An interval below the default timeout shortens the timeout to it.
func TestHealthShortIntervalShortensTimeout(t *testing.T) {
	s, err := Parse("web.yaml", []byte("name: web\nports: [80]\nbackends: [127.0.0.1:8080]\nhealth: {type: tcp, interval: 500ms}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Health.Interval != 500*time.Millisecond || s.Health.Timeout != 500*time.Millisecond {
		t.Errorf("interval %s timeout %s, want 500ms both", s.Health.Interval, s.Health.Timeout)
	}
}
