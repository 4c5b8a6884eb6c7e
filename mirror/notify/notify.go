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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// Run delivers every enabled endpoint's queue until ctx ends.
func (n *Notifier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ep := range n.eps {
		if ep.Disabled {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.run(ctx, ep)
		}()
	}
	wg.Wait()
}

// claimEvery is how often a node that does not deliver an endpoint's queue
// asks whether the one that did is gone; pollEvery how often a delivering
// node looks for events other nodes queued.
const (
	claimEvery = 2 * time.Second
	pollEvery  = time.Second
	trimEvery  = 10 * time.Second
)

func (n *Notifier) run(ctx context.Context, ep *endpoint) {
	for ctx.Err() == nil {
		release, ok, err := n.q.Claim("notify/" + ep.Name)
		if err != nil || !ok {
			if err != nil {
				ep.setErr("claiming delivery: " + err.Error())
			}
			sleep(ctx, claimEvery)
			continue
		}
		n.deliver(ctx, ep)
		release()
	}
}

// deliver sends ep's queue, oldest first, one event per envelope (as
// registry:2 does), until ctx ends. A crash between a delivery and the
// removal of its event sends that event again, with the same id.
func (n *Notifier) deliver(ctx context.Context, ep *endpoint) {
	failures := 0
	var trimmed time.Time
	for ctx.Err() == nil {
		if time.Since(trimmed) >= trimEvery {
			n.trim(ep)
			trimmed = time.Now()
		}
		items, err := n.q.Peek(ep.Name, deliverBatch)
		if err != nil {
			ep.setErr("reading the queue: " + err.Error())
			sleep(ctx, pollEvery)
			continue
		}
		if len(items) == 0 {
			select {
			case <-ctx.Done():
			case <-ep.wake:
			case <-time.After(pollEvery):
			}
			continue
		}
		sent, err := ep.postEach(ctx, items)
		if sent > 0 {
			if failures >= ep.Threshold {
				n.log.Info("notification endpoint back: delivering", "endpoint", ep.Name)
			}
			failures = 0
			ep.sent.Add(int64(sent))
			ep.mu.Lock()
			ep.lastSent, ep.lastErr = time.Now(), ""
			ep.mu.Unlock()
			if rerr := n.q.Remove(items[:sent]); rerr != nil {
				ep.setErr("removing sent events: " + rerr.Error())
				sleep(ctx, pollEvery)
				continue
			}
		}
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		ep.failed.Add(1)
		failures++
		ep.setErr(err.Error())
		if failures == ep.Threshold {
			n.log.Warn("notification endpoint failing: retrying with backoff", "endpoint", ep.Name, "backoff", ep.Backoff, "err", err)
		}
		delay := 100 * time.Millisecond
		if failures >= ep.Threshold {
			delay = ep.Backoff
		}
		sleep(ctx, delay)
	}
}

// deliverBatch is how many queued events one round reads: they are sent
// one per envelope, in order, and removed together (one index write).
const deliverBatch = 64

// postEach sends items in order until one fails; sent counts those taken.
func (ep *endpoint) postEach(ctx context.Context, items []cache.QueueItem) (sent int, err error) {
	for _, it := range items {
		if err := ep.post(ctx, it.Val); err != nil {
			return sent, err
		}
		sent++
	}
	return sent, nil
}

// post sends one event; any 2xx or 3xx is taken (as registry:2 does).
func (ep *endpoint) post(ctx context.Context, event []byte) error {
	body := make([]byte, 0, len(event)+16)
	body = append(append(append(body, `{"events":[`...), event...), "]}"...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	for k, vs := range ep.Headers {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", MediaType)
	resp, err := ep.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so that the connection is kept
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return errors.New("endpoint answered " + resp.Status)
	}
	return nil
}

// trim drops ep's events past the bounds: the oldest beyond MaxPending,
// and any older than MaxAge.
func (n *Notifier) trim(ep *endpoint) {
	count, oldest, err := n.q.Len(ep.Name)
	if err != nil || count == 0 {
		return
	}
	over := count - n.opts.MaxPending
	old := !oldest.IsZero() && time.Since(oldest) > n.opts.MaxAge
	if over <= 0 && !old {
		return
	}
	items, err := n.q.Peek(ep.Name, max(over, 0)+1000)
	if err != nil {
		return
	}
	cut := time.Now().Add(-n.opts.MaxAge)
	var drop []cache.QueueItem
	for i, it := range items {
		if i < over || it.At.Before(cut) {
			drop = append(drop, it)
		}
	}
	if len(drop) == 0 || n.q.Remove(drop) != nil {
		return
	}
	ep.dropped.Add(int64(len(drop)))
	n.log.Warn("notifications dropped: the endpoint has not taken them within the bounds", "endpoint", ep.Name,
		"dropped", len(drop), "pending", count-len(drop), "max_pending", n.opts.MaxPending, "max_age", n.opts.MaxAge)
}

func (ep *endpoint) setErr(s string) {
	ep.mu.Lock()
	ep.lastErr = s
	ep.mu.Unlock()
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

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
