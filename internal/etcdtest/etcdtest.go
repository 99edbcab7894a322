// Package etcdtest starts a real etcd (/usr/bin/etcd) for tests: one
// member on free ports of a local address, its data under the test's
// temporary directory, killed and removed when the test ends. Tests that
// use it must run in the test network namespace (testenv.Main in TestMain,
// testenv.RequirePrivileged in the test).
package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Binary is the etcd server the tests start (Debian's etcd-server).
var Binary = "/usr/bin/etcd"

// startWait bounds how long Start and Restart wait for etcd to answer.
const startWait = 20 * time.Second

// Server is an etcd process started by a test.
type Server struct {
	// Endpoint is the client address, "IP:PORT" (URL has the scheme).
	Endpoint string
	// DataDir is the member's data directory.
	DataDir string
	// Name is the member's name.
	Name string

	ip                   string
	opts                 Options
	tls                  *tls.Config // for clients, when etcd serves TLS
	clientPort, peerPort int
	out                  *syncBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts etcd on 127.0.0.1 with a fresh data directory and waits
// until it answers a Get. The process is killed (SIGKILL) and its data
// removed when the test ends; its output is shown if the test failed.
func Start(tb testing.TB) *Server {
	tb.Helper()
	return StartOn(tb, "127.0.0.1")
}

// StartOn is Start with etcd listening on ip (which must be an address of
// this network namespace) for both clients and peers.
func StartOn(tb testing.TB, ip string) *Server {
	tb.Helper()
	return StartWith(tb, Options{IP: ip})
}

// Options say how StartWith starts etcd.
type Options struct {
	// IP is the address etcd listens on; 127.0.0.1 when empty.
	IP string
	// CertFile and KeyFile (PEM), when set, make clients talk TLS to etcd
	// with this certificate. Client verifies it against CAFile.
	CertFile, KeyFile, CAFile string
	// ClientCertAuth makes etcd require clients' certificates signed by
	// CAFile; Client presents CertFile and KeyFile.
	ClientCertAuth bool
}

// StartWith is Start with options.
func StartWith(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if _, err := os.Stat(Binary); err != nil {
		tb.Fatalf("etcd server not installed (apt-get install etcd-server): %v", err)
	}
	if opts.IP == "" {
		opts.IP = "127.0.0.1"
	}
	s := &Server{
		Name:    "sockmesh-test",
		DataDir: filepath.Join(tb.TempDir(), "etcd"), // etcd creates it 0700
		ip:      opts.IP,
		opts:    opts,
		out:     &syncBuffer{},
	}
	if opts.CertFile != "" {
		var err error
		if s.tls, err = s.clientTLS(); err != nil {
			tb.Fatal(err)
		}
	}
	ip := opts.IP
	tb.Cleanup(func() {
		s.kill()
		if tb.Failed() {
			tb.Logf("etcd %s output:\n%s", s.Endpoint, s.out.String())
		}
	})
	// Free ports are found by binding :0 and closing: another process may
	// take one before etcd binds it, so try again on a clash.
	var err error
	for range 5 {
		if s.clientPort, err = freePort(ip); err != nil {
			tb.Fatalf("find a free port on %s: %v", ip, err)
		}
		if s.peerPort, err = freePort(ip); err != nil {
			tb.Fatalf("find a free port on %s: %v", ip, err)
		}
		if s.clientPort == s.peerPort {
			continue
		}
		s.Endpoint = net.JoinHostPort(ip, strconv.Itoa(s.clientPort))
		before := len(s.out.String())
		if err = s.start(); err == nil {
			return s
		}
		if !strings.Contains(s.out.String()[before:], "address already in use") {
			break
		}
		_ = os.RemoveAll(s.DataDir)
	}
	tb.Fatalf("start etcd: %v\netcd output:\n%s", err, s.out.String())
	return nil
}

// Stop kills etcd (SIGKILL) and waits until it is gone; the data
// directory stays, for Restart.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	s.kill()
}

// Pause stops etcd with SIGSTOP: its connections stay open but nothing
// answers, as with a hung server or a host cut off without a reset.
func (s *Server) Pause(tb testing.TB) {
	tb.Helper()
	s.signal(tb, syscall.SIGSTOP)
}

// Resume continues a paused etcd (SIGCONT).
func (s *Server) Resume(tb testing.TB) {
	tb.Helper()
	s.signal(tb, syscall.SIGCONT)
}

func (s *Server) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		tb.Fatalf("etcd %s is not running", s.Endpoint)
	}
	select {
	case <-s.done:
		tb.Fatalf("etcd %s exited", s.Endpoint)
	default:
	}
	if err := syscall.Kill(s.cmd.Process.Pid, sig); err != nil {
		tb.Fatalf("signal etcd: %v", err)
	}
}

// Restart starts etcd again on the same ports and data directory (killing
// it first if it runs) and waits until it answers.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.kill()
	if err := s.start(); err != nil {
		tb.Fatalf("restart etcd: %v\netcd output:\n%s", err, s.out.String())
	}
}

// Wipe kills etcd, removes its data directory and starts a new cluster
// on the same ports: a history that starts over, as after an operator
// lost the data.
func (s *Server) Wipe(tb testing.TB) {
	tb.Helper()
	s.kill()
	if err := os.RemoveAll(s.DataDir); err != nil {
		tb.Fatalf("wipe etcd: %v", err)
	}
	if err := s.start(); err != nil {
		tb.Fatalf("start a wiped etcd: %v\netcd output:\n%s", err, s.out.String())
	}
}

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	c, err := s.newClient()
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Output is what etcd printed so far.
func (s *Server) Output() string { return s.out.String() }

// URL is the client URL, http:// or https://.
func (s *Server) URL() string { return s.url(s.clientPort, s.tls != nil) }

func (s *Server) newClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.URL()},
		TLS:         s.tls,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithNoProxy(),
			// gRPC waits 1 s, growing to 2 min, before it dials again:
			// too slow for a server restarted by a test.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
				MinConnectTimeout: time.Second,
			}),
		},
	})
}

func (s *Server) url(port int, tls bool) string {
	scheme := "http://"
	if tls {
		scheme = "https://"
	}
	return scheme + net.JoinHostPort(s.ip, strconv.Itoa(port))
}

// clientTLS is the TLS configuration of the server's clients.
func (s *Server) clientTLS() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.opts.CAFile != "" {
		pem, err := os.ReadFile(s.opts.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", s.opts.CAFile)
		}
	}
	if s.opts.ClientCertAuth {
		cert, err := tls.LoadX509KeyPair(s.opts.CertFile, s.opts.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// start starts the process and waits until it answers.
func (s *Server) start() error {
	clientURL, peerURL := s.URL(), s.url(s.peerPort, false)
	args := []string{
		"--name", s.Name,
		"--data-dir", s.DataDir,
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", s.Name + "=" + peerURL,
		"--initial-cluster-state", "new",
		// A single member elects itself after one election timeout: keep it
		// short so tests start fast.
		"--heartbeat-interval", "20",
		"--election-timeout", "200",
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "error",
	}
	if s.opts.CertFile != "" {
		args = append(args, "--cert-file", s.opts.CertFile, "--key-file", s.opts.KeyFile)
	}
	if s.opts.ClientCertAuth {
		args = append(args, "--client-cert-auth", "--trusted-ca-file", s.opts.CAFile)
	}
	cmd := exec.Command(Binary, args...)
	// The machine's ETCD_* variables would override the flags.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	fmt.Fprintf(s.out, "--- %s %s\n", time.Now().Format(time.TimeOnly), strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(s.out, "--- %s etcd (pid %d) exited: %v\n", time.Now().Format(time.TimeOnly), cmd.Process.Pid, err)
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	if err := s.waitAnswers(done); err != nil {
		s.kill()
		return err
	}
	return nil
}

// waitAnswers waits until a Get succeeds, the process exits, or startWait
// passes.
func (s *Server) waitAnswers(exited <-chan struct{}) error {
	c, err := s.newClient()
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(startWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := c.Get(ctx, "etcdtest-ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("etcd exited before it answered")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd did not answer within %v: %w", startWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL to the process this Server started, if it runs, and
// waits until it has exited.
func (s *Server) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// freePort returns a port nothing listens on at ip right now.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer is a bytes.Buffer safe for the process's output and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
