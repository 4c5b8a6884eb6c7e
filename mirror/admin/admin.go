// Package admin is the operator plane's services: what the registry holds
// (repositories, tags, sizes, pulls), deletes, evictions and collections
// (through the process's maintenance scheduler), the book of what happened
// (audit records, recent errors, collections, the traffic history) and
// the status figures; and the JSON admin API (/api/v1/) over them. The
// console renders the same services.
//
// The data plane reports to the book through the events interface it
// declares (Audit, Pulled, Refused): admin implements it and never
// imports the data plane, which never imports admin.
package admin

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
)

// Options configures the services.
type Options struct {
	// AllowDelete enables deletes when no users are configured (everyone
	// may do everything), as with registry:2's storage.delete.
	AllowDelete bool
	// ReadOnly refuses deletes, evictions and collections (405).
	ReadOnly bool
	// Deleted, when set, is told each delete through the API or the
	// console (registry:2-style notifications).
	Deleted func(r *http.Request, actor, repo, ref string)
	// Collector runs the collections asked for here: the process's one
	// maintenance scheduler. nil: the service runs them itself with
	// GCGrace (tests, tools).
	Collector Collector
	// GCGrace is the grace of collections run without a Collector, and
	// what the GC page says (1h).
	GCGrace time.Duration
	// StatusInfo supplies the disk, quota, upstream and cluster figures;
	// nil leaves them out.
	StatusInfo func() StatusInfo
	// Traffic reads the data plane's cumulative counters; nil: no traffic
	// figures, samples or charts.
	Traffic func() Traffic
	// Fills lists the blob downloads in flight (the cluster section).
	Fills func() []cache.ActiveFill
	// BlobOwner names the node of members that owns a blob ("": none).
	BlobOwner func(members map[string]string, d digest.Digest) string
	Logger    *slog.Logger
}

// Collector is the maintenance scheduler, as the operator plane asks it
// for a collection now (o's grace is the scheduler's).
type Collector interface {
	CollectNow(ctx context.Context, o cache.GCOptions) (cache.GCReport, error)
}

// Traffic is the data plane's cumulative counters.
type Traffic struct {
	FromCache, FromUpstream float64 // blob bytes served from the cache, downloaded from upstream
	Hits, Misses            float64 // manifest and blob requests answered from the cache, or not
}

// StatusInfo is what the status figures need from outside the registry.
type StatusInfo struct {
	StoreBytes, QuotaBytes int64
	Upstreams              []UpstreamStatus
	Cluster                *cache.ClusterHealth // nil on a single box
	Notifications          []NotificationStatus // registry:2-style notification endpoints
}

// NotificationStatus is one notification endpoint's figures.
type NotificationStatus struct {
	Name, URL             string
	Disabled              bool
	Sent, Failed, Dropped int64 // by this node since it started
	Pending               int   // queued, every node's
	LastError             string
	LastSent              time.Time
}

// UpstreamStatus is one upstream registry's health.
type UpstreamStatus struct {
	Name, Endpoint     string
	Up                 bool
	RateLimitedUntil   time.Time
	RateLimitRemaining int // -1 when the registry does not say
	LastError          string
}

// Service is the operator plane's services over a store. It is safe for
// concurrent use.
type Service struct {
	store    *cache.Store
	gate     *auth.Gate
	opts     Options
	log      *slog.Logger
	book     statusBook
	reclaim  reclaimState
	readOnly atomic.Bool // Options.ReadOnly, switched by SetReadOnly
	ids      *Identities
}

// New returns the services over store, authorizing through gate.
func New(store *cache.Store, gate *auth.Gate, o Options) *Service {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.GCGrace <= 0 {
		o.GCGrace = time.Hour
	}
	svc := &Service{store: store, gate: gate, opts: o, log: o.Logger, ids: &Identities{store: store, gate: gate}}
	svc.readOnly.Store(o.ReadOnly)
	return svc
}

// Identities are the services for who signs in: access tokens and the
// people single sign-on recorded. It is safe for concurrent use.
type Identities struct {
	store *cache.Store
	gate  *auth.Gate
}

// Identities are the access tokens' and people's services.
func (svc *Service) Identities() *Identities { return svc.ids }
