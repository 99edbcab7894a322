package main

import (
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// chartSampleScale is connect() latency as a run might measure it: flat for
// the map-based variants, linear in VIPs for the iptables rule chain.
func chartSampleScale() []ScalePoint {
	us := func(f float64) time.Duration { return time.Duration(f * float64(time.Microsecond)) }
	var pts []ScalePoint
	for _, n := range []int{10, 1000, 10000, 100000} {
		chain := float64(n) * 0.02
		pts = append(pts,
			ScalePoint{Direct, n, us(11), us(19)},
			ScalePoint{DirectAfter, n, us(11.3), us(20)},
			ScalePoint{Sockmesh, n, us(11.8), us(21)},
			ScalePoint{NftMap, n, us(13.5), us(25)},
			ScalePoint{IptLinear, n, us(13 + chain), us(24 + chain*1.5)},
			ScalePoint{HAProxy, n, us(48), us(95)},
			ScalePoint{GoProxy, n, us(62), us(140)},
		)
	}
	return pts
}

// chartSampleRatios is a ratio table with the spread a real run has: sockmesh
// near direct, userspace proxies far below it, a few targets.
func chartSampleRatios() []Ratio {
	type row struct {
		metric string
		unit   string
		direct float64
		target float64 // for sockmesh only
		ratios map[Variant]float64
	}
	all := func(dAfter, sm, nft, ipt, ha, gp float64) map[Variant]float64 {
		return map[Variant]float64{DirectAfter: dAfter, Sockmesh: sm, NftMap: nft, IptLinear: ipt, HAProxy: ha, GoProxy: gp}
	}
	rows := []row{
		{"TCP connect+close rate", "conn/s", 52000, 0.9, all(1.01, 0.94, 0.81, 0.42, 0.11, 0.07)},
		{"connect() p50", "µs", 11, 0.9, all(0.99, 0.93, 0.81, 0.085, 0.23, 0.18)},
		{"connect() p99", "µs", 19, 0, all(1.0, 0.9, 0.76, 0.06, 0.2, 0.14)},
		{"request/response rate", "req/s", 98000, 0.95, all(1.02, 0.98, 0.9, 0.88, 0.31, 0.22)},
		{"bulk throughput", "Gbit/s", 38, 0.95, all(1.0, 1.0, 0.97, 0.96, 0.28, 0.05)},
		// UDP: no userspace proxies measured.
		{"UDP connected RR", "req/s", 110000, 0.95, map[Variant]float64{DirectAfter: 1.0, Sockmesh: 0.97, NftMap: 0.84, IptLinear: 0.83}},
		{"UDP unconnected RR", "req/s", 105000, 0, map[Variant]float64{Sockmesh: 0.72, NftMap: 0.86, IptLinear: 0.85}},
	}
	var out []Ratio
	for _, r := range rows {
		for _, v := range chartVariantOrder {
			ratio, ok := r.ratios[v]
			if !ok {
				continue
			}
			rt := Ratio{Metric: r.metric, Variant: v, Unit: r.unit, Ratio: ratio, Value: r.direct * ratio}
			if v == Sockmesh {
				rt.Target = r.target
			}
			out = append(out, rt)
		}
	}
	return out
}

func TestWriteChart(t *testing.T) {
	tests := []struct {
		name   string
		scale  []ScalePoint
		ratios []Ratio
	}{
		{"both panels", chartSampleScale(), chartSampleRatios()},
		{"latency only", chartSampleScale(), nil},
		{"ratios only", nil, chartSampleRatios()},
		{"narrow latency range", chartSampleScale()[:4], chartSampleRatios()[:3]},
		{"no p99", []ScalePoint{{Direct, 10, 9 * time.Microsecond, 0}, {Sockmesh, 10, 10 * time.Microsecond, 0}}, nil},
		{"unknown variant", chartSampleScale(), append(chartSampleRatios(), Ratio{Metric: "DNS queries/s", Variant: "unbound", Ratio: 0.6, Target: 0.5})},
		{"many bars", nil, chartManyRatios(40)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "chart.png")
			if err := WriteChart(path, "sockmesh benchmark: test run", tt.scale, tt.ratios); err != nil {
				t.Fatalf("WriteChart: %v", err)
			}
			checkChartPNG(t, path)
		})
	}
}

// chartManyRatios is n metrics of six variants each, more bars than
// have room for labels.
func chartManyRatios(n int) []Ratio {
	var out []Ratio
	for i := range n {
		for j, v := range chartVariantOrder[1:] {
			out = append(out, Ratio{Metric: fmt.Sprintf("metric %d", i), Variant: v, Ratio: float64(j+1) / 6})
		}
	}
	return out
}

// checkChartPNG fails unless path is a PNG of the chart's size with something
// drawn on it.
func checkChartPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	if got, want := img.Bounds(), image.Rect(0, 0, chartWidthPx, chartHeightPx); got != want {
		t.Errorf("size = %v, want %v", got, want)
	}
	if r, g, b, _ := img.At(1, 1).RGBA(); r != 0xffff || g != 0xffff || b != 0xffff {
		t.Errorf("corner pixel = %v, want white background", img.At(1, 1))
	}
	inked := 0
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y += 4 {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x += 4 {
			if r, g, b, _ := img.At(x, y).RGBA(); r+g+b < 3*0xc000 {
				inked++
			}
		}
	}
	if inked < 500 {
		t.Errorf("only %d sampled pixels are drawn on; chart looks empty", inked)
	}
}

func TestWriteChartRejects(t *testing.T) {
	ok := chartSampleRatios()[:1]
	tests := []struct {
		name   string
		scale  []ScalePoint
		ratios []Ratio
		want   string
	}{
		{"no data", nil, nil, "no latency points and no ratios"},
		{"zero VIPs", []ScalePoint{{Sockmesh, 0, time.Microsecond, time.Microsecond}}, ok, "VIPs 0"},
		{"zero p50", []ScalePoint{{Sockmesh, 10, 0, time.Microsecond}}, ok, "p50"},
		{"duplicate point", []ScalePoint{{Sockmesh, 10, 1, 2}, {Sockmesh, 10, 1, 2}}, ok, "duplicate point"},
		{"NaN ratio", nil, []Ratio{{Metric: "m", Variant: Sockmesh, Ratio: math.NaN()}}, "ratio NaN"},
		{"negative target", nil, []Ratio{{Metric: "m", Variant: Sockmesh, Ratio: 1, Target: -1}}, "target -1"},
		{"empty metric", nil, []Ratio{{Variant: Sockmesh, Ratio: 1}}, "empty metric"},
		{"duplicate ratio", nil, slices.Repeat(ok, 2), "duplicate ratio"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "chart.png")
			err := WriteChart(path, "t", tt.scale, tt.ratios)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("WriteChart error = %v, want one containing %q", err, tt.want)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("file written despite the error (stat: %v)", err)
			}
		})
	}
}

// TestWriteChartSample writes the sample chart to
// /tmp/sockmesh-chart-sample.png for a person to look at, when
// SOCKMESH_CHART_SAMPLE=1.
func TestWriteChartSample(t *testing.T) {
	if os.Getenv("SOCKMESH_CHART_SAMPLE") != "1" {
		t.Skip("set SOCKMESH_CHART_SAMPLE=1 to write /tmp/sockmesh-chart-sample.png")
	}
	const path = "/tmp/sockmesh-chart-sample.png"
	if err := WriteChart(path, "sockmesh vs. NAT and proxies — sample data", chartSampleScale(), chartSampleRatios()); err != nil {
		t.Fatalf("WriteChart: %v", err)
	}
	checkChartPNG(t, path)
	t.Logf("wrote %s", path)
}
