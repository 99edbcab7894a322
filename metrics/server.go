package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server serves /metrics over HTTP.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	errs chan error
	done chan struct{}
}

// Listen serves /metrics on addr (host:port; port 0 picks a free one) and
// returns once it is listening. The page holds c and the standard Go and
// process collectors, gathered from a registry of their own (not the
// global one), plus the handler's own promhttp_metric_handler_* metrics.
// Errors from serving arrive on Errors; Close stops the server.
func Listen(addr string, c prometheus.Collector) (*Server, error) {
	reg := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		c,
	} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register collector: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg,
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics: %w", err)
	}
	s := &Server{
		ln:   ln,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		errs: make(chan error, 1),
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		defer close(s.errs)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("serve metrics on %s: %w", ln.Addr(), err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Errors receives at most one error, should the server stop on its own,
// and is closed when the server has stopped.
func (s *Server) Errors() <-chan error { return s.errs }

// Close stops the server, drops open connections and waits for it to
// stop.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if err != nil {
		return fmt.Errorf("close metrics server: %w", err)
	}
	return nil
}
