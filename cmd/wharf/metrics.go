package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream"
)

// opsMetrics are the instruments cmd's loops update.
type opsMetrics struct {
	storeBytes  prometheus.Gauge
	quotaBytes  prometheus.Gauge
	evicted     prometheus.Counter
	gcRuns      prometheus.Counter
	gcFreed     prometheus.Counter
	upstreamCol *upstreamCollector
}

func newOpsMetrics(r prometheus.Registerer) *opsMetrics {
	m := &opsMetrics{
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wharf_store_bytes", Help: "Bytes the blob store holds."}),
		quotaBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wharf_store_quota_bytes", Help: "The --max-size quota (0: none)."}),
		evicted:    prometheus.NewCounter(prometheus.CounterOpts{Name: "wharf_evicted_tags_total", Help: "Mirrored tags evicted for the quota or the retention."}),
		gcRuns:     prometheus.NewCounter(prometheus.CounterOpts{Name: "wharf_gc_runs_total", Help: "Garbage collections run."}),
		gcFreed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "wharf_gc_freed_bytes_total", Help: "Bytes garbage collection and eviction freed."}),
	}
	r.MustRegister(m.storeBytes, m.quotaBytes, m.evicted, m.gcRuns, m.gcFreed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// upstreamCollector reports each registry's health and Docker Hub's
// ratelimit-remaining when scraped.
type upstreamCollector struct {
	up        *upstream.Client
	upDesc    *prometheus.Desc
	limitDesc *prometheus.Desc
}

func newUpstreamCollector(up *upstream.Client) *upstreamCollector {
	return &upstreamCollector{up: up,
		upDesc:    prometheus.NewDesc("wharf_upstream_up", "1 while the registry answers, 0 while Wharf considers it down or rate limited.", []string{"registry"}, nil),
		limitDesc: prometheus.NewDesc("wharf_upstream_ratelimit_remaining", "The registry's last ratelimit-remaining header (-1: never sent).", []string{"registry"}, nil)}
}

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.upDesc; ch <- c.limitDesc }

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.up.Status() {
		up := 0.0
		if s.Up && time.Now().After(s.RateLimitedUntil) {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.upDesc, prometheus.GaugeValue, up, s.Name)
		ch <- prometheus.MustNewConstMetric(c.limitDesc, prometheus.GaugeValue, float64(s.RateLimitRemaining), s.Name)
	}
}

// serveMetrics serves /metrics on addr until the server is closed.
func serveMetrics(addr string, r *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r, promhttp.HandlerOpts{}))
	return serveSide(addr, mux, "metrics on /metrics", log)
}

// serveDebug serves Go's profiler (/debug/pprof/) and the metrics on addr:
// for an operator on the box (bind it to loopback), like registry:2's
// http.debug.addr.
func serveDebug(addr string, r *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/metrics", promhttp.HandlerFor(r, promhttp.HandlerOpts{}))
	return serveSide(addr, mux, "profiles on /debug/pprof/", log)
}

// serveSide serves mux on addr, beside the registry, until closed. No
// WriteTimeout: a CPU profile or trace streams for its duration.
func serveSide(addr string, mux *http.ServeMux, what string, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("side server", "serving", what, "err", err)
		}
	}()
	log.Info(what, "addr", ln.Addr().String())
	return srv, nil
}

// clusterCollector reports a cluster node's view of its cluster when
// scraped: live members, the index's and the object store's health, and
// the changes followed on the index's watch.
type clusterCollector struct {
	store                                       *cache.Store
	members, indexUp, storeUp, events, restarts *prometheus.Desc
	requests                                    *prometheus.Desc
}

func newClusterCollector(store *cache.Store) *clusterCollector {
	return &clusterCollector{store: store,
		members:  prometheus.NewDesc("wharf_cluster_members", "Live nodes of the cluster, as this node's watch on the index says.", nil, nil),
		indexUp:  prometheus.NewDesc("wharf_index_up", "1 while the shared index (etcd) answered this node's last request, else 0.", nil, nil),
		storeUp:  prometheus.NewDesc("wharf_blob_store_up", "1 while the object store answers (checked at most every 10 s), else 0.", nil, nil),
		events:   prometheus.NewDesc("wharf_index_watch_events_total", "Index changes (of any node) this node's caches followed.", nil, nil),
		restarts: prometheus.NewDesc("wharf_index_watch_restarts_total", "Restarts of this node's watch on the index (a member lost, a compaction).", nil, nil),
		requests: prometheus.NewDesc("wharf_index_requests_total", "Requests this node sent the shared index: reads (a get, or a page of a scan), writes (transactions), conflicts (writes that lost a compare and were retried).", []string{"op"}, nil)}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.members
	ch <- c.indexUp
	ch <- c.storeUp
	ch <- c.events
	ch <- c.restarts
	ch <- c.requests
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	h, ok := c.store.Cluster().ClusterHealth()
	if !ok {
		return
	}
	up := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, float64(len(h.Members)))
	ch <- prometheus.MustNewConstMetric(c.indexUp, prometheus.GaugeValue, up(h.Index.Healthy))
	ch <- prometheus.MustNewConstMetric(c.storeUp, prometheus.GaugeValue, up(h.BlobStoreErr == ""))
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(h.Index.Events))
	ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(h.Index.Restarts))
	ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(h.Index.Reads), "read")
	ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(h.Index.Writes), "write")
	ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(h.Index.Conflicts), "conflict")
}
