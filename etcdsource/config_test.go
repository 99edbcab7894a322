package etcdsource

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in        string
		endpoints []string
		prefix    string
		tls       bool
		user, pw  string
		url       string // URL(); in when empty
	}{
		{in: "etcd://127.0.0.1:2379/sockmesh/services", endpoints: []string{"127.0.0.1:2379"}, prefix: "/sockmesh/services/"},
		{in: "etcd://127.0.0.1:2379/sockmesh/services/", endpoints: []string{"127.0.0.1:2379"}, prefix: "/sockmesh/services/", url: "etcd://127.0.0.1:2379/sockmesh/services"},
		{in: "etcd://10.0.0.1:2379", endpoints: []string{"10.0.0.1:2379"}, prefix: DefaultPrefix, url: "etcd://10.0.0.1:2379/sockmesh/services"},
		{in: "etcd://etcd1,etcd2:12379,etcd3/x", endpoints: []string{"etcd1:2379", "etcd2:12379", "etcd3:2379"}, prefix: "/x/", url: "etcd://etcd1:2379,etcd2:12379,etcd3:2379/x"},
		{in: "etcds://[::1]:2379,[fd00::2]/a/b/c", endpoints: []string{"[::1]:2379", "[fd00::2]:2379"}, prefix: "/a/b/c/", tls: true, url: "etcds://[::1]:2379,[fd00::2]:2379/a/b/c"},
		{in: "etcd://root:s%40cret:x@h:1/p", endpoints: []string{"h:1"}, prefix: "/p/", user: "root", pw: "s@cret:x", url: "etcd://h:1/p"},
		{in: "etcds://alice@h:2379/p", endpoints: []string{"h:2379"}, prefix: "/p/", tls: true, user: "alice", url: "etcds://h:2379/p"},
		{in: "etcd://h:65535/p//", endpoints: []string{"h:65535"}, prefix: "/p/", url: "etcd://h:65535/p"},
		{in: "etcd://h:1//p", endpoints: []string{"h:1"}, prefix: "//p/"},
	} {
		cfg, err := ParseURL(tc.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.in, err)
			continue
		}
		if !slices.Equal(cfg.Endpoints, tc.endpoints) || cfg.Prefix != tc.prefix || (cfg.TLS != nil) != tc.tls ||
			cfg.Username != tc.user || cfg.Password != tc.pw || cfg.DialTimeout != DefaultDialTimeout {
			t.Errorf("ParseURL(%q) = %+v", tc.in, cfg)
		}
		want := tc.url
		if want == "" {
			want = tc.in
		}
		if got := cfg.URL(); got != want {
			t.Errorf("ParseURL(%q).URL() = %q, want %q", tc.in, got, want)
		}
		// The canonical form parses to the same place.
		again, err := ParseURL(cfg.URL())
		if err != nil || !slices.Equal(again.Endpoints, cfg.Endpoints) || again.Prefix != cfg.Prefix || (again.TLS != nil) != (cfg.TLS != nil) {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", cfg.URL(), again, err, cfg)
		}
	}
}

func TestParseURLErrors(t *testing.T) {
	const form = "etcd://host:port[,host:port]/prefix, or etcds:// for TLS"
	for _, tc := range []struct{ in, err string }{
		{"", "empty registry URL: want " + form},
		{"127.0.0.1:2379", `"127.0.0.1:2379" has no scheme: want ` + form},
		{"http://127.0.0.1:2379/x", `"http://127.0.0.1:2379/x": unknown scheme "http": want ` + form},
		{"etcd:///x", `"etcd:///x" has no endpoint: want ` + form},
		{"etcd://", `"etcd://" has no endpoint: want ` + form},
		{"etcd://u@/x", `"etcd://u@/x" has no endpoint: want ` + form},
		{"etcd://h:2379/", `"etcd://h:2379/": prefix / would serve every key of etcd: name a prefix, e.g. /sockmesh/services/, or leave the path out for that default`},
		{"etcd://h:2379/x?y=1", `"etcd://h:2379/x?y=1": a query (?) or fragment (#) is not allowed: want ` + form},
		{"etcd://h:2379/x#y", `"etcd://h:2379/x#y": a query (?) or fragment (#) is not allowed: want ` + form},
		{"etcd://h:2379/a b", `"etcd://h:2379/a b": spaces and control characters are not allowed`},
		{"etcd://a:1,,b:2/x", `"etcd://a:1,,b:2/x": empty endpoint: want host:port, separated by commas`},
		{"etcd://a:1,/x", `"etcd://a:1,/x": empty endpoint: want host:port, separated by commas`},
		{"etcd://h:99999/x", `"etcd://h:99999/x": endpoint "h:99999": port "99999": want a number from 1 to 65535`},
		{"etcd://h:0/x", `"etcd://h:0/x": endpoint "h:0": port "0": want a number from 1 to 65535`},
		{"etcd://h:/x", `"etcd://h:/x": endpoint "h:": port "": want a number from 1 to 65535`},
		{"etcd://h:http/x", `"etcd://h:http/x": endpoint "h:http": port "http": want a number from 1 to 65535`},
		{"etcd://h:02379/x", `"etcd://h:02379/x": endpoint "h:02379": port "02379": want a number from 1 to 65535`},
		{"etcd://:2379/x", `"etcd://:2379/x": endpoint ":2379": the host is missing: want host:port`},
		{"etcd://::1:2379/x", `"etcd://::1:2379/x": endpoint "::1:2379": write an IPv6 address in brackets, e.g. [::1]:2379`},
		{"etcd://[::1:2379/x", `"etcd://[::1:2379/x": endpoint "[::1:2379": write an IPv6 address in brackets, e.g. [::1]:2379`},
		{"etcd://h:1:2/x", `"etcd://h:1:2/x": endpoint "h:1:2": write an IPv6 address in brackets, e.g. [::1]:2379`},
		{"etcd://[h]x:1/x", `"etcd://[h]x:1/x": endpoint "[h]x:1": want host:port`},
		{"etcd://h:2379//", `"etcd://h:2379//": prefix / would serve every key of etcd: name a prefix, e.g. /sockmesh/services/, or leave the path out for that default`},
		{"etcd://@h:2379/x", `"etcd://@h:2379/x": empty user name before @: want user[:password]@, or no @ at all`},
		{"etcd://u%zz@h:2379/x", `"etcd://u%zz@h:2379/x": bad % escape in the user name`},
		{"etcd://u:p%@h:2379/x", `"etcd://u:p%@h:2379/x": bad % escape in the password`},
	} {
		_, err := ParseURL(tc.in)
		if err == nil || err.Error() != tc.err {
			t.Errorf("ParseURL(%q):\n got %v\nwant %s", tc.in, err, tc.err)
		}
	}
}

func TestNewChecksConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		err string
	}{
		{Config{Prefix: "/p/"}, "etcd registry etcd:///p: no etcd endpoints"},
		{Config{Endpoints: []string{"h:1"}, Prefix: "/p"}, `etcd registry etcd://h:1/p: key prefix "/p": want one that starts and ends with /, e.g. /sockmesh/services/`},
		{Config{Endpoints: []string{"h:1"}, Prefix: "p/"}, `etcd registry etcd://h:1/p: key prefix "p/": want one that starts and ends with /, e.g. /sockmesh/services/`},
		{Config{Endpoints: []string{"h:1"}, Prefix: "/"}, `etcd registry etcd://h:1/: key prefix "/": want one that starts and ends with /, e.g. /sockmesh/services/`},
	} {
		if _, err := New(tc.cfg, nil); err == nil || err.Error() != tc.err {
			t.Errorf("New(%+v):\n got %v\nwant %s", tc.cfg, err, tc.err)
		}
	}
	s, err := New(Config{Endpoints: []string{"h:1"}, Prefix: "/sockmesh/services/"}, nil)
	if err != nil || s.Name() != "etcd://h:1/sockmesh/services" {
		t.Errorf("New: %v, name %q", err, s.Name())
	}
}

// writePEM writes blocks of type typ to a file in dir.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testCerts makes a CA and a certificate it signed for 127.0.0.1 (usable
// by a server and a client); it returns the files' paths.
func testCerts(t *testing.T) (ca, cert, key string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sockmesh test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER),
		writePEM(t, dir, "cert.pem", "CERTIFICATE", leafDER),
		writePEM(t, dir, "key.pem", "PRIVATE KEY", keyDER)
}

func TestTLSConfig(t *testing.T) {
	ca, cert, key := testCerts(t)
	cfg, err := TLSConfig(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || cfg.GetClientCertificate == nil || cfg.MinVersion == 0 {
		t.Errorf("TLSConfig: %+v", cfg)
	}
	if c, err := cfg.GetClientCertificate(nil); err != nil || c == nil || len(c.Certificate) != 1 {
		t.Errorf("TLSConfig's client certificate: %v, %v", c, err)
	}
	if cfg, err := TLSConfig("", "", ""); err != nil || cfg.RootCAs != nil || cfg.GetClientCertificate != nil {
		t.Errorf(`TLSConfig("", "", ""): %+v, %v; want the system's CAs, no client certificate`, cfg, err)
	}
	if cfg, err := TLSConfig(ca, "", ""); err != nil || cfg.RootCAs == nil {
		t.Errorf("TLSConfig(ca only): %+v, %v", cfg, err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct{ ca, cert, key, err string }{
		{ca: missing, err: "read CA certificates: open " + missing + ": no such file or directory"},
		{ca: key, err: "read CA certificates: no PEM certificate in " + key},
		{cert: cert, err: "client certificate " + cert + " without its key: give both or neither"},
		{key: key, err: "client key " + key + " without its certificate: give both or neither"},
		{cert: key, key: cert, err: "load client certificate: tls: "},
	} {
		_, err := TLSConfig(tc.ca, tc.cert, tc.key)
		if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
			t.Errorf("TLSConfig(%q, %q, %q): %v, want %s", tc.ca, tc.cert, tc.key, err, tc.err)
		}
	}
}

// ParseURL never panics, and what it accepts has a canonical URL that
// parses to the same endpoints, prefix and scheme.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"etcd://127.0.0.1:2379/sockmesh/services", "etcds://[::1]:2379,[fd00::2]/a/b/c", "etcd://root:s%40cret@h:1/p",
		"etcd://h", "etcd://h:2379//", "etcd://a:1,,b:2/x", "etcd://::1:2379/x", "etcd://u%zz@h/x", "etcd://h/x?y", "etcd://[h]x:1/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := ParseURL(s)
		if err != nil {
			return
		}
		if len(cfg.Endpoints) == 0 || cfg.Prefix == "/" || !strings.HasPrefix(cfg.Prefix, "/") || !strings.HasSuffix(cfg.Prefix, "/") {
			t.Fatalf("ParseURL(%q) = %+v", s, cfg)
		}
		again, err := ParseURL(cfg.URL())
		if err != nil || !slices.Equal(again.Endpoints, cfg.Endpoints) || again.Prefix != cfg.Prefix || (again.TLS != nil) != (cfg.TLS != nil) {
			t.Fatalf("ParseURL(%q) = %+v; its URL %q parses to %+v, %v", s, cfg, cfg.URL(), again, err)
		}
		if _, err := New(cfg, nil); err != nil {
			t.Fatalf("New(ParseURL(%q)): %v", s, err)
		}
	})
}
