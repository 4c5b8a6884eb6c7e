// Delivery: one loop per endpoint, on the node that holds its claim.

package notify

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/cache"
)

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

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
