package registry

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperRenameDial runs inside the mesh cgroup. For each stdin line
// "TMP DST VIP:PORT" it renames TMP to DST and connects to VIP:PORT until
// a connect succeeds, then prints the nanoseconds from the rename to that
// connect. A connect before the VIP is live fails at once (the test
// namespace routes VIP ranges to unreachable).
func helperRenameDial(args []string) int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		start := time.Now()
		if err := os.Rename(f[0], f[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for {
			c, err := net.DialTimeout("tcp", f[2], time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(start) > 5*time.Second {
				fmt.Fprintln(os.Stderr, "not live after 5s:", err)
				return 1
			}
		}
		fmt.Println(time.Since(start).Nanoseconds())
	}
	return 0
}

// writeServices writes n service files with derived VIPs, straight into
// dir, and returns how long that took.
func writeServices(b *testing.B, dir string, n int) {
	b.Helper()
	for i := range n {
		body := fmt.Sprintf("name: svc-%d\nports: [80]\nbackends: [10.%d.%d.%d:8080]\n", i, i>>16&255, i>>8&255, i&255|1)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("svc-%05d.yaml", i)), []byte(body), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFileToVIP (run with -benchtime=1x) measures the time from the
// rename() of a new service file into services.d/ until a connect() to its
// VIP succeeds, over 100 files, with 0 and with 10,000 other services
// live. Target: median under 5 ms, worst under 20 ms.
func BenchmarkFileToVIP(b *testing.B) {
	for _, others := range []int{0, 10000} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			d, cg := openDatapath(b)
			backend := listenAccept(b)
			dir := tempDir(b)
			writeServices(b, dir, others)
			startRegistry(b, dir, d)

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			helper := cg.Helper(ctx, b, "rename-dial")
			stdin, err := helper.StdinPipe()
			if err != nil {
				b.Fatal(err)
			}
			stdout, err := helper.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			helper.Stderr = os.Stderr
			if err := helper.Start(); err != nil {
				b.Fatal(err)
			}
			defer helper.Wait()
			defer stdin.Close()
			lines := bufio.NewScanner(stdout)

			const files = 100
			var lat []time.Duration
			for i := range files {
				name := fmt.Sprintf("new-%d", i)
				vip := fmt.Sprintf("198.19.255.%d", i+1)
				tmp := filepath.Join(dir, "."+name+".yaml")
				body := fmt.Sprintf("name: %s\nvip: %s\nports: [80]\nbackends: [%s]\n", name, vip, backend)
				if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
					b.Fatal(err)
				}
				fmt.Fprintf(stdin, "%s %s %s:80\n", tmp, filepath.Join(dir, name+".yaml"), vip)
				if !lines.Scan() {
					b.Fatalf("helper stopped after %d files", i)
				}
				ns, err := strconv.ParseInt(lines.Text(), 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Duration(ns))
				time.Sleep(5 * time.Millisecond) // let the registry go idle, as between real edits
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "worst-ms")
			fmt.Printf("file-to-VIP with %d other services: median %v, p99 %v, worst %v (target: median < 5ms, worst < 20ms)\n",
				others, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
		})
	}
}

// BenchmarkColdStart measures loading 10,000 service files from cold: a
// new registry reads, validates and derives every file and writes the
// real datapath maps. Target: under 1 s.
func BenchmarkColdStart(b *testing.B) {
	const n = 10000
	d, _ := openDatapath(b)
	dir := tempDir(b)
	writeServices(b, dir, n)
	var best time.Duration
	for round := range 3 {
		if _, err := d.Apply(nil); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		r, err := New(Options{Dir: dir, Limits: d.Limits(), Logger: quietLogger(b)}, d)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		<-r.Ready()
		took := time.Since(start)
		cancel()
		<-done
		s := r.Snapshot()
		if len(s.Services) != n || len(s.Errors) != 0 || len(d.Services()) != 2*n {
			b.Fatalf("loaded %d services, %d errors, datapath %d", len(s.Services), len(s.Errors), len(d.Services()))
		}
		fmt.Printf("cold start, round %d: %d files, %d datapath services in %v (target < 1s)\n", round, n, len(d.Services()), took)
		if best == 0 || took < best {
			best = took
		}
	}
	b.ReportMetric(best.Seconds()*1000, "best-ms")
}

// listenAccept is a TCP backend that accepts and closes.
func listenAccept(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}
