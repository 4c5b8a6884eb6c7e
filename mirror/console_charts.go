package mirror

import (
	"fmt"
	"strings"
	"time"
)

// The console's charts are inline SVG drawn here from the one-a-minute
// samples: no script, no image request.

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

// buckets groups samples into at most n consecutive spans of equal length
// and returns, per span, its first and last sample.
func buckets(samples []sample, n int) [][2]sample {
	if len(samples) < 2 {
		return nil
	}
	per := (len(samples) - 1 + n - 1) / n
	var out [][2]sample
	for i := 0; i+1 < len(samples); i += per {
		j := min(i+per, len(samples)-1)
		out = append(out, [2]sample{samples[i], samples[j]})
	}
	return out
}

// trafficChart is bytes served from the cache and fetched from upstream
// per span of time, side by side.
func trafficChart(samples []sample) *chart {
	c := &chart{W: chartW, H: chartH, Label: "bytes served from the cache and downloaded from upstream over time",
		Legend: []legend{{colorCache, "served from cache"}, {colorUpstream, "downloaded from upstream"}}}
	spans := buckets(samples, 60)
	if len(spans) == 0 {
		c.Empty = true
		return c
	}
	var peak float64
	for _, s := range spans {
		peak = max(peak, s[1].fromCache-s[0].fromCache, s[1].fromUpstream-s[0].fromUpstream)
	}
	slot := float64(chartW) / float64(len(spans))
	for i, s := range spans {
		for k, v := range []float64{s[1].fromCache - s[0].fromCache, s[1].fromUpstream - s[0].fromUpstream} {
			h := 0.0
			if peak > 0 {
				h = (chartH - 2) * max(0, v) / peak
			}
			fill := colorCache
			if k == 1 {
				fill = colorUpstream
			}
			c.Bars = append(c.Bars, chartBar{X: float64(i)*slot + float64(k)*slot*0.45, Y: chartH - h, W: slot * 0.42, H: h, Fill: fill,
				Title: fmt.Sprintf("%s–%s: %s", s[0].at.Format("15:04"), s[1].at.Format("15:04"), humanBytes(max(0, v)))})
		}
	}
	c.Top, c.Bottom = humanBytes(peak)+" per bar", "0"
	c.From, c.To = timeAxis(spans[0][0].at), timeAxis(spans[len(spans)-1][1].at)
	return c
}

// diskChart is the bytes the blob store held over time.
func diskChart(samples []sample) *chart {
	c := &chart{W: chartW, H: chartH, Label: "disk used by the blob store over time", LineColor: colorCache,
		Legend: []legend{{colorCache, "blob store"}}}
	var known []sample
	for _, s := range samples {
		if s.disk >= 0 {
			known = append(known, s)
		}
	}
	if len(known) < 2 {
		c.Empty = true
		return c
	}
	var peak int64
	for _, s := range known {
		peak = max(peak, s.disk)
	}
	first, last := known[0].at, known[len(known)-1].at
	span := last.Sub(first).Seconds()
	var pts []string
	for _, s := range known {
		x := 0.0
		if span > 0 {
			x = chartW * s.at.Sub(first).Seconds() / span
		}
		y := float64(chartH - 1)
		if peak > 0 {
			y = chartH - 1 - (chartH-4)*float64(s.disk)/float64(peak)
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
	}
	c.Line = strings.Join(pts, " ")
	c.Top, c.Bottom = humanBytes(float64(peak)), "0"
	c.From, c.To = timeAxis(first), timeAxis(last)
	return c
}

func timeAxis(t time.Time) string {
	if time.Since(t) < time.Minute {
		return "now"
	}
	return t.Format("15:04")
}
