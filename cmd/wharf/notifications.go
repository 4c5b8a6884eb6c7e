package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/notify"
)

// notifyFlags are serve's flags for registry:2-style notifications: one
// endpoint of Wharf's own, besides registry:2's notifications.endpoints.
var notifyFlags = []cli.Flag{
	altsrc.NewStringFlag(&cli.StringFlag{Name: "notify-url", Usage: "send registry:2's notifications (push, pull, delete, mount events in its envelope) to this URL, queued durably and retried; more endpoints, and registry:2's options, through --registry-config's notifications.endpoints", EnvVars: []string{"WHARF_NOTIFY_URL"}}),
	altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "notify-header", Usage: "`NAME: VALUE` sent with each --notify-url delivery (repeatable; e.g. Authorization)", EnvVars: []string{"WHARF_NOTIFY_HEADER"}}),
	altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "notify-ignore-action", Usage: "actions not sent to --notify-url (pull, push, delete, mount; repeatable)", EnvVars: []string{"WHARF_NOTIFY_IGNORE_ACTION"}}),
	altsrc.NewIntFlag(&cli.IntFlag{Name: "notify-max-pending", Value: 100000, Usage: "events kept per endpoint while it is down; past it the oldest are dropped (logged, counted)", EnvVars: []string{"WHARF_NOTIFY_MAX_PENDING"}}),
	altsrc.NewDurationFlag(&cli.DurationFlag{Name: "notify-max-age", Value: 7 * 24 * time.Hour, Usage: "events older than this that an endpoint has not taken are dropped (logged, counted)", EnvVars: []string{"WHARF_NOTIFY_MAX_AGE"}}),
}

// r2Endpoint is one of registry:2's notifications.endpoints.
type r2Endpoint struct {
	Name              string              `yaml:"name"`
	Disabled          bool                `yaml:"disabled"`
	URL               string              `yaml:"url"`
	Headers           map[string][]string `yaml:"headers"`
	Timeout           string              `yaml:"timeout"`
	Threshold         int                 `yaml:"threshold"`
	Backoff           string              `yaml:"backoff"`
	IgnoredMediaTypes []string            `yaml:"ignoredmediatypes"`
	Ignore            struct {
		MediaTypes []string `yaml:"mediatypes"`
		Actions    []string `yaml:"actions"`
	} `yaml:"ignore"`
}

// r2Notifications is registry:2's notifications section.
type r2Notifications struct {
	Events struct {
		IncludeReferences bool `yaml:"includereferences"`
	} `yaml:"events"`
	Endpoints []r2Endpoint `yaml:"endpoints"`
}

// readR2Notifications decodes registry:2's notifications section (from
// config.yml, or REGISTRY_NOTIFICATIONS_ENDPOINTS holding the endpoints as
// YAML, which registry:2 accepts too). A key Wharf does not know is refused.
func readR2Notifications(section any, endpointsVar string) ([]notify.Endpoint, []string, error) {
	var n r2Notifications
	if section != nil {
		raw, _ := yaml.Marshal(section)
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&n); err != nil {
			return nil, nil, fmt.Errorf("notifications: %v", err)
		}
	}
	if endpointsVar != "" {
		n.Endpoints = nil
		dec := yaml.NewDecoder(strings.NewReader(endpointsVar))
		dec.KnownFields(true)
		if err := dec.Decode(&n.Endpoints); err != nil {
			return nil, nil, fmt.Errorf("REGISTRY_NOTIFICATIONS_ENDPOINTS (the endpoints as YAML): %v", err)
		}
	}
	var warnings []string
	if n.Events.IncludeReferences {
		warnings = append(warnings, "notifications.events.includereferences ignored: Wharf's events name the manifest, not its references")
	}
	var out []notify.Endpoint
	for _, e := range n.Endpoints {
		ep := notify.Endpoint{Name: e.Name, URL: e.URL, Disabled: e.Disabled, Threshold: e.Threshold, Headers: http.Header{},
			IgnoredMediaTypes: append(append([]string{}, e.IgnoredMediaTypes...), e.Ignore.MediaTypes...), IgnoredActions: e.Ignore.Actions}
		for k, vs := range e.Headers {
			ep.Headers[textproto.CanonicalMIMEHeaderKey(k)] = vs
		}
		for _, d := range []struct {
			raw string
			to  *time.Duration
			key string
		}{{e.Timeout, &ep.Timeout, "timeout"}, {e.Backoff, &ep.Backoff, "backoff"}} {
			if d.raw == "" {
				continue
			}
			v, err := time.ParseDuration(d.raw)
			if err != nil {
				return nil, nil, fmt.Errorf("notifications.endpoints %s: %s %q: %v", e.Name, d.key, d.raw, err)
			}
			*d.to = v
		}
		out = append(out, ep)
	}
	return out, warnings, nil
}

// notifyOptions are the endpoints registry:2's configuration and Wharf's
// flags name, and the queue's bounds.
func notifyOptions(c *cli.Context, r2 *registry2Config) (notify.Options, error) {
	o := notify.Options{Endpoints: r2.endpoints, MaxPending: c.Int("notify-max-pending"), MaxAge: c.Duration("notify-max-age")}
	if u := c.String("notify-url"); u != "" {
		ep := notify.Endpoint{Name: "wharf", URL: u, Headers: http.Header{}, IgnoredActions: c.StringSlice("notify-ignore-action")}
		for _, h := range c.StringSlice("notify-header") {
			k, v, ok := strings.Cut(h, ":")
			if !ok || strings.TrimSpace(k) == "" {
				return o, fmt.Errorf("--notify-header %q: want NAME: VALUE", h)
			}
			ep.Headers.Add(textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)), strings.TrimSpace(v))
		}
		o.Endpoints = append(o.Endpoints, ep)
	}
	if err := notify.Check(o.Endpoints); err != nil {
		return o, err
	}
	for _, a := range c.StringSlice("notify-ignore-action") {
		switch a {
		case "pull", "push", "delete", "mount":
		default:
			return o, fmt.Errorf("--notify-ignore-action %q: want pull, push, delete or mount", a)
		}
	}
	return o, nil
}

// startNotifier makes the notifier over store's queue when endpoints are
// configured (nil otherwise) and hands it to the data plane; run delivers
// until its context ends.
func startNotifier(cfg *serveConfig, store *cache.Store, promReg *prometheus.Registry) (*notify.Notifier, error) {
	if len(cfg.notify.Endpoints) == 0 {
		return nil, nil
	}
	o := cfg.notify
	o.Logger, o.SourceAddr, o.InstanceID = cfg.log, cfg.addr, store.Cluster().NodeID()
	if o.InstanceID == "" {
		o.InstanceID = uuid.NewString() // registry:2's is one per start too
	}
	n, err := notify.New(store.Queue(), o)
	if err != nil {
		return nil, err
	}
	cfg.mirror.Notifier = n
	promReg.MustRegister(notifyCollector{n})
	for _, s := range n.Status() {
		cfg.log.Info("notifications: registry:2's events are queued in the index and sent", "endpoint", s.Name, "url", s.URL, "disabled", s.Disabled, "pending", s.Pending)
	}
	return n, nil
}

// runNotifier is startNotifier's delivery, as an errgroup function.
func runNotifier(ctx context.Context, n *notify.Notifier) error {
	if n != nil {
		n.Run(ctx)
	}
	return nil
}

// notifyCollector reports each endpoint's figures when scraped.
type notifyCollector struct{ n *notify.Notifier }

var (
	notifySentDesc    = prometheus.NewDesc("wharf_notifications_sent_total", "Notification events this node delivered.", []string{"endpoint"}, nil)
	notifyFailedDesc  = prometheus.NewDesc("wharf_notifications_failed_total", "Failed notification deliveries by this node (each retried).", []string{"endpoint"}, nil)
	notifyDroppedDesc = prometheus.NewDesc("wharf_notifications_dropped_total", "Notification events dropped: past --notify-max-pending or --notify-max-age, or refused by a full index.", []string{"endpoint"}, nil)
	notifyPendingDesc = prometheus.NewDesc("wharf_notifications_pending", "Notification events queued for the endpoint (every node's).", []string{"endpoint"}, nil)
)

func (notifyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- notifySentDesc
	ch <- notifyFailedDesc
	ch <- notifyDroppedDesc
	ch <- notifyPendingDesc
}

func (c notifyCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.n.Status() {
		ch <- prometheus.MustNewConstMetric(notifySentDesc, prometheus.CounterValue, float64(s.Sent), s.Name)
		ch <- prometheus.MustNewConstMetric(notifyFailedDesc, prometheus.CounterValue, float64(s.Failed), s.Name)
		ch <- prometheus.MustNewConstMetric(notifyDroppedDesc, prometheus.CounterValue, float64(s.Dropped), s.Name)
		ch <- prometheus.MustNewConstMetric(notifyPendingDesc, prometheus.GaugeValue, float64(s.Pending), s.Name)
	}
}

// notifyStatus is what the console's overview shows of the notifier.
func notifyStatus(n *notify.Notifier) []admin.NotificationStatus {
	if n == nil {
		return nil
	}
	var out []admin.NotificationStatus
	for _, s := range n.Status() {
		out = append(out, admin.NotificationStatus{Name: s.Name, URL: s.URL, Disabled: s.Disabled, Sent: s.Sent, Failed: s.Failed,
			Dropped: s.Dropped, Pending: s.Pending, LastError: s.LastError, LastSent: s.LastSent})
	}
	return out
}
