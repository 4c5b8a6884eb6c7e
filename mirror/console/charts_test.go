package console

import (
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
)

// TestCharts: a day of points draws one pair of bars per span (at most
// 60) and a disk line through every point, scaled to the peak.
func TestCharts(t *testing.T) {
	start := time.Now().Add(-3 * time.Hour)
	var points []admin.Point
	for i := 1; i <= 180; i++ { // three hours, one a minute
		points = append(points, admin.Point{At: start.Add(time.Duration(i) * time.Minute), Cache: 1e6, Upstream: 2e5, Disk: int64(1e9 + i*1e6)})
	}
	traffic, disk := trafficChart(points), diskChart(points)
	if len(traffic.Bars) != 120 || traffic.Empty {
		t.Fatalf("traffic: %d bars, want 60 spans × 2", len(traffic.Bars))
	}
	for i, b := range traffic.Bars {
		if want := map[bool]float64{true: chartH - 2, false: (chartH - 2) * 0.2}[i%2 == 0]; b.H < want-0.01 || b.H > want+0.01 {
			t.Fatalf("bar %d is %.2f high, want %.2f (a steady rate: equal bars, upstream a fifth)", i, b.H, want)
		}
	}
	if n := strings.Count(disk.Line, ","); n != 180 || !strings.HasPrefix(disk.Line, "0.0,") {
		t.Fatalf("disk line has %d points: %.80s", n, disk.Line)
	}
	if !trafficChart(points[:1]).Empty || !diskChart(nil).Empty {
		t.Fatal("one point is no chart")
	}
}
