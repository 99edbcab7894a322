// Package etcdsource serves service documents from an etcd key prefix: each
// key below the prefix holds one service in the service-file format. Source
// feeds them to the registry (a full list, then changes as etcd's watch
// reports them, and whether etcd can be reached); List, Get, Put and Delete
// are what the registry commands of the CLI need; Publisher keeps a host's
// own documents alive under a lease.
package etcdsource

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

const (
	// DefaultPrefix is the key prefix of a URL without a path.
	DefaultPrefix = "/sockmesh/services/"
	// DefaultPort is the port of an endpoint without one.
	DefaultPort = "2379"
	// DefaultDialTimeout is Config.DialTimeout when it is zero.
	DefaultDialTimeout = 5 * time.Second
)

// Config says how to reach etcd and which prefix holds the services.
type Config struct {
	// Endpoints are the members' client addresses, host:port.
	Endpoints []string
	// Prefix is the key prefix, e.g. "/sockmesh/services/"; it starts and
	// ends with "/".
	Prefix string
	// TLS, when not nil, is used to reach every endpoint; nil is plain.
	TLS *tls.Config
	// Username and Password authenticate to etcd when both are set.
	Username, Password string
	// DialTimeout bounds authentication when the client is created;
	// DefaultDialTimeout when zero.
	DialTimeout time.Duration
}

// urlForm is what ParseURL accepts, for its errors.
const urlForm = "etcd://host:port[,host:port]/prefix, or etcds:// for TLS"

// ParseURL parses a registry URL: etcd://host:port[,host:port]/prefix, or
// etcds:// for TLS (verified against the system's CAs unless the caller
// sets Config.TLS, e.g. from TLSConfig). An endpoint without a port gets
// DefaultPort; an IPv6 address is written in brackets. A URL without a
// path has DefaultPrefix; the prefix always ends in "/". user:password@
// before the endpoints is accepted (percent-escaped), but a password in a
// URL shows in ps: prefer the command's flags.
func ParseURL(s string) (Config, error) {
	cfg := Config{DialTimeout: DefaultDialTimeout}
	if s == "" {
		return cfg, fmt.Errorf("empty registry URL: want %s", urlForm)
	}
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return cfg, fmt.Errorf("%q: spaces and control characters are not allowed", s)
	}
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		if rest, ok = strings.CutPrefix(s, "etcds://"); !ok {
			scheme, _, found := strings.Cut(s, "://")
			if !found {
				return cfg, fmt.Errorf("%q has no scheme: want %s", s, urlForm)
			}
			return cfg, fmt.Errorf("%q: unknown scheme %q: want %s", s, scheme, urlForm)
		}
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if strings.ContainsAny(rest, "?#") {
		return cfg, fmt.Errorf("%q: a query (?) or fragment (#) is not allowed: want %s", s, urlForm)
	}
	authority, path, hasPath := strings.Cut(rest, "/")
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		var err error
		if cfg.Username, cfg.Password, err = parseUserinfo(authority[:i]); err != nil {
			return cfg, fmt.Errorf("%q: %w", s, err)
		}
		authority = authority[i+1:]
	}
	if authority == "" {
		return cfg, fmt.Errorf("%q has no endpoint: want %s", s, urlForm)
	}
	for ep := range strings.SplitSeq(authority, ",") {
		ep, err := parseEndpoint(ep)
		if err != nil {
			return cfg, fmt.Errorf("%q: %w", s, err)
		}
		cfg.Endpoints = append(cfg.Endpoints, ep)
	}
	path = strings.TrimRight(path, "/")
	switch {
	case !hasPath:
		cfg.Prefix = DefaultPrefix
	case path == "":
		return cfg, fmt.Errorf("%q: prefix / would serve every key of etcd: name a prefix, e.g. %s, or leave the path out for that default", s, DefaultPrefix)
	default:
		cfg.Prefix = "/" + path + "/"
	}
	return cfg, nil
}

// parseUserinfo parses user[:password], percent-escaped.
func parseUserinfo(s string) (user, password string, err error) {
	u, p, hasPassword := strings.Cut(s, ":")
	if user, err = url.PathUnescape(u); err != nil {
		return "", "", errors.New("bad % escape in the user name")
	}
	if user == "" {
		return "", "", errors.New("empty user name before @: want user[:password]@, or no @ at all")
	}
	if hasPassword {
		if password, err = url.PathUnescape(p); err != nil {
			return "", "", errors.New("bad % escape in the password")
		}
	}
	return user, password, nil
}

// parseEndpoint checks host[:port] and returns it as host:port.
func parseEndpoint(ep string) (string, error) {
	if ep == "" {
		return "", errors.New("empty endpoint: want host:port, separated by commas")
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		switch {
		case strings.HasPrefix(ep, "[") && strings.HasSuffix(ep, "]"):
			host, port = ep[1:len(ep)-1], DefaultPort
		case strings.Count(ep, ":") > 1:
			return "", fmt.Errorf("endpoint %q: write an IPv6 address in brackets, e.g. [::1]:%s", ep, DefaultPort)
		case !strings.Contains(ep, ":"):
			host, port = ep, DefaultPort
		default:
			return "", fmt.Errorf("endpoint %q: want host:port", ep)
		}
	}
	if host == "" {
		return "", fmt.Errorf("endpoint %q: the host is missing: want host:port", ep)
	}
	if strings.ContainsAny(host, "[]@/") {
		return "", fmt.Errorf("endpoint %q: want host:port, [IPv6]:port", ep)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || port != strconv.FormatUint(n, 10) {
		return "", fmt.Errorf("endpoint %q: port %q: want a number from 1 to 65535", ep, port)
	}
	return net.JoinHostPort(host, port), nil
}

// URL is the canonical form of the configuration, etcd://host:port,...
// followed by the prefix without its trailing slash, so that
// registry.DocPath(URL(), key) reads as the key's full name. It holds no
// user name or password: it names the source in logs, status and the
// state file, whoever authenticates.
func (c Config) URL() string {
	scheme := "etcd://"
	if c.TLS != nil {
		scheme = "etcds://"
	}
	path := strings.TrimSuffix(c.Prefix, "/")
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return scheme + strings.Join(c.Endpoints, ",") + path
}

// check reports what makes the configuration unusable.
func (c Config) check() error {
	if len(c.Endpoints) == 0 {
		return errors.New("no etcd endpoints")
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") || c.Prefix == "/" {
		return fmt.Errorf("key prefix %q: want one that starts and ends with /, e.g. %s", c.Prefix, DefaultPrefix)
	}
	return nil
}

// reconnect is how often gRPC dials an endpoint that went away: every
// 100 ms at first, every second at most (gRPC's default grows to two
// minutes, so a registry would follow a restarted etcd late).
var reconnect = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   time.Second,
	},
	MinConnectTimeout: 5 * time.Second,
}

// Client connects to etcd. It does not wait for a connection, except to
// authenticate when a user is set (DialTimeout at most).
func (c Config) Client() (*clientv3.Client, error) { return c.client(nil) }

// client is Client; TLS failures go to tlsErr when it is not nil.
func (c Config) client(tlsErr *lastErr) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints")
	}
	scheme := "http://"
	if c.TLS != nil {
		scheme = "https://"
	}
	var eps []string
	for _, ep := range c.Endpoints {
		eps = append(eps, scheme+ep)
	}
	timeout := c.DialTimeout
	if timeout == 0 {
		timeout = DefaultDialTimeout
	}
	var tlsConfig *tls.Config
	opts := []grpc.DialOption{grpc.WithConnectParams(reconnect)}
	if c.TLS != nil {
		tlsConfig = c.TLS.Clone()
		if tlsErr != nil {
			// Replaces the credentials clientv3 makes of the same
			// configuration.
			opts = append(opts, grpc.WithTransportCredentials(tlsRecorder{credentials.NewTLS(tlsConfig), tlsErr}))
		}
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   eps,
		TLS:         tlsConfig,
		Username:    c.Username,
		Password:    c.Password,
		DialTimeout: timeout,
		// A connection that went silent (a host gone, a cable pulled) is
		// dropped and dialled again within 15 s. etcd refuses pings more
		// often than every 5 s.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// The client's own log is noise: failures reach the caller.
		Logger:      zap.NewNop(),
		DialOptions: opts,
	})
}

// lastErr is the last error of some kind, safe for concurrent use.
type lastErr struct {
	mu  sync.Mutex
	err error
}

func (e *lastErr) set(err error) {
	e.mu.Lock()
	e.err = err
	e.mu.Unlock()
}

func (e *lastErr) get() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// tlsRecorder keeps the last TLS failure of a client's connections in
// err: gRPC keeps it to itself and only reports, after a timeout, that no
// connection is ready. A server that refuses the client's certificate
// (TLS 1.3) says so after the handshake, on the first read: the
// connection's first read error counts too.
type tlsRecorder struct {
	credentials.TransportCredentials
	err *lastErr
}

func (r tlsRecorder) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := r.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		r.err.set(fmt.Errorf("TLS handshake: %w", err))
		return conn, info, err
	}
	return &firstReadConn{Conn: conn, err: r.err}, info, nil
}

func (r tlsRecorder) Clone() credentials.TransportCredentials {
	return tlsRecorder{r.TransportCredentials.Clone(), r.err}
}

// firstReadConn records a TLS connection's errors until a read succeeds
// (and then clears the last error): what the server said when it refused
// the client. A read error (the server's alert) wins over a write error
// (a broken pipe); gRPC closing the connection itself says nothing. Which
// one a refused connection meets first is a race.
type firstReadConn struct {
	net.Conn
	err      *lastErr
	read     atomic.Bool // a read succeeded
	recorded atomic.Bool // this connection recorded an error
}

func (c *firstReadConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.read.Load() {
		if n > 0 {
			c.read.Store(true)
			c.err.set(nil)
		} else if err != nil && !errors.Is(err, net.ErrClosed) {
			c.recorded.Store(true)
			c.err.set(fmt.Errorf("TLS: %w", err))
		}
	}
	return n, err
}

func (c *firstReadConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && !errors.Is(err, net.ErrClosed) && !c.read.Load() && !c.recorded.Swap(true) {
		c.err.set(fmt.Errorf("TLS: %w", err))
	}
	return n, err
}

// TLSConfig builds a TLS configuration as etcdctl's --cacert, --cert and
// --key do: caFile (PEM) holds the CAs that sign the servers' certificates
// (the system's when empty); certFile and keyFile (PEM, both or neither)
// are the client's certificate and key. The certificate and key are read
// again at a connection after either file changed (its size or time of
// change), so a certificate renewed on disk is used without a restart; a
// pair that does not load (half written, or not matching) leaves the last
// good one in use. The CAs are read once.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA certificates: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read CA certificates: no PEM certificate in %s", caFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		kp := &keyPair{certFile: certFile, keyFile: keyFile}
		if err := kp.reload(); err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		cfg.GetClientCertificate = kp.get
	case certFile != "":
		return nil, fmt.Errorf("client certificate %s without its key: give both or neither", certFile)
	case keyFile != "":
		return nil, fmt.Errorf("client key %s without its certificate: give both or neither", keyFile)
	}
	return cfg, nil
}

// keyPair is a client certificate read from files, again when they change.
type keyPair struct {
	certFile, keyFile string

	mu    sync.Mutex
	cert  *tls.Certificate // the last pair that loaded
	stamp [2]fileStamp     // of the files it loaded from
}

// fileStamp tells one version of a file from another.
type fileStamp struct {
	size  int64
	mtime time.Time
	ctime syscall.Timespec
}

func stampOf(path string) fileStamp {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: st.Size, mtime: time.Unix(st.Mtim.Unix()), ctime: st.Ctim}
}

// reload loads the pair if the files changed since the last load.
func (kp *keyPair) reload() error {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	now := [2]fileStamp{stampOf(kp.certFile), stampOf(kp.keyFile)}
	if kp.cert != nil && now == kp.stamp {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return err
	}
	kp.cert, kp.stamp = &cert, now
	return nil
}

// get is tls.Config.GetClientCertificate: the pair as the files hold it
// now, or the last good one.
func (kp *keyPair) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	_ = kp.reload() // on failure the last good pair stays
	kp.mu.Lock()
	defer kp.mu.Unlock()
	return kp.cert, nil
}
