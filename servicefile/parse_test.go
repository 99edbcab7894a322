package servicefile

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

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
