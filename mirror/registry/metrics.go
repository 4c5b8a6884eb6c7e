package registry

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Metrics are the registry's Prometheus instruments. Create them with
// NewMetrics on a registry the caller owns; a nil *Metrics records nothing.
type Metrics struct {
	Requests         *prometheus.CounterVec   // route, method, status
	Duration         *prometheus.HistogramVec // route
	Cache            *prometheus.CounterVec   // kind (manifest, blob), result (hit, miss)
	BytesServed      *prometheus.CounterVec   // source (cache, upstream)
	UpstreamBytes    prometheus.CounterFunc   // the upstream client's count, read when scraped
	Upstream         *prometheus.CounterVec   // registry, op, result
	UpstreamLatency  *prometheus.HistogramVec // registry, op
	Coalesced        prometheus.Counter
	Prefetches       prometheus.Counter
	DigestFailures   prometheus.CounterFunc // the downloads' count, read when scraped
	MissesRemembered prometheus.Counter
	Relayed          *prometheus.CounterVec // kind (upload, blob): requests a cluster node sent to another

	bound boundRequests // the request instruments' children, bound once per label set
	// received and discarded read the upstream's count of blob bytes and
	// the downloads' count of discarded blobs (no call per event).
	received, discarded atomic.Pointer[func() int64]
}

// countDiscarded makes DigestFailures read discarded.
func (m *Metrics) countDiscarded(discarded func() int64) {
	if m != nil {
		m.discarded.Store(&discarded)
	}
}

// countUpstream makes UpstreamBytes read received (the upstream client's
// own counter: nothing is counted per read on the download's path).
func (m *Metrics) countUpstream(received func() int64) {
	if m != nil {
		m.received.Store(&received)
	}
}

// requestLabels is one label set of the request instruments.
type requestLabels struct {
	route, method string
	status        int
}

// requestChildren are the request instruments of one label set.
type requestChildren struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// boundRequests keeps the request instruments' children by label set, so
// that a request costs a map read, not three label hashes and the
// formatting of its status.
type boundRequests struct {
	mu sync.RWMutex
	m  map[requestLabels]requestChildren
}

// request records one request of route, method and status that took d
// seconds.
func (m *Metrics) request(route, method string, status int, seconds float64) {
	k := requestLabels{route, method, status}
	b := &m.bound
	b.mu.RLock()
	c, ok := b.m[k]
	b.mu.RUnlock()
	if !ok {
		c = requestChildren{m.Requests.WithLabelValues(route, method, strconv.Itoa(status)), m.Duration.WithLabelValues(route)}
		b.mu.Lock()
		if b.m == nil {
			b.m = map[requestLabels]requestChildren{}
		}
		if len(b.m) < 4096 { // methods and statuses are the client's to choose
			b.m[k] = c
		}
		b.mu.Unlock()
	}
	c.count.Inc()
	c.duration.Observe(seconds)
}

// NewMetrics registers the instruments on r.
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_http_requests_total",
			Help: "HTTP requests by route, method and status."}, []string{"route", "method", "status"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "wharf_http_request_duration_seconds",
			Help: "HTTP request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"route"}),
		Cache: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_cache_requests_total",
			Help: "Mirrored manifest and blob requests answered from the cache (hit) or upstream (miss)."}, []string{"kind", "result"}),
		BytesServed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_blob_bytes_served_total",
			Help: "Blob bytes sent to clients, from the cache or streamed from an upstream download."}, []string{"source"}),
		Upstream: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_upstream_requests_total",
			Help: "Upstream operations by registry, operation and result."}, []string{"registry", "op", "result"}),
		UpstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "wharf_upstream_request_duration_seconds",
			Help: "Upstream operation latency (to response headers for blobs).", Buckets: prometheus.ExponentialBuckets(0.005, 3, 9)}, []string{"registry", "op"}),
		Coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "wharf_coalesced_waiters_total",
			Help: "Requests that joined an upstream fetch already in flight instead of starting one."}),
		Prefetches: prometheus.NewCounter(prometheus.CounterOpts{Name: "wharf_prefetches_total",
			Help: "Blob downloads started ahead of any client."}),
		MissesRemembered: prometheus.NewCounter(prometheus.CounterOpts{Name: "wharf_upstream_misses_remembered_total",
			Help: "Requests answered 404 from a remembered upstream miss (--miss-ttl) without asking upstream."}),
		Relayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_cluster_relayed_total",
			Help: "Requests this node sent to another node of its cluster: upload requests for sessions another node holds, and cold blob downloads from the node that owns them."}, []string{"kind"}),
	}
	m.DigestFailures = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wharf_digest_failures_total",
		Help: "Upstream downloads discarded because their bytes did not match the digest."}, func() float64 {
		if f := m.discarded.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	m.UpstreamBytes = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "wharf_upstream_bytes_total",
		Help: "Blob bytes downloaded from upstream registries."}, func() float64 {
		if f := m.received.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	r.MustRegister(m.Requests, m.Duration, m.Cache, m.BytesServed, m.UpstreamBytes, m.Upstream, m.UpstreamLatency,
		m.Coalesced, m.Prefetches, m.DigestFailures, m.MissesRemembered, m.Relayed)
	return m
}

func (m *Metrics) cache(kind, result string) {
	if m != nil {
		m.Cache.WithLabelValues(kind, result).Inc()
	}
}

// NoteRelayed counts a request sent to another node of the cluster.
func (m *Metrics) NoteRelayed(kind string) {
	if m != nil {
		m.Relayed.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) coalesced() {
	if m != nil {
		m.Coalesced.Inc()
	}
}

func (m *Metrics) prefetched() {
	if m != nil {
		m.Prefetches.Inc()
	}
}

func (m *Metrics) rememberedMiss() {
	if m != nil {
		m.MissesRemembered.Inc()
	}
}

func (m *Metrics) upstream(registry, op string, err error, seconds float64) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.Upstream.WithLabelValues(registry, op, result).Inc()
	m.UpstreamLatency.WithLabelValues(registry, op).Observe(seconds)
}

// routeName labels a route kind for metrics.
func routeName(k routeKind, ok bool) string {
	if !ok {
		return "unknown"
	}
	return [...]string{"base", "catalog", "tags", "manifest", "blob", "uploads", "upload", "referrers"}[k]
}

// Totals reads the cumulative traffic counters: blob bytes served from the
// cache and downloaded from upstream, and manifest and blob requests
// answered from the cache (hits) or not.
func (m *Metrics) Totals() (fromCache, fromUpstream, hits, misses float64) {
	for _, k := range []string{"manifest", "blob"} {
		hits += testutil.ToFloat64(m.Cache.WithLabelValues(k, "hit"))
		misses += testutil.ToFloat64(m.Cache.WithLabelValues(k, "miss"))
	}
	return testutil.ToFloat64(m.BytesServed.WithLabelValues("cache")), testutil.ToFloat64(m.UpstreamBytes), hits, misses
}
