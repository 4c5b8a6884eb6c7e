package console

import (
	"fmt"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
)

// The console's charts are inline SVG drawn here from the one-a-minute
// points (Registry.Sample): no script, no image request.

// chart is one SVG chart: bars and/or a line, with a legend and labels.
type chart struct {
	W, H        int
	Label       string // what it shows, for screen readers
	Bars        []chartBar
	Line        string // polyline points
	LineColor   string
	Legend      []legend
	Top, Bottom string // the value axis's top and bottom labels
	From, To    string // the time axis's ends
	Empty       bool   // too few samples yet
}

type chartBar struct {
	X, Y, W, H float64
	Fill       string
	Title      string
}

type legend struct{ Color, Text string }

const (
	chartW, chartH = 600, 120
	colorCache     = "#2f80c4"
	colorUpstream  = "#e8a33d"
)

// spans groups points into at most n consecutive runs of equal length
// and sums each run's traffic.
func spans(points []admin.Point, n int) []span {
	if len(points) < 2 {
		return nil
	}
	per := (len(points) + n - 1) / n
	var out []span
	for i := 0; i < len(points); i += per {
		run := points[i:min(i+per, len(points))]
		sp := span{from: run[0].At.Add(-time.Minute), to: run[len(run)-1].At}
		for _, p := range run {
			sp.cache += p.Cache
			sp.upstream += p.Upstream
		}
		out = append(out, sp)
	}
	return out
}

type span struct {
	from, to        time.Time
	cache, upstream float64
}

// trafficChart is bytes served from the cache and fetched from upstream
// per span of time, side by side.
func trafficChart(points []admin.Point) *chart {
	c := &chart{W: chartW, H: chartH, Label: "bytes served from the cache and downloaded from upstream over time",
		Legend: []legend{{colorCache, "served from cache"}, {colorUpstream, "downloaded from upstream"}}}
	runs := spans(points, 60)
	if len(runs) == 0 {
		c.Empty = true
		return c
	}
	var peak float64
	for _, r := range runs {
		peak = max(peak, r.cache, r.upstream)
	}
	slot := float64(chartW) / float64(len(runs))
	for i, r := range runs {
		for k, v := range []float64{r.cache, r.upstream} {
			h := 0.0
			if peak > 0 {
				h = (chartH - 2) * v / peak
			}
			fill := colorCache
			if k == 1 {
				fill = colorUpstream
			}
			c.Bars = append(c.Bars, chartBar{X: float64(i)*slot + float64(k)*slot*0.45, Y: chartH - h, W: slot * 0.42, H: h, Fill: fill,
				Title: fmt.Sprintf("%s–%s: %s", r.from.Format("15:04"), r.to.Format("15:04"), admin.HumanBytes(v))})
		}
	}
	c.Top, c.Bottom = admin.HumanBytes(peak)+" per bar", "0"
	c.From, c.To = timeAxis(runs[0].from), timeAxis(runs[len(runs)-1].to)
	return c
}

// diskChart is the bytes the blob store held over time.
func diskChart(points []admin.Point) *chart {
	c := &chart{W: chartW, H: chartH, Label: "disk used by the blob store over time", LineColor: colorCache,
		Legend: []legend{{colorCache, "blob store"}}}
	var known []admin.Point
	for _, p := range points {
		if p.Disk >= 0 {
			known = append(known, p)
		}
	}
	if len(known) < 2 {
		c.Empty = true
		return c
	}
	var peak int64
	for _, p := range known {
		peak = max(peak, p.Disk)
	}
	first, last := known[0].At, known[len(known)-1].At
	width := last.Sub(first).Seconds()
	var pts []string
	for _, p := range known {
		x := 0.0
		if width > 0 {
			x = chartW * p.At.Sub(first).Seconds() / width
		}
		y := float64(chartH - 1)
		if peak > 0 {
			y = chartH - 1 - (chartH-4)*float64(p.Disk)/float64(peak)
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
	}
	c.Line = strings.Join(pts, " ")
	c.Top, c.Bottom = admin.HumanBytes(float64(peak)), "0"
	c.From, c.To = timeAxis(first), timeAxis(last)
	return c
}

func timeAxis(t time.Time) string {
	if time.Since(t) < time.Minute {
		return "now"
	}
	return t.Format("15:04")
}
