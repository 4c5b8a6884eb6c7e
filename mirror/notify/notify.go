// Package notify sends registry:2's notifications: every push, pull,
// delete and mount the data plane reports (registry.Notifier) becomes an
// event in registry:2's envelope, POSTed to each endpoint that wants it.
// Unlike registry:2, whose queue lives in memory, each event is queued in
// the index before the client is answered (cache.Queue): a restart or a
// crash loses none, and on a cluster the nodes share the queue while one
// of them at a time delivers each endpoint's. An endpoint that is down is
// retried with backoff; events are dropped only past a stated bound (count
// or age), with a log line and a count.
package notify

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/registry"
)

// MediaType is the envelope's content type, registry:2's.
const MediaType = "application/vnd.docker.distribution.events.v1+json"

// Endpoint is one receiver, as registry:2's notifications.endpoints has it.
type Endpoint struct {
	Name     string
	URL      string
	Headers  http.Header
	Timeout  time.Duration // per delivery (default 5 s)
	Disabled bool
	// Threshold failures in a row are retried at once (100 ms apart);
	// after that each retry waits Backoff (defaults 3 and 10 s).
	Threshold int
	Backoff   time.Duration
	// IgnoredMediaTypes and IgnoredActions are never queued for it.
	IgnoredMediaTypes []string
	IgnoredActions    []string
}

// Options configures a Notifier.
type Options struct {
	Endpoints []Endpoint
	// MaxPending bounds each endpoint's queue (default 100000 events) and
	// MaxAge the age of its events (default 7 days): past them the
	// oldest are dropped, logged and counted.
	MaxPending int
	MaxAge     time.Duration
	// Source is the envelope's source: this node's address and id.
	SourceAddr, InstanceID string
	Logger                 *slog.Logger
}

// Notifier queues events and delivers them. It is safe for concurrent use.
type Notifier struct {
	q    *cache.Queue
	opts Options
	log  *slog.Logger
	eps  []*endpoint
	// the group commit: open is the batch requests join, writing says a
	// batch is being written, written signals its end
	mu      sync.Mutex
	open    *batch
	writing bool
	written sync.Cond
}

type endpoint struct {
	Endpoint
	wake                  chan struct{}
	client                *http.Client
	sent, failed, dropped atomic.Int64
	mu                    sync.Mutex
	lastErr               string
	lastSent              time.Time
}

// New checks the endpoints and returns their notifier; Run delivers.
func New(q *cache.Queue, o Options) (*Notifier, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 100000
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	if err := Check(o.Endpoints); err != nil {
		return nil, err
	}
	n := &Notifier{q: q, opts: o, log: o.Logger}
	n.written.L = &n.mu
	for _, e := range o.Endpoints {
		if e.Timeout <= 0 {
			e.Timeout = 5 * time.Second
		}
		if e.Threshold <= 0 {
			e.Threshold = 3
		}
		if e.Backoff <= 0 {
			e.Backoff = 10 * time.Second
		}
		n.eps = append(n.eps, &endpoint{Endpoint: e, wake: make(chan struct{}, 1), client: &http.Client{Timeout: e.Timeout}})
	}
	return n, nil
}

// Check refuses endpoints without a name of their own or an http(s) URL.
func Check(eps []Endpoint) error {
	seen := map[string]bool{}
	for _, e := range eps {
		if e.Name == "" || seen[e.Name] {
			return fmt.Errorf("notification endpoint %q: every endpoint needs a name of its own", e.Name)
		}
		seen[e.Name] = true
		u, err := url.Parse(e.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("notification endpoint %s: url %q is no http(s) URL", e.Name, e.URL)
		}
	}
	return nil
}

// wireEvent is one event of registry:2's envelope.
type wireEvent struct {
	ID        string    `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Action    string    `json:"action"`
	Target    struct {
		MediaType      string `json:"mediaType,omitempty"`
		Size           int64  `json:"size,omitempty"`
		Digest         string `json:"digest,omitempty"`
		Length         int64  `json:"length,omitempty"`
		Repository     string `json:"repository"`
		FromRepository string `json:"fromRepository,omitempty"`
		URL            string `json:"url,omitempty"`
		Tag            string `json:"tag,omitempty"`
	} `json:"target"`
	Request struct {
		ID        string `json:"id"`
		Addr      string `json:"addr"`
		Host      string `json:"host"`
		Method    string `json:"method"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
	Actor struct {
		Name string `json:"name,omitempty"`
	} `json:"actor"`
	Source struct {
		Addr       string `json:"addr"`
		InstanceID string `json:"instanceID"`
	} `json:"source"`
}

// Notify queues e for every endpoint that wants it, durably, before it
// returns (registry.Notifier). An event the index refuses (a full disk)
// is lost: logged and counted as dropped.
func (n *Notifier) Notify(r *http.Request, e registry.Event) {
	var to []string
	var eps []*endpoint
	for _, ep := range n.eps {
		if ep.Disabled || slices.Contains(ep.IgnoredActions, e.Action) || (e.MediaType != "" && slices.Contains(ep.IgnoredMediaTypes, e.MediaType)) {
			continue
		}
		to, eps = append(to, ep.Name), append(eps, ep)
	}
	if len(to) == 0 {
		return
	}
	now := time.Now().UTC()
	var w wireEvent
	w.ID, w.Timestamp, w.Action = uuid.NewString(), now, e.Action
	w.Target.MediaType, w.Target.Repository, w.Target.FromRepository, w.Target.Tag = e.MediaType, e.Repo, e.From, e.Tag
	if e.Size >= 0 {
		w.Target.Size, w.Target.Length = e.Size, e.Size
	}
	if e.Digest != "" {
		w.Target.Digest = e.Digest.String()
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		w.Target.URL = scheme + "://" + r.Host + "/v2/" + e.Repo + "/" + e.Kind + "/" + e.Digest.String()
	}
	w.Request.ID = r.Header.Get("X-Request-Id")
	if w.Request.ID == "" {
		w.Request.ID = uuid.NewString()
	}
	w.Request.Addr, w.Request.Host, w.Request.Method, w.Request.UserAgent = r.RemoteAddr, r.Host, r.Method, r.UserAgent()
	w.Actor.Name = auth.CallerOf(r).User
	if e.Actor != "" {
		w.Actor.Name = e.Actor
	}
	w.Source.Addr, w.Source.InstanceID = n.opts.SourceAddr, n.opts.InstanceID
	body, _ := json.Marshal(w)
	if err := n.commit(cache.QueueEntry{Queues: to, At: now, Val: body}); err != nil {
		for _, ep := range eps {
			ep.dropped.Add(1)
		}
		n.log.Error("notification lost: the index did not take it", "action", e.Action, "repo", e.Repo, "endpoints", to, "err", err)
		return
	}
	for _, ep := range eps {
		select {
		case ep.wake <- struct{}{}:
		default:
		}
	}
}

// batch is the events of concurrent requests written by one of them.
type batch struct {
	entries []cache.QueueEntry
	done    bool
	err     error
}

// commit queues e durably (group commit): the entries of requests that
// arrive while another batch is being written go together in the next
// one, written by one of them, so that a durable write is shared by every
// request waiting for it.
func (n *Notifier) commit(e cache.QueueEntry) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	b := n.open
	if b == nil {
		b = &batch{}
		n.open = b
	}
	b.entries = append(b.entries, e)
	for n.writing && !b.done {
		n.written.Wait()
	}
	if b.done {
		return b.err
	}
	n.writing, n.open = true, nil
	n.mu.Unlock()
	err := n.q.Enqueue(b.entries)
	n.mu.Lock()
	b.done, b.err, n.writing = true, err, false
	n.written.Broadcast()
	return err
}

// Status is one endpoint's figures.
type Status struct {
	Name, URL             string
	Disabled              bool
	Sent, Failed, Dropped int64 // by this node since it started
	Pending               int   // queued, every node's
	LastError             string
	LastSent              time.Time
}

// Status reports every endpoint.
func (n *Notifier) Status() []Status {
	out := make([]Status, 0, len(n.eps))
	for _, ep := range n.eps {
		s := Status{Name: ep.Name, URL: redact(ep.URL), Disabled: ep.Disabled, Sent: ep.sent.Load(), Failed: ep.failed.Load(), Dropped: ep.dropped.Load()}
		s.Pending, _, _ = n.q.Len(ep.Name)
		ep.mu.Lock()
		s.LastError, s.LastSent = ep.lastErr, ep.lastSent
		ep.mu.Unlock()
		out = append(out, s)
	}
	return out
}

// redact hides a URL's password.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Redacted()
}
