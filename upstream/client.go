package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	containerdlog "github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/semaphore"
)

// Options configures a Client. Zero values take the defaults in brackets.
type Options struct {
	// Registries are the only registries ever contacted (the allow-list).
	Registries []Registry
	// MaxConns bounds concurrent blob downloads over all registries (32).
	MaxConns int64
	// DialTimeout bounds connecting (5s); ResponseTimeout waiting for
	// response headers (30s).
	DialTimeout, ResponseTimeout time.Duration
	// ProbeEvery is how often a registry marked down is probed (2s).
	ProbeEvery time.Duration
	// RetryAfter is assumed after a 429 without Retry-After (60s).
	RetryAfter time.Duration
	// BodyIdle aborts a response body that delivers nothing for this long
	// (20s): a stalled or black-holed connection, resumed on a new one.
	BodyIdle time.Duration
	// SlotWait bounds the wait for one of the MaxConns slots (30s).
	SlotWait time.Duration
	// DownAfter is how many upstream failures in a row mark a registry
	// down (3); failures that concern one repository never count.
	DownAfter int
	// Segments is how many ranged GETs a large blob whose first connection
	// is slow may have in flight ahead of its reader (4; negative: a blob
	// is never split). SegmentSize is their size (2 MiB); SegmentMemory
	// bounds their buffers over all blobs (16 MiB); a blob is split only
	// when its first connection delivers less than SplitBelow bytes per
	// second (32 MiB/s).
	Segments                               int
	SegmentSize, SegmentMemory, SplitBelow int64
	// SplitAlways splits every large blob of a registry that serves
	// ranges, whatever its connection's measured speed (for tests, whose
	// timing a loaded machine or the race detector distorts).
	SplitAlways bool
	Logger      *slog.Logger
}

// Descriptor identifies upstream content.
type Descriptor = ocispec.Descriptor

// Client fetches from the allowed registries. Safe for concurrent use.
type Client struct {
	opts     Options
	log      *slog.Logger
	regs     map[string]*registry
	resolver remotes.Resolver
	sem      *semaphore.Weighted
	segments *segBudget
	clog     *containerdlog.Entry // containerd's logger for this client's requests
	received atomic.Int64         // blob bytes handed to callers (BytesReceived)
	ctx      context.Context      // cancelled by Close: stops probes
	cancel   context.CancelFunc
}

// registry is one Registry with its connection and health state.
type registry struct {
	Registry
	url  *url.URL
	host docker.RegistryHost
	tr   *http.Transport // its connection pool

	mu           sync.Mutex
	down         bool
	failures     int // unavailability in a row
	probing      bool
	limitedUntil time.Time
	retryAfter   time.Duration // from the last 429
	remaining    int           // ratelimit-remaining, -1 unknown
	lastErr      string
	// Splitting blobs rests until splitRestUntil, for splitRest (see judgeSplit).
	splitRest      time.Duration
	splitRestUntil time.Time
	// What the latest look at a large blob's connection found (decide):
	// slow by the split rule, when.
	linkSlow bool
	linkAt   time.Time
}

// New returns a client for opts.Registries.
func New(opts Options) (*Client, error) {
	if opts.MaxConns <= 0 {
		opts.MaxConns = 32
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.ResponseTimeout <= 0 {
		opts.ResponseTimeout = 30 * time.Second
	}
	if opts.ProbeEvery <= 0 {
		opts.ProbeEvery = 2 * time.Second
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Minute
	}
	if opts.BodyIdle <= 0 {
		opts.BodyIdle = 20 * time.Second
	}
	if opts.SlotWait <= 0 {
		opts.SlotWait = 30 * time.Second
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = 3
	}
	if opts.Segments == 0 {
		opts.Segments = 4
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 2 << 20
	}
	if opts.SegmentMemory <= 0 {
		opts.SegmentMemory = 16 << 20
	}
	if opts.SplitBelow <= 0 {
		opts.SplitBelow = 32 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Client{opts: opts, log: opts.Logger, regs: map[string]*registry{}, sem: semaphore.NewWeighted(opts.MaxConns),
		segments: newSegBudget(int(opts.SegmentSize), int(max(1, opts.SegmentMemory/opts.SegmentSize)))}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.clog = containerdLogger(opts.Logger)
	for _, r := range opts.Registries {
		r.Name = NormalizeName(r.Name)
		u, err := r.endpoint()
		if err != nil {
			return nil, err
		}
		// Only an endpoint the config names may be on a loopback, private or
		// link-local address (no SSRF through a name that resolves there).
		reg := &registry{Registry: r, url: u, remaining: -1, tr: c.transport(r.Endpoint != "")}
		client := &http.Client{Transport: &recorder{reg: reg, opts: opts, next: reg.tr}}
		creds := func(host string) (string, string, error) {
			if host == u.Host { // never another host's realm
				return r.Username, r.Password, nil
			}
			return "", "", nil
		}
		reg.host = docker.RegistryHost{
			Client:       client,
			Authorizer:   newAuthorizer(client, opts.ResponseTimeout, opts.ProbeEvery, opts.Logger, c.ctx.Done(), creds),
			Host:         u.Host,
			Scheme:       u.Scheme,
			Path:         strings.TrimSuffix(u.Path, "/") + "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}
		c.regs[r.Name] = reg
	}
	c.resolver = docker.NewResolver(docker.ResolverOptions{Hosts: c.hosts})
	return c, nil
}

// Close stops background probes.
func (c *Client) Close() { c.cancel() }

// Allowed reports whether registry name may be contacted.
func (c *Client) Allowed(name string) bool { return c.regs[NormalizeName(name)] != nil }

// BytesReceived is the blob bytes received from upstream registries and
// handed to callers so far (a counter, read by the metrics when scraped:
// no call per read).
func (c *Client) BytesReceived() int64 { return c.received.Load() }

// Resolve turns a tag or digest of repo into a descriptor with a HEAD
// request (Docker Hub does not count HEADs against its pull limit).
func (c *Client) Resolve(ctx context.Context, name, repo, ref string) (Descriptor, error) {
	r, err := c.ready(name)
	if err != nil {
		return Descriptor{}, err
	}
	sep := ":"
	if strings.Contains(ref, ":") {
		sep = "@"
	}
	var desc ocispec.Descriptor
	err = c.do(ctx, r, func(ctx context.Context) (err error) {
		_, desc, err = c.resolver.Resolve(ctx, r.Name+"/"+repo+sep+ref)
		return err
	})
	if err != nil {
		return Descriptor{}, err
	}
	return Descriptor{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}, nil
}

// Manifest downloads manifest desc of repo, at most maxSize bytes, and
// checks the bytes hash to desc.Digest. Errors: ErrInvalid, and those of
// Resolve.
func (c *Client) Manifest(ctx context.Context, name, repo string, desc Descriptor, maxSize int64) ([]byte, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, err
	}
	if desc.Size <= 0 || desc.MediaType == "" { // unknown: HEAD it first
		if desc, err = c.Resolve(ctx, name, repo, desc.Digest.String()); err != nil {
			return nil, err
		}
	}
	if desc.Size > maxSize {
		return nil, fmt.Errorf("%w: manifest %s is %d bytes, more than %d", ErrInvalid, desc.Digest, desc.Size, maxSize)
	}
	var body []byte
	err = c.do(ctx, r, func(ctx context.Context) error {
		f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+desc.Digest.String())
		if err != nil {
			return err
		}
		rc, err := f.Fetch(ctx, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
		if err != nil {
			return err
		}
		defer rc.Close()
		body, err = io.ReadAll(io.LimitReader(rc, maxSize+1))
		return err
	})
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > maxSize || desc.Digest.Algorithm().FromBytes(body) != desc.Digest {
		return nil, fmt.Errorf("%w: manifest bytes do not hash to %s", ErrInvalid, desc.Digest)
	}
	return body, nil
}

// HasBlob asks, with a HEAD, whether repo holds blob d upstream.
func (c *Client) HasBlob(ctx context.Context, name, repo string, d digest.Digest) error {
	r, err := c.ready(name)
	if err != nil {
		return err
	}
	return c.do(ctx, r, func(ctx context.Context) error {
		f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+d.String())
		if err != nil {
			return err
		}
		_, err = headBlob(ctx, f, d)
		return err
	})
}

// headBlob sends a HEAD for blob d and returns its Content-Length (-1 when
// the registry gives none).
func headBlob(ctx context.Context, f remotes.Fetcher, d digest.Digest) (int64, error) {
	byDigest, ok := f.(remotes.FetcherByDigest)
	if !ok {
		return 0, errors.New("containerd fetcher cannot fetch by digest")
	}
	rc, desc, err := byDigest.FetchByDigest(ctx, d) // only the HEAD until read
	if err != nil {
		return 0, err
	}
	rc.Close()
	return desc.Size, nil
}

// ready fails fast for a registry that is not allowed, down or rate limited.
func (c *Client) ready(name string) (*registry, error) {
	r := c.regs[name] // names from policy's targets are normalised already
	if r == nil {
		if r = c.regs[NormalizeName(name)]; r == nil {
			return nil, fmt.Errorf("%s: %w", name, ErrNotAllowed)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return nil, fmt.Errorf("%s: %w (%s)", r.Name, ErrUnavailable, r.lastErr)
	}
	if wait := time.Until(r.limitedUntil); wait > 0 {
		return nil, &RateLimitError{Registry: r.Name, RetryAfter: wait}
	}
	return r, nil
}

// do runs op, one idempotent upstream operation, and classifies its
// outcome (observe). A 500, 502, 503 or 504 is retried twice, after
// jittered pauses of about 0.2 s and 0.6 s; timeouts and other errors are
// not (a hung server would only hang longer).
func (c *Client) do(ctx context.Context, r *registry, op func(ctx context.Context) error) error {
	ctx = containerdlog.WithLogger(ctx, c.clog)
	for attempt := 0; ; attempt++ {
		octx, cs := withCallStatus(ctx)
		err := op(octx)
		code := cs.get()
		transient := code == 500 || code == 502 || code == 503 || code == 504
		if err == nil || !transient || attempt == 2 || ctx.Err() != nil {
			return c.observe(octx, r, cs, err)
		}
		pause := time.Duration(200*(1+2*attempt)) * time.Millisecond
		pause = pause/2 + time.Duration(rand.Int64N(int64(pause)))
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return c.observe(octx, r, cs, err)
		}
	}
}

// containerdLogger is the logger containerd's resolver uses for this
// client's requests (through their context, not its process-wide one): it
// logs every retry and fallback at info, while Wharf reports upstream
// trouble itself, once, through slog; only its warnings and errors go on,
// to log.
func containerdLogger(log *slog.Logger) *containerdlog.Entry {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	l.SetOutput(io.Discard)
	l.AddHook(slogHook{log})
	return logrus.NewEntry(l)
}

// slogHook hands containerd's warnings and errors to slog.
type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slog.LevelWarn
	if e.Level < logrus.WarnLevel {
		level = slog.LevelError
	}
	args := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		args = append(args, k, v)
	}
	h.log.Log(context.Background(), level, "containerd: "+e.Message, args...)
	return nil
}
