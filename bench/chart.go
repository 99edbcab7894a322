package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	xfont "golang.org/x/image/font"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Size of the chart WriteChart renders, in pixels at chartDPI.
const (
	chartWidthPx  = 1600
	chartHeightPx = 800
	chartDPI      = 96
)

// Colours shared by both panels and the legend.
var (
	chartInk       = color.RGBA{R: 0x22, G: 0x22, B: 0x22, A: 0xff}
	chartSoftInk   = color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}
	chartGridColor = color.RGBA{R: 0xdd, G: 0xdd, B: 0xdd, A: 0xff}
	chartBandColor = color.RGBA{R: 0xf4, G: 0xf4, B: 0xf4, A: 0xff}
	chartTargetBar = color.RGBA{R: 0xc8, G: 0xc8, B: 0xc8, A: 0xff} // legend swatch only
)

// chartVariantOrder is the order variants take in the legend and in each bar
// group; variants not listed follow, sorted by name.
var chartVariantOrder = []Variant{Direct, DirectAfter, Sockmesh, NftMap, IptLinear, HAProxy, GoProxy}

// chartVariantColors fixes each known variant's colour (Okabe-Ito, which stays
// distinguishable with common colour-vision deficiencies): the two direct
// baselines are neutral, sockmesh is the blue that draws the eye.
var chartVariantColors = map[Variant]color.RGBA{
	Direct:      {R: 0x33, G: 0x33, B: 0x33, A: 0xff},
	DirectAfter: {R: 0x99, G: 0x99, B: 0x99, A: 0xff},
	Sockmesh:    {R: 0x00, G: 0x72, B: 0xb2, A: 0xff},
	NftMap:      {R: 0xe6, G: 0x9f, B: 0x00, A: 0xff},
	IptLinear:   {R: 0xd5, G: 0x5e, B: 0x00, A: 0xff},
	HAProxy:     {R: 0xcc, G: 0x79, B: 0xa7, A: 0xff},
	GoProxy:     {R: 0x00, G: 0x9e, B: 0x73, A: 0xff},
}

// chartExtraColors colour variants that chartVariantColors does not know.
var chartExtraColors = []color.RGBA{
	{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
	{R: 0x56, G: 0xb4, B: 0xe9, A: 0xff},
	{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff},
	{R: 0x7f, G: 0x3c, B: 0x8d, A: 0xff},
}

// chartGlyphs mark the points of each variant's latency line, so lines
// stay apart where colours alone would not.
var chartGlyphs = []draw.GlyphDrawer{
	draw.CircleGlyph{}, draw.BoxGlyph{}, draw.PyramidGlyph{}, draw.RingGlyph{},
	draw.SquareGlyph{}, draw.TriangleGlyph{}, draw.CrossGlyph{}, draw.PlusGlyph{},
}

// chartStyle is how one variant is drawn in both panels.
type chartStyle struct {
	color color.RGBA
	glyph draw.GlyphDrawer
}

// WriteChart renders the report's chart as one PNG file at path: on the left,
// connect() latency (p50, with p99 as a lighter/dashed line or error bar) against
// the number of VIPs loaded (log x axis: 10, 1,000, 10,000, 100,000), one line per
// variant; on the right, the ratio to direct per metric, grouped bars per variant,
// with the target ratio drawn as a marker/line where Target > 0 and a reference line at 1.0.
//
// The image is chartWidthPx×chartHeightPx on white, with title across the
// top and one legend for both panels beneath it; a variant has the same
// colour in both panels. Either panel may be empty (it then says so), but
// not both. Points and ratios are checked first: VIPs and P50 must be
// positive, P99 is not drawn when zero, ratios must be finite and not
// negative, and a (variant, VIPs) or (metric, variant) pair may appear only
// once. Metrics are shown top to bottom in order of first appearance.
func WriteChart(path string, title string, scale []ScalePoint, ratios []Ratio) error {
	if len(scale) == 0 && len(ratios) == 0 {
		return errors.New("write chart: no latency points and no ratios")
	}
	if err := checkChartScale(scale); err != nil {
		return fmt.Errorf("check chart points: %w", err)
	}
	if err := checkChartRatios(ratios); err != nil {
		return fmt.Errorf("check chart ratios: %w", err)
	}

	img := vgimg.NewWith(
		vgimg.UseWH(chartPx(chartWidthPx), chartPx(chartHeightPx)),
		vgimg.UseDPI(chartDPI),
		vgimg.UseBackgroundColor(color.White),
	)
	drawChart(draw.New(img), title, scale, ratios)

	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return fmt.Errorf("encode chart: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	return nil
}

// checkChartScale rejects latency points the log axes cannot show and
// duplicates that would hide each other.
func checkChartScale(scale []ScalePoint) error {
	type key struct {
		v    Variant
		vips int
	}
	seen := make(map[key]bool, len(scale))
	for _, s := range scale {
		switch {
		case s.VIPs <= 0:
			return fmt.Errorf("%s: VIPs %d is not positive", s.Variant, s.VIPs)
		case s.P50 <= 0:
			return fmt.Errorf("%s at %d VIPs: p50 %v is not positive", s.Variant, s.VIPs, s.P50)
		case s.P99 < 0:
			return fmt.Errorf("%s at %d VIPs: p99 %v is negative", s.Variant, s.VIPs, s.P99)
		case seen[key{s.Variant, s.VIPs}]:
			return fmt.Errorf("%s at %d VIPs: duplicate point", s.Variant, s.VIPs)
		}
		seen[key{s.Variant, s.VIPs}] = true
	}
	return nil
}

// checkChartRatios rejects ratios a bar cannot show and duplicates that would
// hide each other.
func checkChartRatios(ratios []Ratio) error {
	type key struct {
		metric string
		v      Variant
	}
	seen := make(map[key]bool, len(ratios))
	bad := func(f float64) bool { return math.IsNaN(f) || math.IsInf(f, 0) || f < 0 }
	for _, r := range ratios {
		switch {
		case r.Metric == "":
			return fmt.Errorf("%s: empty metric name", r.Variant)
		case bad(r.Ratio):
			return fmt.Errorf("%q of %s: ratio %v is not a finite non-negative number", r.Metric, r.Variant, r.Ratio)
		case bad(r.Target):
			return fmt.Errorf("%q of %s: target %v is not a finite non-negative number", r.Metric, r.Variant, r.Target)
		case seen[key{r.Metric, r.Variant}]:
			return fmt.Errorf("%q of %s: duplicate ratio", r.Metric, r.Variant)
		}
		seen[key{r.Metric, r.Variant}] = true
	}
	return nil
}

// drawChart lays out title, legend and the two panels on c.
func drawChart(c draw.Canvas, title string, scale []ScalePoint, ratios []Ratio) {
	styles := chartStyles(scale, ratios)
	top := c.Max.Y - chartPx(14)
	if title != "" {
		sty := chartText(18, true, chartInk)
		sty.XAlign, sty.YAlign = draw.XCenter, draw.YTop
		c.FillText(sty, vg.Point{X: c.Center().X, Y: top}, title)
		top -= sty.Rectangle(title).Size().Y + chartPx(12)
	}
	variants, keys := chartLegendItems(styles, scale, ratios)
	top = drawChartLegend(c, top, variants, keys)

	// Panel titles sit on one line, each centred over its data area.
	titleSty := chartText(14, true, chartInk)
	titleSty.XAlign, titleSty.YAlign = draw.XCenter, draw.YTop
	titleY := top - chartPx(8)
	top = titleY - titleSty.Height("X") - chartPx(10)

	panels := draw.Crop(c, 0, 0, 0, top-c.Max.Y)
	plots := []*plot.Plot{chartLatencyPanel(scale, styles), chartRatioPanel(ratios, styles)}
	titles := []string{"connect() latency vs. VIPs loaded", "Ratio to direct, per metric"}
	tiles := draw.Tiles{
		Rows: 1, Cols: 2,
		PadX: chartPx(70), PadLeft: chartPx(20), PadRight: chartPx(30), PadBottom: chartPx(12),
	}
	cs := plot.Align([][]*plot.Plot{plots}, tiles, panels)
	for i, p := range plots {
		p.Draw(cs[0][i])
		dc := p.DataCanvas(cs[0][i])
		c.FillText(titleSty, vg.Point{X: (dc.Min.X + dc.Max.X) / 2, Y: titleY}, titles[i])
	}
}

// chartStyles gives every variant in the data its colour and glyph:
// known variants keep theirs whatever else is present, so charts of
// different runs agree.
func chartStyles(scale []ScalePoint, ratios []Ratio) map[Variant]chartStyle {
	var unknown []Variant
	note := func(v Variant) {
		if _, ok := chartVariantColors[v]; !ok && !slices.Contains(unknown, v) {
			unknown = append(unknown, v)
		}
	}
	for _, s := range scale {
		note(s.Variant)
	}
	for _, r := range ratios {
		note(r.Variant)
	}
	slices.Sort(unknown)

	styles := make(map[Variant]chartStyle)
	for i, v := range chartVariantOrder {
		styles[v] = chartStyle{color: chartVariantColors[v], glyph: chartGlyphs[i%len(chartGlyphs)]}
	}
	for i, v := range unknown {
		styles[v] = chartStyle{
			color: chartExtraColors[i%len(chartExtraColors)],
			glyph: chartGlyphs[(len(chartVariantOrder)+i)%len(chartGlyphs)],
		}
	}
	return styles
}

// chartOrder returns the distinct variants of vs in legend order.
func chartOrder(vs []Variant) []Variant {
	rank := func(v Variant) int {
		if i := slices.Index(chartVariantOrder, v); i >= 0 {
			return i
		}
		return len(chartVariantOrder)
	}
	out := slices.Clone(vs)
	slices.SortStableFunc(out, func(a, b Variant) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(string(a), string(b))
	})
	return slices.Compact(out)
}

// chartLatencyPanel is the left panel: p50 (solid, with glyphs) and p99 (dashed,
// lighter) connect() latency per variant against VIPs loaded.
func chartLatencyPanel(scale []ScalePoint, styles map[Variant]chartStyle) *plot.Plot {
	p := newChartPanel("VIPs loaded (log scale)", "connect() latency (µs)")
	if len(scale) == 0 {
		chartEmpty(p, "no latency-vs-VIPs data")
		return p
	}

	byVariant := make(map[Variant][]ScalePoint)
	var variants []Variant
	var vips []int
	lo, hi := math.Inf(1), 0.0
	for _, s := range scale {
		byVariant[s.Variant] = append(byVariant[s.Variant], s)
		variants = append(variants, s.Variant)
		vips = append(vips, s.VIPs)
		lo = min(lo, chartMicros(s.P50))
		if s.P99 > 0 {
			lo = min(lo, chartMicros(s.P99))
		}
		hi = max(hi, chartMicros(s.P50), chartMicros(s.P99))
	}
	slices.Sort(vips)
	vips = slices.Compact(vips)

	p.X.Scale = plot.LogScale{}
	p.X.Min, p.X.Max = float64(vips[0])/1.6, float64(vips[len(vips)-1])*1.6
	ticks := make(plot.ConstantTicks, len(vips))
	for i, n := range vips {
		ticks[i] = plot.Tick{Value: float64(n), Label: chartNumber(float64(n))}
	}
	p.X.Tick.Marker = ticks

	// A log y axis when the spread is wide (a linear rule chain at 100k
	// VIPs), else a linear one from zero so small differences look small.
	if hi/lo > 8 {
		p.Y.Scale = plot.LogScale{}
		p.Y.Min, p.Y.Max = lo/1.4, hi*1.4
		p.Y.Tick.Marker = plot.TickerFunc(chartLogTicks)
	} else {
		p.Y.Min, p.Y.Max = 0, hi*1.1
		p.Y.Tick.Marker = plot.TickerFunc(chartLinearTicks)
	}
	p.Add(&plotter.Grid{Vertical: chartGridLine(), Horizontal: chartGridLine()})

	// Sockmesh is drawn last, on top of the baselines it runs close to.
	drawOrder := chartOrder(variants)
	if i := slices.Index(drawOrder, Sockmesh); i >= 0 {
		drawOrder = append(slices.Delete(drawOrder, i, i+1), Sockmesh)
	}
	for _, v := range drawOrder {
		pts := byVariant[v]
		slices.SortFunc(pts, func(a, b ScalePoint) int { return cmp.Compare(a.VIPs, b.VIPs) })
		st := styles[v]
		var p50, p99 plotter.XYs
		for _, s := range pts {
			p50 = append(p50, plotter.XY{X: float64(s.VIPs), Y: chartMicros(s.P50)})
			if s.P99 > 0 {
				p99 = append(p99, plotter.XY{X: float64(s.VIPs), Y: chartMicros(s.P99)})
			}
		}
		p.Add(
			&plotter.Line{XYs: p99, LineStyle: chartP99Line(st.color)},
			&plotter.Scatter{XYs: p99, GlyphStyle: draw.GlyphStyle{Color: chartLighten(st.color), Radius: chartPx(2.5), Shape: draw.CircleGlyph{}}},
			&plotter.Line{XYs: p50, LineStyle: chartP50Line(st.color)},
			&plotter.Scatter{XYs: p50, GlyphStyle: draw.GlyphStyle{Color: st.color, Radius: chartPx(5), Shape: st.glyph}},
		)
	}
	return p
}

// chartRatioPanel is the right panel: one group of horizontal bars per metric,
// one bar per variant measured for it.
func chartRatioPanel(ratios []Ratio, styles map[Variant]chartStyle) *plot.Plot {
	p := newChartPanel("ratio to direct (×), higher is better", "")
	if len(ratios) == 0 {
		chartEmpty(p, "no ratios")
		return p
	}
	hb := newChartBars(ratios, styles)

	p.Y.Min, p.Y.Max = hb.yMin, hb.yMax
	p.Y.Padding = 0
	p.Y.Tick.Length = 0
	p.Y.Tick.Label.Font = chartFont(12, false)
	p.Y.Tick.Marker = hb.metricTicks()

	// Leave room right of the longest bar for its label.
	p.X.Min, p.X.Max = 0, math.Ceil(hb.xMax*1.22*10)/10
	p.X.Padding = 0
	p.X.Tick.Marker = plot.TickerFunc(chartRatioTicks)
	p.Add(&plotter.Grid{Vertical: chartGridLine()}, hb)
	return p
}

// newChartPanel returns a plot styled for the chart: readable fonts, grey
// axes. Its title is drawn by drawChart, level with the other panel's.
func newChartPanel(xLabel, yLabel string) *plot.Plot {
	p := plot.New()
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = chartFont(12.5, false)
		a.Label.TextStyle.Color = chartInk
		a.Label.Padding = chartPx(6)
		a.Tick.Label.Font = chartFont(11, false)
		a.Tick.Label.Color = chartInk
		a.Color, a.Tick.Color = chartSoftInk, chartSoftInk
		a.Tick.Length = chartPx(6)
	}
	p.X.Label.Text, p.Y.Label.Text = xLabel, yLabel
	return p
}

// chartLegendItem is one entry of the shared legend: a swatch and its label.
type chartLegendItem struct {
	label  string
	swatch func(c draw.Canvas, left, mid, width vg.Length)
}

// chartLegendItems lists the variants in the data, then a key to the line and
// marker styles the panels use.
func chartLegendItems(styles map[Variant]chartStyle, scale []ScalePoint, ratios []Ratio) (variants, keys []chartLegendItem) {
	var vs []Variant
	hasP99, hasTarget := false, false
	for _, s := range scale {
		vs = append(vs, s.Variant)
		hasP99 = hasP99 || s.P99 > 0
	}
	for _, r := range ratios {
		vs = append(vs, r.Variant)
		hasTarget = hasTarget || r.Target > 0
	}
	for _, v := range chartOrder(vs) {
		st := styles[v]
		variants = append(variants, chartLegendItem{string(v), func(c draw.Canvas, l, y, w vg.Length) {
			c.FillPolygon(st.color, chartRect(l, y-chartPx(6), l+w, y+chartPx(6)))
			c.DrawGlyph(draw.GlyphStyle{Color: color.White, Radius: chartPx(3.5), Shape: st.glyph}, vg.Point{X: l + w/2, Y: y})
		}})
	}

	if len(scale) > 0 {
		keys = append(keys, chartLegendItem{"p50 latency", func(c draw.Canvas, l, y, w vg.Length) {
			c.StrokeLine2(chartP50Line(chartSoftInk), l, y, l+w, y)
		}})
		if hasP99 {
			keys = append(keys, chartLegendItem{"p99 latency", func(c draw.Canvas, l, y, w vg.Length) {
				c.StrokeLine2(chartP99Line(chartSoftInk), l, y, l+w, y)
			}})
		}
	}
	if hasTarget {
		keys = append(keys, chartLegendItem{"target ratio", func(c draw.Canvas, l, y, w vg.Length) {
			c.FillPolygon(chartTargetBar, chartRect(l, y-chartPx(6), l+w, y+chartPx(6)))
			c.StrokeLine2(chartTargetLine(), l+w/2, y-chartPx(9), l+w/2, y+chartPx(9))
		}})
	}
	if len(ratios) > 0 {
		keys = append(keys, chartLegendItem{"direct = 1.0", func(c draw.Canvas, l, y, w vg.Length) {
			c.StrokeLine2(chartRefLine(), l+w/2, y-chartPx(9), l+w/2, y+chartPx(9))
		}})
	}
	return variants, keys
}

// drawChartLegend draws the variant row, then the key row, centred under top,
// wrapping rows that do not fit; it returns the y below the legend.
func drawChartLegend(c draw.Canvas, top vg.Length, variants, keys []chartLegendItem) vg.Length {
	sty := chartText(12.5, false, chartInk)
	sty.YAlign = draw.YCenter
	swatchW, gap, itemGap, rowH := chartPx(26), chartPx(7), chartPx(28), chartPx(26)
	itemW := func(it chartLegendItem) vg.Length { return swatchW + gap + sty.Width(it.label) }

	for _, group := range [][]chartLegendItem{variants, keys} {
		for len(group) > 0 {
			n, w := 0, vg.Length(0)
			for n < len(group) {
				next := w + itemW(group[n])
				if n > 0 {
					next += itemGap
				}
				if n > 0 && next > c.Size().X-chartPx(40) {
					break
				}
				w, n = next, n+1
			}
			y := top - rowH/2
			x := c.Center().X - w/2
			for _, it := range group[:n] {
				it.swatch(c, x, y, swatchW)
				c.FillText(sty, vg.Point{X: x + swatchW + gap, Y: y}, it.label)
				x += itemW(it) + itemGap
			}
			top -= rowH
			group = group[n:]
		}
	}
	return top
}

// chartBars draws the ratio panel's bars, their labels, the targets and the
// reference line at 1.0, in data coordinates where each bar is one unit
// high and the first metric is at the top.
type chartBars struct {
	bars   []chartBar
	groups []chartBarGroup
	xMax   float64
	yMin   float64
	yMax   float64
}

// chartBar is one bar of the ratio panel.
type chartBar struct {
	y      float64
	band   bool // on a shaded group band
	ratio  float64
	target float64
	color  color.RGBA
}

// chartBarGroup is the band of bars of one metric.
type chartBarGroup struct {
	metric      string
	top, bottom float64
}

// chartGroupGap is the space between two metrics' bar groups, and
// chartMinBarSpan the least height the bar panel spans, in bar heights.
const (
	chartGroupGap   = 0.9
	chartMinBarSpan = 24
)

// newChartBars lays out one group per metric, in order of first appearance,
// with its variants in legend order.
func newChartBars(ratios []Ratio, styles map[Variant]chartStyle) *chartBars {
	var metrics []string
	byMetric := make(map[string][]Ratio)
	for _, r := range ratios {
		if _, ok := byMetric[r.Metric]; !ok {
			metrics = append(metrics, r.Metric)
		}
		byMetric[r.Metric] = append(byMetric[r.Metric], r)
	}

	hb := &chartBars{xMax: 1}
	y := 0.0
	for _, m := range metrics {
		rs := byMetric[m]
		var vs []Variant
		for _, r := range rs {
			vs = append(vs, r.Variant)
		}
		g := chartBarGroup{metric: m, top: y + 0.5 + chartGroupGap/2}
		for _, v := range chartOrder(vs) {
			r := rs[slices.IndexFunc(rs, func(r Ratio) bool { return r.Variant == v })]
			hb.bars = append(hb.bars, chartBar{
				y: y, band: len(hb.groups)%2 == 1,
				ratio: r.Ratio, target: r.Target, color: styles[v].color,
			})
			hb.xMax = max(hb.xMax, r.Ratio, r.Target)
			y--
		}
		g.bottom = y + 0.5 - chartGroupGap/2
		hb.groups = append(hb.groups, g)
	}
	// Few bars keep the thickness of many; the room left stays empty.
	hb.yMax, hb.yMin = hb.groups[0].top, min(hb.groups[len(hb.groups)-1].bottom, hb.groups[0].top-chartMinBarSpan)
	return hb
}

// metricTicks labels each group with its metric, at the group's middle.
func (hb *chartBars) metricTicks() plot.ConstantTicks {
	ticks := make(plot.ConstantTicks, len(hb.groups))
	for i, g := range hb.groups {
		ticks[i] = plot.Tick{Value: (g.top + g.bottom) / 2, Label: g.metric}
	}
	return ticks
}

// DataRange implements plot.DataRanger.
func (hb *chartBars) DataRange() (xmin, xmax, ymin, ymax float64) {
	return 0, hb.xMax, hb.yMin, hb.yMax
}

// Plot implements plot.Plotter.
func (hb *chartBars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	for i, g := range hb.groups {
		if i%2 == 1 {
			c.FillPolygon(chartBandColor, chartRect(c.Min.X, trY(g.bottom), c.Max.X, trY(g.top)))
		}
	}
	half := trY(0.4) - trY(0)
	for _, b := range hb.bars {
		y := trY(b.y)
		c.FillPolygon(b.color, chartRect(trX(0), y-half, trX(b.ratio), y+half))
	}
	c.StrokeLine2(chartRefLine(), trX(1), c.Min.Y, trX(1), c.Max.Y)

	// Labels need bars at least about as far apart as the digits are high;
	// when there are too many bars for that, the axis has to do.
	sty := chartText(10.5, false, chartInk)
	size, ascent := sty.Font.Size, sty.FontExtents().Ascent
	if trY(1)-trY(0) < 0.8*size {
		return
	}
	for _, b := range hb.bars {
		y := trY(b.y)
		end := trX(b.ratio)
		if b.target > 0 {
			x := trX(b.target)
			c.StrokeLine2(chartTargetLine(), x, y-half-chartPx(3), x, y+half+chartPx(3))
			end = max(end, x)
		}
		// Digits centred on the bar, on a halo of the background colour
		// that keeps them clear of the reference line and the grid but
		// not of the neighbouring bars. FillText with the default
		// YBottom puts the baseline at Y - ascent + size.
		label, x := chartRatioLabel(b.ratio), end+chartPx(5)
		baseline := y - 0.36*size
		bg := color.Color(color.White)
		if b.band {
			bg = chartBandColor
		}
		c.FillPolygon(bg, chartRect(x-chartPx(2), baseline-0.06*size, x+sty.Width(label)+chartPx(2), baseline+0.78*size))
		c.FillText(sty, vg.Point{X: x, Y: baseline + ascent - size}, label)
	}
}

// chartEmpty turns p into an empty panel that says msg.
func chartEmpty(p *plot.Plot, msg string) {
	p.HideAxes()
	p.X.Label.Text, p.Y.Label.Text = "", ""
	p.Add(chartMessage(msg))
}

// chartMessage is a plotter that writes a note in the middle of an empty panel.
type chartMessage string

// Plot implements plot.Plotter.
func (m chartMessage) Plot(c draw.Canvas, _ *plot.Plot) {
	sty := chartText(13, false, chartSoftInk)
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YCenter
	c.FillText(sty, c.Center(), string(m))
}

// chartLogTicks labels a log axis at 1, 2 and 5 times powers of ten, or at
// every integer multiple when the range spans too little for three labels.
func chartLogTicks(lo, hi float64) []plot.Tick {
	build := func(labelled []int) []plot.Tick {
		var ticks []plot.Tick
		for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
			for m := 1; m <= 9; m++ {
				v := float64(m) * math.Pow(10, e)
				if v < lo || v > hi {
					continue
				}
				t := plot.Tick{Value: v}
				if slices.Contains(labelled, m) {
					t.Label = chartNumber(v)
				}
				ticks = append(ticks, t)
			}
		}
		return ticks
	}
	ticks := build([]int{1, 2, 5})
	if n := len(slices.DeleteFunc(slices.Clone(ticks), plot.Tick.IsMinor)); n < 3 {
		ticks = build([]int{1, 2, 3, 4, 5, 6, 7, 8, 9})
	}
	return ticks
}

// chartLinearTicks labels a linear axis about six times, at a step of 1,
// 2, 2.5 or 5 times a power of ten, with a minor tick between labels.
func chartLinearTicks(lo, hi float64) []plot.Tick {
	raw := (hi - lo) / 6
	if raw <= 0 {
		return nil
	}
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * pow
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*pow >= raw {
			step = m * pow
			break
		}
	}
	var ticks []plot.Tick
	for k := math.Ceil(lo / step); k*step <= hi; k++ {
		v := k * step
		ticks = append(ticks, plot.Tick{Value: v, Label: chartNumber(v)})
		if v+step/2 <= hi {
			ticks = append(ticks, plot.Tick{Value: v + step/2})
		}
	}
	return ticks
}

// chartRatioTicks labels the ratio axis every 0.2 (every 0.5 past 2.5).
func chartRatioTicks(lo, hi float64) []plot.Tick {
	step := 0.2
	if hi > 2.5 {
		step = 0.5
	}
	var ticks []plot.Tick
	for i := 0; float64(i)*step <= hi+1e-9; i++ {
		v := math.Round(float64(i)*step*10) / 10
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
	}
	return ticks
}

// chartNumber writes v with thousands separators from 1,000 up and three
// significant digits below: 0.5, 12, 250, 1,000, 100,000.
func chartNumber(v float64) string {
	if v < 1000 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// chartRatioLabel writes a bar's ratio with two decimals, or two
// significant digits below 0.1: 0.94×, 1.00×, 0.085×.
func chartRatioLabel(r float64) string {
	if r > 0 && r < 0.1 {
		return strconv.FormatFloat(r, 'g', 2, 64) + "×"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "×"
}

// chartMicros converts d to microseconds.
func chartMicros(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond)
}

// chartPx converts pixels at chartDPI to a vg.Length.
func chartPx(n float64) vg.Length {
	return vg.Length(n) * vg.Inch / chartDPI
}

// chartRect returns the corners of the rectangle from (x0, y0) to (x1, y1).
func chartRect(x0, y0, x1, y1 vg.Length) []vg.Point {
	return []vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}
}

// chartFont is the chart's typeface at size points: Liberation Sans,
// which ships with gonum plot and has µ and ×.
func chartFont(size float64, bold bool) font.Font {
	f := font.Font{Typeface: "Liberation", Variant: "Sans", Size: vg.Points(size)}
	if bold {
		f.Weight = xfont.WeightBold
	}
	return f
}

// chartText returns a text style in the chart's typeface.
func chartText(size float64, bold bool, clr color.Color) text.Style {
	return text.Style{Color: clr, Font: chartFont(size, bold), Handler: plot.DefaultTextHandler}
}

// chartLighten mixes c halfway to white, for p99 lines.
func chartLighten(c color.RGBA) color.RGBA {
	mix := func(v uint8) uint8 { return v + (0xff-v)/2 }
	return color.RGBA{R: mix(c.R), G: mix(c.G), B: mix(c.B), A: 0xff}
}

// chartP50Line is the style of a variant's p50 latency line.
func chartP50Line(c color.RGBA) draw.LineStyle {
	return draw.LineStyle{Color: c, Width: chartPx(3)}
}

// chartP99Line is the style of a variant's p99 latency line.
func chartP99Line(c color.RGBA) draw.LineStyle {
	return draw.LineStyle{Color: chartLighten(c), Width: chartPx(2), Dashes: []vg.Length{chartPx(7), chartPx(5)}}
}

// chartTargetLine marks a bar's target ratio.
func chartTargetLine() draw.LineStyle {
	return draw.LineStyle{Color: chartInk, Width: chartPx(3)}
}

// chartRefLine is the dashed line at ratio 1.0, where a variant equals direct.
func chartRefLine() draw.LineStyle {
	return draw.LineStyle{Color: chartInk, Width: chartPx(1.5), Dashes: []vg.Length{chartPx(5), chartPx(4)}}
}

// chartGridLine is the style of the panels' grid lines.
func chartGridLine() draw.LineStyle {
	return draw.LineStyle{Color: chartGridColor, Width: chartPx(1)}
}
