package metrics

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"sockmesh/lb"
)

func TestListen(t *testing.T) {
	s, err := Listen("127.0.0.1:0", NewCollector(fixed()))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	for _, want := range []string{"\nsockmesh_services 2\n", "\ngo_goroutines "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("GET /metrics: no %q line in\n%s", strings.TrimSpace(want), body)
		}
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err, ok := <-s.Errors(); ok {
		t.Errorf("Errors after Close: %v, want closed", err)
	}
	if _, err := http.Get("http://" + s.Addr().String() + "/metrics"); err == nil {
		t.Error("GET after Close succeeded")
	}
}

func TestListenError(t *testing.T) {
	if _, err := Listen("127.0.0.1:bad", NewCollector(Sources{})); err == nil {
		t.Fatal("Listen on a bad address succeeded")
	}
}

// TestListenDatapathError: a failing datapath read fails the whole scrape
// with HTTP 500 naming the error, so Prometheus marks the target down.
func TestListenDatapathError(t *testing.T) {
	src := fixed()
	src.Datapath = func() ([]lb.ServiceStats, error) { return nil, errors.New("boom") }
	s, err := Listen("127.0.0.1:0", NewCollector(src))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "read datapath stats: boom") {
		t.Errorf("GET /metrics: %s\n%s\nwant 500 naming the datapath error", resp.Status, body)
	}
}
