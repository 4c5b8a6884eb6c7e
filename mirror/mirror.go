package mirror

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/cluster"
	"github.com/wharf-registry/wharf/mirror/console"
	"github.com/wharf-registry/wharf/mirror/registry"
	"github.com/wharf-registry/wharf/policy"
)

// Options configures Wharf's HTTP face. The data plane's options are
// registry.Options' (documented there); the others go to the gate (auth)
// and the operator plane (admin).
type Options struct {
	// The data plane (registry.Options).
	AllowDelete         bool
	ReadOnly            bool        // pulls only: writes get 405, collections are refused
	Headers             http.Header // added to every response (registry:2's http.headers)
	Sendfile            bool
	Logger              *slog.Logger // the access log, audit records and errors (slog.Default)
	Upstream            registry.Upstream
	TagTTL, MissTTL     time.Duration
	Offline             bool
	PrefetchParallel    int
	FillTimeout         time.Duration
	Metrics             *registry.Metrics
	OnStorageFull       func()
	MakeRoom            func(ctx context.Context) error
	ClientTimeout       time.Duration
	MaxUploads          int
	MaxUploadsPerClient int
	PrefetchPlatforms   []string

	// Events, when set, is told what happened besides the operator
	// plane's book.
	Events Listener
	// Notifier, when set, is told what clients did (registry:2's
	// notifications, package notify).
	Notifier registry.Notifier

	// Who calls (auth.Options): users and rules (swapped by
	// Server.SetAccess), the signing secret, trusted proxies and the
	// public URL the token realm is built from.
	Users          auth.Authenticator
	Directory      auth.Directory    // the company directory (LDAP); nil: none
	SSO            auth.SingleSignOn // the identity provider (OpenID Connect); nil: none
	Policy         *policy.Policy
	Secret         string
	TrustedProxies []netip.Prefix
	PublicURL      string

	// The operator plane (admin.Options).
	StatusInfo func() admin.StatusInfo
	Collector  admin.Collector
	GCGrace    time.Duration
}

// Listener hears what the book hears: audited acts, pulls and refusals.
type Listener interface {
	auth.Auditor
	registry.Events
}

// Server is Wharf's HTTP face: the OCI data plane at /v2/ (with /token and
// the health checks), the admin API at /api/v1/ and the console at /, over
// one gate. It is safe for concurrent use.
type Server struct {
	reg     *registry.Registry
	gate    *auth.Gate
	svc     *admin.Service
	console *console.Console
	store   *cache.Store
	gcGrace time.Duration // the collections' grace without a scheduler (tests)
}

// New puts the planes together over store. Close it before the store.
func New(store *cache.Store, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	book := &events{listener: opts.Events}
	gateOpts := auth.Options{Secret: opts.Secret, TrustedProxies: opts.TrustedProxies, PublicURL: opts.PublicURL,
		Revocations: store.Records(), AccessTokens: &accessTokens{records: store.Records()}, Directory: opts.Directory, Audit: book, Logger: opts.Logger}
	if opts.SSO != nil {
		gateOpts.SSO, gateOpts.People = opts.SSO, people{store.Records()}
	}
	gate := auth.New(gateOpts)
	// The retention policies' untagged-after, as the rules in force say.
	store.Maintenance().SetUntaggedGrace(func(repo string) time.Duration { return gate.Policy().UntaggedAfter(repo) })
	gate.SetAccess(opts.Users, opts.Policy)
	s := &Server{gate: gate, store: store, gcGrace: opts.GCGrace}
	svcOpts := admin.Options{AllowDelete: opts.AllowDelete, ReadOnly: opts.ReadOnly, Collector: opts.Collector, GCGrace: opts.GCGrace, StatusInfo: opts.StatusInfo,
		Fills: func() []cache.ActiveFill { return s.reg.Fills() }, Logger: opts.Logger,
		BlobOwner: func(members map[string]string, d digest.Digest) string {
			id, _ := cluster.BlobOwner(members, d)
			return id
		}}
	if m := opts.Metrics; m != nil {
		svcOpts.Traffic = func() admin.Traffic {
			var t admin.Traffic
			t.FromCache, t.FromUpstream, t.Hits, t.Misses = m.Totals()
			return t
		}
	}
	if n := opts.Notifier; n != nil {
		svcOpts.Deleted = func(r *http.Request, actor, repo, ref string) {
			e := registry.Event{Action: "delete", Repo: repo, Kind: "manifests", Size: -1, Actor: actor}
			if d, err := digest.Parse(ref); err == nil {
				e.Digest = d
			} else {
				e.Tag = ref
			}
			n.Notify(r, e)
		}
	}
	s.svc = admin.New(store, gate, svcOpts)
	book.svc = s.svc
	s.console = console.New(s.svc, gate, console.Options{StatusOf: registry.StatusOf, Logger: opts.Logger})
	s.reg = registry.New(store, gate, registry.Options{
		AllowDelete: opts.AllowDelete, ReadOnly: opts.ReadOnly, Headers: opts.Headers, Sendfile: opts.Sendfile, Logger: opts.Logger, Upstream: opts.Upstream,
		TagTTL: opts.TagTTL, MissTTL: opts.MissTTL, Offline: opts.Offline, PrefetchParallel: opts.PrefetchParallel,
		FillTimeout: opts.FillTimeout, Metrics: opts.Metrics, OnStorageFull: opts.OnStorageFull, MakeRoom: opts.MakeRoom,
		ClientTimeout: opts.ClientTimeout, MaxUploads: opts.MaxUploads, MaxUploadsPerClient: opts.MaxUploadsPerClient,
		PrefetchPlatforms: opts.PrefetchPlatforms, Events: book, Notifier: opts.Notifier,
		Cluster: cluster.New(store, gate, cluster.Options{Relayed: opts.Metrics.NoteRelayed, Logger: opts.Logger}),
		Planes: []registry.Plane{
			{Label: "api", Prefixes: []string{admin.APIPrefix}, Serve: s.svc.ServeAPI},
			{Label: "console", Paths: console.Paths, Prefixes: console.Prefixes, Serve: func(w http.ResponseWriter, r *http.Request) error {
				s.console.ServeHTTP(w, r)
				return nil
			}},
		},
	})
	return s
}

// ServeHTTP serves every plane (through the registry's exchange: one
// access log, one set of metrics, one error map).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.reg.ServeHTTP(w, r) }

// SetAccess replaces users and rules for the requests that start from now
// on (SIGHUP reload). A nil policy allows everything (no users).
func (s *Server) SetAccess(users auth.Authenticator, pol *policy.Policy) {
	s.gate.SetAccess(users, pol)
}

// SetReadOnly switches read-only mode (Options.ReadOnly) on or off for
// every plane: writes get 405, collections and evictions pause.
func (s *Server) SetReadOnly(on bool) {
	s.reg.SetReadOnly(on)
	s.svc.SetReadOnly(on)
}

// ReadOnly reports read-only mode.
func (s *Server) ReadOnly() bool { return s.svc.ReadOnly() }

// Drain makes /readyz answer 503 while requests in flight finish.
func (s *Server) Drain() { s.reg.Drain() }

// Close stops background work (upstream fills and prefetches) and waits
// for it.
func (s *Server) Close() { s.reg.Close() }

// Sample records a point of the console's charts (cmd calls it every
// minute).
func (s *Server) Sample() { s.svc.Sample() }

// Policy is the rules in force (pins, retention, immutable tags
// included).
func (s *Server) Policy() *policy.Policy { return s.gate.Policy() }

// WarmPins fetches the pinned mirrored images ahead (the scheduler's):
// how many it warmed, and the first error.
func (s *Server) WarmPins(ctx context.Context) (int, error) { return s.reg.WarmPins(ctx) }

// ApplyRetention applies the retention policies (the scheduler's).
func (s *Server) ApplyRetention() (admin.RetentionReport, error) {
	return s.svc.Retention(nil, nil, false, time.Now())
}

// RecheckPeople asks the identity provider whether the people it signed in
// still sign in (the scheduler's, every --oidc-recheck); a no-op without
// single sign-on.
func (s *Server) RecheckPeople(ctx context.Context, every time.Duration) (admin.RecheckReport, error) {
	if s.gate.SSO() == "" {
		return admin.RecheckReport{}, nil
	}
	return s.svc.Identities().RecheckPeople(ctx, every, time.Now())
}

// NoteGC records a collection that ran (the scheduler's), for the console.
func (s *Server) NoteGC(trigger, user string, rep cache.GCReport, took time.Duration, err error) {
	s.svc.NoteGC(trigger, user, rep, took, err)
}

// events is the book the data plane and the gate report to: the operator
// plane's (set once its service exists, before serving), and the caller's
// listener.
type events struct {
	svc      *admin.Service
	listener Listener // nil: none
}

func (e *events) Audit(a auth.AuditEvent) {
	e.svc.Audit(a)
	if e.listener != nil {
		e.listener.Audit(a)
	}
}

func (e *events) Pulled(repo, ref string) {
	e.svc.Pulled(repo, ref)
	if e.listener != nil {
		e.listener.Pulled(repo, ref)
	}
}

func (e *events) Refused(repo, msg string) {
	e.svc.Refused(repo, msg)
	if e.listener != nil {
		e.listener.Refused(repo, msg)
	}
}
