package servicefile

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseBackendsDoc(t *testing.T) {
	src := "backends_for: web\nbackends: [10.0.0.1:8080, {address: 10.0.0.2, weight: 3, state: draining}]\n"
	s, err := Parse("b.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if !s.BackendsOnly || s.Name != "web" || len(s.Backends) != 2 || s.Backends[1].Weight != 3 || s.NamePos != (Pos{1, 15}) {
		t.Errorf("parsed %+v", s)
	}
	if s, err := Parse("b.yaml", []byte("backends_for: web\nbackends: []\n")); err != nil || len(s.Backends) != 0 {
		t.Errorf("no backends at the moment: %+v, %v", s, err)
	}
	for _, tc := range []struct{ src, want string }{
		{"backends_for: Web\nbackends: []\n", `b.yaml:1:15: backends_for: "Web" is not a DNS label`},
		{"backends_for: web\n", "b.yaml:1:1: backends: missing: a backends document lists backends"},
		{"backends_for: web\nbackends: []\nports: [80]\n", `b.yaml:3:1: unknown field "ports" (allowed: backends_for, backends)`},
		{"backends_for: web\nname: web\nbackends: []\n", `b.yaml:2:1: unknown field "name"`},
		{"backends_for: web\nbackends: [10.0.0.1:80, 10.0.0.1:80]\n", "b.yaml:2:25: backends[1]: 10.0.0.1:80 is listed twice (also backends[0])"},
		{"backends_for: web\nbackends: [{address: 10.0.0.1, ports: {80: 8080}}]\n", "b.yaml:2:32: backends[0].ports: not in a backends document"},
		{"backends_for: web\nbackends: [10.0.0.1:0]\n", "b.yaml:2:12: backends[0]: 10.0.0.1:0: port 0 is not allowed"},
	} {
		_, err := Parse("b.yaml", []byte(tc.src))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Parse(%q): %v\nwant %s", tc.src, err, tc.want)
		}
	}
}

func mustParse(t *testing.T, name, src string) *Service {
	t.Helper()
	s, err := Parse(name, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func addrs(s *Service) []string {
	var out []string
	for _, b := range s.Backends {
		out = append(out, b.Name())
	}
	return out
}

func TestMerge(t *testing.T) {
	svc := mustParse(t, "web.yaml", "name: web\nvip: 198.18.0.1\nports: [80, 443]\nbackends: [10.0.0.1]\n")
	before := slices.Clone(svc.Backends)
	a := mustParse(t, "a.yaml", "backends_for: web\nbackends: [10.0.0.2, {address: 10.0.0.3, weight: 2}]\n")
	b := mustParse(t, "b.yaml", "backends_for: web\nbackends: [10.0.0.1, \"fd00::1\", 10.0.0.2:80, 10.0.0.4]\n")
	got, errs := Merge(svc, []Contribution{{"a.yaml", a}, {"b.yaml", b}})
	if want := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}; !slices.Equal(addrs(got), want) {
		t.Errorf("merged %v, want %v", addrs(got), want)
	}
	if got.Backends[0].From != "" || got.Backends[1].From != "a.yaml" || got.Backends[3].From != "b.yaml" || got.Backends[2].Weight != 2 {
		t.Errorf("merged backends %+v", got.Backends)
	}
	if !reflect.DeepEqual(svc.Backends, before) {
		t.Error("Merge changed the service it was given")
	}
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	for i, want := range []string{
		`b.yaml:2:12: backends[0]: 10.0.0.1 is already a backend of service "web" (in the service's own file)`,
		`b.yaml:2:22: backends[1]: IPv6 backend fd00::1 cannot serve the IPv4 VIP of service "web"`,
		// 10.0.0.2:80 is where a.yaml's 10.0.0.2 serves port 80.
		`b.yaml:2:33: backends[2]: 10.0.0.2:80 is already a backend of service "web" (in a.yaml)`,
	} {
		if i >= len(msgs) || !strings.HasPrefix(msgs[i], want) {
			t.Errorf("error %d: %v\nwant %s", i, msgs, want)
		}
	}
	if len(msgs) != 3 {
		t.Errorf("errors %v, want 3", msgs)
	}
	if got, errs := Merge(svc, nil); got != svc || errs != nil {
		t.Errorf("Merge without documents: %p %v, want the service itself", got, errs)
	}
}

func TestMergeRules(t *testing.T) {
	// UDP on a derived IPv4 and IPv6 pair: IPv6 backends cannot serve the
	// IPv4 VIP, IPv4 ones cannot serve IPv6 UDP.
	udp := mustParse(t, "dns.yaml", "name: dns\nports: [53/udp]\nvip: \"fd00::53\"\nbackends: []\n")
	doc := mustParse(t, "d.yaml", "backends_for: dns\nbackends: [10.0.0.1, \"fd00::1\"]\n")
	got, errs := Merge(udp, []Contribution{{"d.yaml", doc}})
	if !slices.Equal(addrs(got), []string{"fd00::1"}) || len(errs) != 1 || !strings.Contains(errs[0].Msg, "cannot serve the UDP ports of the IPv6 VIP") {
		t.Errorf("UDP over IPv6: %v, %v", addrs(got), errs)
	}
	// UDP with a derived VIP and no backends of its own: IPv4 alone, so
	// IPv4 backends can join.
	bare := mustParse(t, "bare.yaml", "name: dns\nports: [53/udp, 53/tcp]\nbackends: []\n")
	if len(bare.Families) != 1 || bare.Families[0] != IPv4 {
		t.Errorf("UDP without backends: families %v, want IPv4", bare.Families)
	}
	doc = mustParse(t, "d.yaml", "backends_for: dns\nbackends: [10.0.0.1]\n")
	if got, errs := Merge(bare, []Contribution{{"d.yaml", doc}}); !slices.Equal(addrs(got), []string{"10.0.0.1"}) || len(errs) != 0 {
		t.Errorf("UDP without backends, an IPv4 document: %v, %v", addrs(got), errs)
	}
	// local_name: a backend port serving two service ports cannot be told
	// apart.
	ln := mustParse(t, "ln.yaml", "name: ln\nvip: 198.18.0.2\nports: [80, 81]\nlocal_name: true\nbackends: []\n")
	doc = mustParse(t, "l.yaml", "backends_for: ln\nbackends: [10.0.0.1:8080, 10.0.0.2]\n")
	got, errs = Merge(ln, []Contribution{{"l.yaml", doc}})
	if !slices.Equal(addrs(got), []string{"10.0.0.2"}) || len(errs) != 1 || !strings.Contains(errs[0].Msg, "local_name needs one port per backend address") {
		t.Errorf("local_name: %v, %v", addrs(got), errs)
	}
	// Weights past the slots: the whole document is left out.
	heavy := mustParse(t, "h.yaml", "backends_for: web\nbackends: [{address: 10.0.0.9, weight: 65534}, {address: 10.0.0.8, weight: 1}]\n")
	web := mustParse(t, "web.yaml", "name: web\nports: [80]\nbackends: [{address: 10.0.0.1, weight: 3}]\n")
	got, errs = Merge(web, []Contribution{{"h.yaml", heavy}})
	if !slices.Equal(addrs(got), []string{"10.0.0.1"}) || len(errs) != 1 || errs[0].Field != "backends" || !strings.Contains(errs[0].Msg, "weight slots") {
		t.Errorf("weights: %v, %v", addrs(got), errs)
	}
}
