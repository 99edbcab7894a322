package servicefile

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"sockmesh/health"
	"sockmesh/lb"
)

// MaxSize is the largest service file Parse accepts, in bytes.
const MaxSize = 1 << 20

// The fields of each mapping, in the order the README documents them.
var (
	serviceFields = []string{"name", "vip", "ports", "backends", "local_name",
		"health", "policy", "maglev", "client", "affinity", "close_connections"}
	portFields = []string{"port", "protocol", "name"}
	// A backends document adds backends to a service defined elsewhere.
	backendsDocFields = []string{"backends_for", "backends"}
	backendFields     = []string{"address", "weight", "ports", "state"}
	healthFields      = []string{"type", "port", "interval", "timeout", "rise", "fall",
		"path", "host", "status", "query", "qtype"}
	maglevFields = []string{"table"}

	// The health fields each kind of check takes: the first six, then its
	// own.
	healthKindFields = map[health.Kind][]string{
		health.TCP:  healthFields[:6],
		health.HTTP: healthFields[:9],
		health.DNS:  append(slices.Clip(healthFields[:6]), "query", "qtype"),
	}
)

// The words an enumerated field takes, in the order the README gives them.
// The first is the default, except for check types (a check names its own).
var (
	checkKinds    = []health.Kind{health.TCP, health.HTTP, health.DNS}
	healthKinds   = words(checkKinds...)
	policies      = words(lb.Random, lb.RoundRobin, lb.Maglev)
	clientKeys    = words(lb.ClientCgroup, lb.ClientNetns)
	backendStates = words(lb.Active, lb.Draining, lb.Down)
)

func words[T fmt.Stringer](vs ...T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

// Limits of the durations a service file sets.
const (
	minInterval, maxInterval = 10 * time.Millisecond, time.Hour
	minAffinity, maxAffinity = time.Second, 24 * time.Hour
)

var (
	// A DNS label (RFC 1035 section 2.3.1, digits allowed first as in RFC
	// 1123), lower case so that a name has one spelling.
	labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// An IANA service name (RFC 6335 section 5.1): at most 15 characters,
	// at least one letter, no leading, trailing or double hyphen.
	portNameRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	// "yaml: line 3: did not find expected key"
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

// Parse parses the service file named file (used in errors) with contents
// data. On any problem it returns Errors listing all of them.
func Parse(file string, data []byte) (*Service, error) {
	p := &parser{file: file}
	s := p.parse(data)
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *Error) int {
			return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
		})
		return nil, p.errs
	}
	s.Source = bytes.Clone(data)
	return s, nil
}

type parser struct {
	file string
	errs Errors
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Pos: posOf(n), Field: field, Msg: fmt.Sprintf(format, args...)})
}

func posOf(n *yaml.Node) Pos {
	if n == nil {
		return Pos{}
	}
	return Pos{Line: n.Line, Column: n.Column}
}

func (p *parser) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := &Error{File: p.file, Msg: "not valid YAML: " + msg}
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = "not valid YAML: " + m[2]
	}
	p.errs = append(p.errs, e)
}

func (p *parser) parse(data []byte) *Service {
	if len(data) > MaxSize {
		p.errs = append(p.errs, &Error{File: p.file, Msg: fmt.Sprintf("file is %d bytes, at most %d allowed", len(data), MaxSize)})
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errs = append(p.errs, &Error{File: p.file, Msg: "file is empty: a service needs at least name, ports and backends"})
		} else {
			p.yamlError(err)
		}
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		p.errorf(&extra, "", "a second YAML document: one service per file")
		return nil
	case !errors.Is(err, io.EOF):
		p.yamlError(err)
		return nil
	}
	if alias := findAlias(&doc); alias != nil {
		p.errorf(alias, "", "YAML aliases (*%s) are not supported: write the value out", alias.Value)
		return nil
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "", "want a mapping of fields (%s), found %s", strings.Join(serviceFields, ", "), describe(root))
		return nil
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "backends_for" {
			return p.backendsDoc(root)
		}
	}
	return p.service(root)
}

// backendsDoc parses a backends document: backends for the service named
// by backends_for, which another document defines.
func (p *parser) backendsDoc(m *yaml.Node) *Service {
	f := p.fields(m, "", backendsDocFields)
	s := &Service{BackendsOnly: true}
	if kv, ok := f["backends_for"]; ok {
		s.Name = p.nameAs(kv[1], "backends_for")
		s.NamePos = posOf(kv[1])
	}
	if kv, ok := f["backends"]; ok {
		p.backends(s, kv[1])
	} else {
		p.errorf(m, "backends", "missing: a backends document lists backends (backends: [] for none at the moment)")
	}
	if len(p.errs) > 0 {
		return nil
	}
	return s
}

// findAlias returns the first alias node under n, if any.
func findAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode {
		return n
	}
	for _, c := range n.Content {
		if a := findAlias(c); a != nil {
			return a
		}
	}
	return nil
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// fields walks a mapping, reporting duplicate and unknown keys, and
// returns each known field's key and value nodes.
func (p *parser) fields(m *yaml.Node, path string, allowed []string) map[string][2]*yaml.Node {
	out := make(map[string][2]*yaml.Node)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		name := k.Value
		fp := join(path, name)
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, path, "field names must be plain words, found %s", describe(k))
			continue
		}
		if !slices.Contains(allowed, name) {
			msg := fmt.Sprintf("unknown field %q (allowed: %s)", name, strings.Join(allowed, ", "))
			if s := suggest(name, allowed); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			p.errorf(k, path, "%s", msg)
			continue
		}
		if prev, ok := out[name]; ok {
			p.errorf(k, fp, "set twice (first on line %d)", prev[0].Line)
			continue
		}
		out[name] = [2]*yaml.Node{k, v}
	}
	return out
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// suggest returns the allowed word closest to s, if it is a likely typo.
func suggest(s string, allowed []string) string {
	best, bestD := "", 3
	for _, a := range allowed {
		if d := editDistance(strings.ToLower(s), a); d < bestD {
			best, bestD = a, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, sub)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// items returns a list's elements, or a lone value as a list of one, so
// "ports: 80" means "ports: [80]".
func items(n *yaml.Node) []*yaml.Node {
	switch {
	case n.Kind == yaml.SequenceNode:
		return n.Content
	case n.Kind == yaml.ScalarNode && n.Tag == "!!null":
		return nil
	}
	return []*yaml.Node{n}
}

func (p *parser) service(m *yaml.Node) *Service {
	f := p.fields(m, "", serviceFields)
	s := &Service{}
	for _, req := range []string{"name", "ports", "backends"} {
		if _, ok := f[req]; !ok {
			p.errorf(m, req, "missing: every service needs name, ports and backends (backends: [] refuses connections)")
		}
	}
	if kv, ok := f["name"]; ok {
		s.Name = p.nameAs(kv[1], "name")
		s.NamePos = posOf(kv[1])
	}
	if kv, ok := f["vip"]; ok {
		p.vips(s, kv[1])
	}
	if kv, ok := f["ports"]; ok {
		p.ports(s, kv[1])
	}
	if kv, ok := f["backends"]; ok {
		p.backends(s, kv[1])
	}
	if kv, ok := f["local_name"]; ok {
		s.LocalName = p.boolean(kv[1], "local_name")
	}
	if kv, ok := f["health"]; ok {
		s.Health = p.health(kv[1])
	}
	p.picking(s, f)
	if kv, ok := f["close_connections"]; ok {
		s.CloseConnections = p.boolean(kv[1], "close_connections")
	}
	if len(p.errs) > 0 {
		return nil
	}
	p.families(s, f["backends"][0])
	if s.LocalName {
		p.localName(s, f["local_name"][1])
	}
	if s.Health != nil {
		p.healthPort(s, f["health"][1])
	}
	if len(p.errs) > 0 {
		return nil
	}
	return s
}

func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errorf(n, field, "want a single value, found %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) nameAs(n *yaml.Node, field string) string {
	v, ok := p.str(n, field)
	if !ok {
		return ""
	}
	if !labelRE.MatchString(v) {
		p.errorf(n, field, "%q is not a DNS label: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'", v)
		return ""
	}
	return v
}

func (p *parser) boolean(n *yaml.Node, field string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.errorf(n, field, "want true or false, found %s", describe(n))
		return false
	}
	return n.Value == "true" || n.Value == "True" || n.Value == "TRUE"
}

// oneOf parses a word that must be one of allowed; what names it in
// errors.
func (p *parser) oneOf(n *yaml.Node, field, what string, allowed []string) (string, bool) {
	v, ok := p.str(n, field)
	if !ok {
		return "", false
	}
	if slices.Contains(allowed, v) {
		return v, true
	}
	msg := fmt.Sprintf("%q is not a %s: want %s", v, what, orList(allowed))
	// The words are short, so a guess needs most letters right: udp is
	// not a misspelt tcp, nor icmp, but TCP is.
	if s := suggest(v, allowed); s != "" {
		if d := editDistance(strings.ToLower(v), s); d == 0 || (len(v) > 3 && 3*d <= len(v)) {
			msg += fmt.Sprintf("; did you mean %q?", s)
		}
	}
	p.errorf(n, field, "%s", msg)
	return "", false
}

// orList writes words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// duration parses a duration such as 2s or 500ms in [lo, hi]; want says
// what is allowed, for errors.
func (p *parser) duration(n *yaml.Node, field, what string, lo, hi time.Duration, want string) (time.Duration, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
		p.errorf(n, field, "want %s, found %s", want, describe(n))
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil || d < lo || d > hi {
		p.errorf(n, field, "%q is not a valid %s: want %s", n.Value, what, want)
		return 0, false
	}
	return d, true
}

// short writes d without its zero units: 1h, not 1h0m0s.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// number parses an integer scalar in [lo, hi].
func (p *parser) number(n *yaml.Node, field, what string, lo, hi int) (int, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		p.errorf(n, field, "want a %s (%d-%d), found %s", what, lo, hi, describe(n))
		return 0, false
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < lo || v > hi {
		p.errorf(n, field, "%q is not a valid %s: want a whole number from %d to %d", n.Value, what, lo, hi)
		return 0, false
	}
	return v, true
}

func (p *parser) vips(s *Service, n *yaml.Node) {
	for i, it := range items(n) {
		field := fmt.Sprintf("vip[%d]", i)
		if n.Kind != yaml.SequenceNode {
			field = "vip"
		}
		v, ok := p.str(it, field)
		if !ok {
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			p.errorf(it, field, "%q is not an IP address (want e.g. 198.18.0.10 or fd6d:6573:6800::10)", v)
			continue
		}
		switch {
		case a.Zone() != "":
			p.errorf(it, field, "%s: addresses with a zone are not allowed", v)
			continue
		case a.Is4In6():
			p.errorf(it, field, "%s: write IPv4 VIPs in dotted form (%s)", v, a.Unmap())
			continue
		case a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			p.errorf(it, field, "%s cannot be a VIP: want a unicast address", v)
			continue
		}
		for j, prev := range s.VIPs {
			if FamilyOf(prev) == FamilyOf(a) {
				p.errorf(it, field, "a second %s VIP (first on line %d): a service has at most one IPv4 and one IPv6 VIP", FamilyOf(a), s.VIPPos[j].Line)
				ok = false
			}
		}
		if ok {
			s.VIPs = append(s.VIPs, a)
			s.VIPPos = append(s.VIPPos, posOf(it))
		}
	}
	if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		p.errorf(n, "vip", "empty list: leave vip out to derive addresses from the name")
	}
}

func (p *parser) ports(s *Service, n *yaml.Node) {
	list := items(n)
	if len(list) == 0 {
		p.errorf(n, "ports", "no ports: list at least one, e.g. [80] or [53/udp]")
		return
	}
	seen := map[Port]*yaml.Node{}
	names := map[string]*yaml.Node{}
	for i, it := range list {
		field := fmt.Sprintf("ports[%d]", i)
		port, ok := p.port(it, field)
		if !ok {
			continue
		}
		key := Port{Number: port.Number, Proto: port.Proto}
		if prev, dup := seen[key]; dup {
			p.errorf(it, field, "%s is listed twice (first on line %d)", key, prev.Line)
			continue
		}
		seen[key] = it
		if port.Name != "" {
			if prev, dup := names[port.Name]; dup {
				p.errorf(it, field+".name", "port name %q is used twice (first on line %d)", port.Name, prev.Line)
				continue
			}
			names[port.Name] = it
		}
		s.Ports = append(s.Ports, port)
	}
}

// port parses 80, "80/tcp", "53/udp" or {port: 443, protocol: tcp, name: https}.
func (p *parser) port(n *yaml.Node, field string) (Port, bool) {
	pt := Port{Proto: lb.TCP, Pos: posOf(n)}
	switch n.Kind {
	case yaml.ScalarNode:
		v := n.Value
		num, proto, hasProto := strings.Cut(v, "/")
		if hasProto {
			pr, err := lb.ParseProto(proto)
			if err != nil {
				p.errorf(n, field, "%q: protocol %q is not tcp or udp", v, proto)
				return pt, false
			}
			pt.Proto = pr
		}
		c := *n
		c.Value = num
		nr, ok := p.number(&c, field, "port", 1, 65535)
		if !ok {
			return pt, false
		}
		pt.Number = uint16(nr)
		return pt, true
	case yaml.MappingNode:
		f := p.fields(n, field, portFields)
		kv, ok := f["port"]
		if !ok {
			p.errorf(n, field+".port", "missing: a port entry needs a port number")
			return pt, false
		}
		nr, ok := p.number(kv[1], field+".port", "port", 1, 65535)
		if !ok {
			return pt, false
		}
		pt.Number = uint16(nr)
		if kv, ok := f["protocol"]; ok {
			v, ok := p.str(kv[1], field+".protocol")
			if !ok {
				return pt, false
			}
			pr, err := lb.ParseProto(v)
			if err != nil {
				p.errorf(kv[1], field+".protocol", "%q is not a protocol: want tcp or udp", v)
				return pt, false
			}
			pt.Proto = pr
		}
		if kv, ok := f["name"]; ok {
			v, ok := p.str(kv[1], field+".name")
			if !ok {
				return pt, false
			}
			if len(v) > 15 || !portNameRE.MatchString(v) || !strings.ContainsAny(v, "abcdefghijklmnopqrstuvwxyz") {
				p.errorf(kv[1], field+".name", "%q is not a port name: use 1-15 lower-case letters, digits and single '-', with at least one letter (RFC 6335), e.g. http", v)
				return pt, false
			}
			pt.Name = v
		}
		return pt, true
	}
	p.errorf(n, field, "want a port such as 80, \"53/udp\" or {port: 443, protocol: tcp, name: https}, found %s", describe(n))
	return pt, false
}

func (p *parser) backends(s *Service, n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		p.errorf(n, "backends", "empty: list backends, or write backends: [] to refuse connections")
		return
	}
	list := items(n)
	for i, it := range list {
		field := fmt.Sprintf("backends[%d]", i)
		if b, ok := p.backend(s, it, field); ok {
			s.Backends = append(s.Backends, b)
		}
	}
	if len(p.errs) > 0 {
		return
	}
	// The same destination twice, on any port, would be one backend with
	// two weights. (A backends document, without ports, by name.)
	if s.BackendsOnly {
		seen := map[string]int{}
		for i, b := range s.Backends {
			if j, dup := seen[b.Name()]; dup {
				p.errorf(list[i], fmt.Sprintf("backends[%d]", i), "%s is listed twice (also backends[%d]): give one entry a weight instead", b.Name(), j)
				return
			}
			seen[b.Name()] = i
		}
	}
	for _, port := range s.Ports {
		seen := map[netip.AddrPort]int{}
		for i, b := range s.Backends {
			dst := netip.AddrPortFrom(b.Addr, b.TargetPort(port))
			if j, dup := seen[dst]; dup {
				p.errorf(list[i], fmt.Sprintf("backends[%d]", i), "%s is listed twice for port %s (also backends[%d]): give one entry a weight instead", dst, port, j)
				return
			}
			seen[dst] = i
		}
	}
	if slots := slotsNeeded(s.Backends); slots > lb.MaxSlots {
		p.errorf(n, "backends", "weights need %d slots after dividing by their common divisor, at most %d: lower the weights", slots, lb.MaxSlots)
	}
}

func slotsNeeded(bs []Backend) int {
	lbs := make([]lb.Backend, len(bs))
	for i, b := range bs {
		lbs[i] = lb.Backend{Weight: b.Weight}
	}
	return lb.SlotCount(lbs)
}

func (p *parser) backend(s *Service, n *yaml.Node, field string) (Backend, bool) {
	b := Backend{Weight: 1, Pos: posOf(n)}
	switch n.Kind {
	case yaml.ScalarNode:
		return b, p.backendAddr(&b, n, field)
	case yaml.MappingNode:
		f := p.fields(n, field, backendFields)
		kv, ok := f["address"]
		if !ok {
			p.errorf(n, field+".address", "missing: a backend entry needs an address such as 10.0.0.1:8080")
			return b, false
		}
		if !p.backendAddr(&b, kv[1], field+".address") {
			return b, false
		}
		if kv, ok := f["weight"]; ok {
			w, ok := p.number(kv[1], field+".weight", "weight", 1, 65535)
			if !ok {
				return b, false
			}
			b.Weight = uint16(w)
		}
		if kv, ok := f["state"]; ok {
			v, ok := p.oneOf(kv[1], field+".state", "backend state", backendStates)
			if !ok {
				return b, false
			}
			b.State, _ = lb.ParseBackendState(v)
		}
		if kv, ok := f["ports"]; ok {
			if s.BackendsOnly {
				p.errorf(kv[0], field+".ports", "not in a backends document: its backends serve the service's ports on their own port (address:port), or on the service's port numbers")
				return b, false
			}
			return b, p.backendPorts(s, &b, kv[1], field+".ports")
		}
		return b, true
	}
	p.errorf(n, field, "want an address such as 10.0.0.1:8080 or {address: 10.0.0.1, weight: 2}, found %s", describe(n))
	return b, false
}

func (p *parser) backendAddr(b *Backend, n *yaml.Node, field string) bool {
	v, ok := p.str(n, field)
	if !ok {
		return false
	}
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(v); err == nil {
		a = ap.Addr()
		if ap.Port() == 0 {
			p.errorf(n, field, "%s: port 0 is not allowed (1-65535)", v)
			return false
		}
		b.Port = ap.Port()
	} else if a, err = netip.ParseAddr(v); err != nil {
		p.errorf(n, field, "%q is not an IP address with optional port (want e.g. 10.0.0.1:8080, [fd00::1]:8080, or 10.0.0.1 to use the service port; host names are not resolved)", v)
		return false
	}
	switch {
	case a.Zone() != "":
		p.errorf(n, field, "%s: addresses with a zone are not allowed", v)
		return false
	case a.IsUnspecified() || a.IsMulticast() || a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		p.errorf(n, field, "%s cannot be a backend: want a unicast address", v)
		return false
	}
	b.Addr = a.Unmap()
	return true
}

func (p *parser) backendPorts(s *Service, b *Backend, n *yaml.Node, field string) bool {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "want a mapping from service port to backend port, e.g. {https: 8443, 80: 8080}, found %s", describe(n))
		return false
	}
	b.Ports = map[string]uint16{}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.ContainsFunc(s.Ports, func(pt Port) bool {
			return k.Value == pt.Name || k.Value == fmt.Sprint(pt.Number) || k.Value == pt.String()
		}) {
			p.errorf(k, field, "%q is not one of the service's ports (by name, number or number/protocol)", k.Value)
			ok = false
			continue
		}
		if _, dup := b.Ports[k.Value]; dup {
			p.errorf(k, field, "%q is set twice", k.Value)
			ok = false
			continue
		}
		nr, good := p.number(v, field+"."+k.Value, "port", 1, 65535)
		if !good {
			ok = false
			continue
		}
		b.Ports[k.Value] = uint16(nr)
	}
	return ok
}

// families works out the VIP families and checks that every backend can
// serve every VIP the way the kernel allows.
func (p *parser) families(s *Service, backendsKey *yaml.Node) {
	hasUDP := slices.ContainsFunc(s.Ports, func(pt Port) bool { return pt.Proto == lb.UDP })
	if len(s.VIPs) > 0 {
		for i, vip := range s.VIPs {
			s.Families = append(s.Families, FamilyOf(vip))
			for j, b := range s.Backends {
				field := fmt.Sprintf("backends[%d]", j)
				n := &yaml.Node{Line: b.Pos.Line, Column: b.Pos.Column}
				switch {
				case FamilyOf(vip) == IPv4 && FamilyOf(b.Addr) == IPv6:
					p.errorf(n, field, "IPv6 backend %s cannot serve IPv4 VIP %s (line %d): an IPv4 socket cannot be sent to IPv6; add an IPv6 vip, or use IPv4 backends", b.Addr, vip, s.VIPPos[i].Line)
				case FamilyOf(vip) == IPv6 && FamilyOf(b.Addr) == IPv4 && hasUDP:
					p.errorf(n, field, "IPv4 backend %s cannot serve the UDP ports of IPv6 VIP %s (line %d): the kernel cannot redirect unconnected IPv6 datagrams to IPv4; use an IPv4 vip, or IPv6 backends", b.Addr, vip, s.VIPPos[i].Line)
				}
			}
		}
		return
	}
	var has4, has6 bool
	for _, b := range s.Backends {
		has4 = has4 || FamilyOf(b.Addr) == IPv4
		has6 = has6 || FamilyOf(b.Addr) == IPv6
	}
	if len(s.Backends) == 0 && hasUDP {
		// No backend of its own (backends documents bring them): with
		// both families, UDP would refuse every backend (IPv6 ones cannot
		// serve the IPv4 VIP, IPv4 ones the IPv6 VIP), so the VIP is
		// derived in IPv4 alone, as if its backends were IPv4. A service
		// for IPv6 backends sets its vip.
		has4 = true
	}
	if !has6 {
		s.Families = append(s.Families, IPv4)
	}
	if !(hasUDP && has4) {
		s.Families = append(s.Families, IPv6)
	}
	if len(s.Families) == 0 {
		p.errorf(backendsKey, "backends", "IPv4 and IPv6 backends behind UDP ports: no VIP can reach both (IPv4 VIPs cannot reach IPv6 backends; IPv6 UDP cannot be redirected to IPv4); split the service in two, one per family")
	}
}

// localName checks that getsockname can tell which VIP to report: one VIP,
// and no backend address serving two of the service's ports.
func (p *parser) localName(s *Service, n *yaml.Node) {
	if len(s.Families) > 1 {
		p.errorf(n, "local_name", "needs exactly one VIP to report, but the service has an IPv4 and an IPv6 one: set vip: to a single address")
		return
	}
	seen := map[string]Port{}
	for _, pt := range s.Ports {
		for _, b := range s.Backends {
			dst := fmt.Sprintf("%s/%s", netip.AddrPortFrom(b.Addr, b.TargetPort(pt)), pt.Proto)
			if prev, dup := seen[dst]; dup && prev != pt {
				p.errorf(n, "local_name", "backend %s serves both port %s and port %s, so getsockname cannot tell which VIP port to report: give the ports different backend ports", dst, prev, pt)
				return
			}
			seen[dst] = pt
		}
	}
}

// health parses a check: its type alone (health: tcp) for that type's
// defaults, or a mapping whose unset fields take them.
func (p *parser) health(n *yaml.Node) *health.Check {
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag != "!!null":
		v, ok := p.oneOf(n, "health", "check type", healthKinds)
		if !ok {
			return nil
		}
		k, _ := health.ParseKind(v)
		c := health.Defaults(k)
		return &c
	case n.Kind == yaml.MappingNode:
		return p.healthCheck(n)
	}
	p.errorf(n, "health", "want a check type (%s) or a mapping such as {type: http, path: /healthz}, found %s", orList(healthKinds), describe(n))
	return nil
}

func (p *parser) healthCheck(n *yaml.Node) *health.Check {
	before := len(p.errs)
	f := p.fields(n, "health", healthFields)
	kv, ok := f["type"]
	if !ok {
		p.errorf(n, "health.type", "missing: a check needs a type (%s)", orList(healthKinds))
		return nil
	}
	v, ok := p.oneOf(kv[1], "health.type", "check type", healthKinds)
	if !ok {
		return nil
	}
	k, _ := health.ParseKind(v)
	c := health.Defaults(k)
	allowed := healthKindFields[k]
	for _, name := range healthFields {
		if kv, ok := f[name]; ok && !slices.Contains(allowed, name) {
			owner := checkKinds[slices.IndexFunc(checkKinds, func(o health.Kind) bool {
				return slices.Contains(healthKindFields[o], name)
			})]
			p.errorf(kv[0], "health."+name, "only %s checks take %s; this %s check takes %s", owner, name, k, strings.Join(allowed, ", "))
			delete(f, name)
		}
	}
	if kv, ok := f["port"]; ok {
		port, _ := p.number(kv[1], "health.port", "port", 1, 65535)
		c.Port = uint16(port)
	}
	intervalOK := true
	if kv, ok := f["interval"]; ok {
		want := fmt.Sprintf("a duration from %s to %s, such as 2s or 500ms", short(minInterval), short(maxInterval))
		c.Interval, intervalOK = p.duration(kv[1], "health.interval", "interval", minInterval, maxInterval, want)
	}
	if kv, ok := f["timeout"]; ok {
		hi, want := maxInterval, "a duration above 0 and at most the interval, such as 1s"
		if intervalOK {
			hi, want = c.Interval, fmt.Sprintf("a duration above 0 and at most the interval (%s), such as 1s", short(c.Interval))
		}
		c.Timeout, _ = p.duration(kv[1], "health.timeout", "timeout", time.Nanosecond, hi, want)
	} else if c.Timeout > c.Interval {
		c.Timeout = c.Interval // a short interval shortens the default timeout
	}
	if kv, ok := f["rise"]; ok {
		c.Rise, _ = p.number(kv[1], "health.rise", "count", 1, 100)
	}
	if kv, ok := f["fall"]; ok {
		c.Fall, _ = p.number(kv[1], "health.fall", "count", 1, 100)
	}
	if kv, ok := f["path"]; ok {
		if v, ok := p.str(kv[1], "health.path"); ok {
			if !strings.HasPrefix(v, "/") || strings.ContainsFunc(v, unprintable) {
				p.errorf(kv[1], "health.path", "%q is not a valid path: want one starting with '/', without spaces or control characters, such as /healthz", v)
			}
			c.Path = v
		}
	}
	if kv, ok := f["host"]; ok {
		if v, ok := p.str(kv[1], "health.host"); ok {
			if v == "" || strings.ContainsFunc(v, unprintable) || strings.ContainsAny(v, "/?#@") {
				p.errorf(kv[1], "health.host", "%q is not a valid host: want a name for the Host header, with an optional port, such as example.org or example.org:8080", v)
			}
			c.Host = v
		}
	}
	if kv, ok := f["status"]; ok {
		c.StatusMin, c.StatusMax, _ = p.status(kv[1], "health.status")
	}
	if kv, ok := f["query"]; ok {
		if v, ok := p.str(kv[1], "health.query"); ok {
			if _, ok := dns.IsDomainName(v); !ok || strings.ContainsFunc(v, unprintable) {
				p.errorf(kv[1], "health.query", "%q is not a valid query: want a domain name such as example.org, or . for the root", v)
			}
			c.Query = dns.Fqdn(v)
		}
	}
	if kv, ok := f["qtype"]; ok {
		if v, ok := p.str(kv[1], "health.qtype"); ok {
			t, found := dns.StringToType[strings.ToUpper(v)]
			if !found || !queryType(t) {
				p.errorf(kv[1], "health.qtype", "%q is not a DNS query type: want a record type such as A, AAAA, NS, SOA, SRV or TXT", v)
			}
			c.QType = t
		}
	}
	if len(p.errs) > before {
		return nil
	}
	return &c
}

// unprintable reports characters that do not belong in a path, host or
// query name: spaces, control characters and anything beyond ASCII.
func unprintable(r rune) bool { return r <= ' ' || r >= 0x7f }

// queryType reports whether a check may ask for records of type t: not
// the pseudo-types (EDNS, TSIG) nor zone transfers, which need TCP.
func queryType(t uint16) bool {
	switch t {
	case dns.TypeNone, dns.TypeOPT, dns.TypeTKEY, dns.TypeTSIG, dns.TypeIXFR, dns.TypeAXFR,
		dns.TypeMAILA, dns.TypeMAILB, dns.TypeReserved:
		return false
	}
	return true
}

// status parses a code (204) or a range of codes (200-399).
func (p *parser) status(n *yaml.Node, field string) (lo, hi int, ok bool) {
	const want = "a code from 100 to 599 or a range of them, lower first, such as 204 or 200-399"
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		p.errorf(n, field, "want %s, found %s", want, describe(n))
		return 0, 0, false
	}
	a, b, isRange := strings.Cut(n.Value, "-")
	lo, errLo := strconv.Atoi(a)
	hi, errHi := lo, error(nil)
	if isRange {
		hi, errHi = strconv.Atoi(b)
	}
	if errLo != nil || errHi != nil || lo < 100 || hi > 599 || lo > hi {
		p.errorf(n, field, "%q is not a valid status: want %s", n.Value, want)
		return 0, 0, false
	}
	return lo, hi, true
}

// healthPort checks that the check has a port to probe: its own, or the
// backends' port for the service's first port of the check's protocol.
func (p *parser) healthPort(s *Service, n *yaml.Node) {
	c := s.Health
	if c.Port != 0 {
		return
	}
	proto, example := lb.TCP, 8080
	if c.Kind == health.DNS {
		proto, example = lb.UDP, 53
	}
	if slices.ContainsFunc(s.Ports, func(pt Port) bool { return pt.Proto == proto }) {
		return
	}
	p.errorf(n, "health", "%s checks probe the backends on the service's first %s port, and the service has none: give the check a port, e.g. {type: %s, port: %d}", c.Kind, proto, c.Kind, example)
}

// picking parses how a backend is picked (policy, maglev, client and
// affinity) and checks that the fields fit together.
func (p *parser) picking(s *Service, f map[string][2]*yaml.Node) {
	policyOK, affinityOK := true, true
	policy := "the policy is random, the default"
	if kv, ok := f["policy"]; ok {
		var v string
		if v, policyOK = p.oneOf(kv[1], "policy", "policy", policies); policyOK {
			s.Policy, _ = lb.ParsePolicy(v)
			policy = "the policy is " + v
		}
	}
	if kv, ok := f["affinity"]; ok {
		want := fmt.Sprintf("a duration from %s to %s, such as 10m", short(minAffinity), short(maxAffinity))
		s.Affinity, affinityOK = p.duration(kv[1], "affinity", "affinity", minAffinity, maxAffinity, want)
	}
	if kv, ok := f["maglev"]; ok {
		table, ok := p.maglev(kv[1])
		switch {
		case !ok:
		case policyOK && s.Policy != lb.Maglev:
			p.errorf(kv[0], "maglev", "needs policy: maglev (%s): set that policy or leave maglev out", policy)
		default:
			s.MaglevTable = table
		}
	}
	if kv, ok := f["client"]; ok {
		v, ok := p.oneOf(kv[1], "client", "client key", clientKeys)
		switch {
		case !ok:
		case policyOK && affinityOK && s.Policy != lb.Maglev && s.Affinity == 0:
			p.errorf(kv[0], "client", "used only by policy: maglev and by affinity, and the service has neither (%s): set one or leave client out", policy)
		default:
			s.Client, _ = lb.ParseClientKey(v)
		}
	}
}

// maglev parses {table: N}; the table is 0 when not set.
func (p *parser) maglev(n *yaml.Node) (int, bool) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "maglev", "want a mapping such as {table: 16381}, found %s", describe(n))
		return 0, false
	}
	f := p.fields(n, "maglev", maglevFields)
	kv, ok := f["table"]
	if !ok {
		return 0, true
	}
	sizes := make([]string, len(lb.MaglevTables))
	for i, t := range lb.MaglevTables {
		sizes[i] = strconv.Itoa(t)
	}
	want := "one of " + orList(sizes)
	if kv[1].Kind != yaml.ScalarNode || (kv[1].Tag != "!!int" && kv[1].Tag != "!!str") {
		p.errorf(kv[1], "maglev.table", "want a table size, %s, found %s", want, describe(kv[1]))
		return 0, false
	}
	t, err := strconv.Atoi(kv[1].Value)
	if err != nil || !slices.Contains(lb.MaglevTables, t) {
		p.errorf(kv[1], "maglev.table", "%q is not a Maglev table size: want %s (primes)", kv[1].Value, want)
		return 0, false
	}
	return t, true
}
