package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	containerdlog "github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"

	"github.com/wharf-registry/wharf/internal/idle"
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
	ctx      context.Context // cancelled by Close: stops probes
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
	// containerd logs every retry and fallback through logrus at info;
	// Wharf reports upstream trouble itself, once, through slog.
	containerdlog.SetLevel("warn")
	c := &Client{opts: opts, log: opts.Logger, regs: map[string]*registry{}, sem: semaphore.NewWeighted(opts.MaxConns),
		segments: newSegBudget(int(opts.SegmentSize), int(max(1, opts.SegmentMemory/opts.SegmentSize)))}
	c.ctx, c.cancel = context.WithCancel(context.Background())
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

func (c *Client) transport(anyAddress bool) *http.Transport {
	// Keepalive probes find a peer that vanished; BodyIdle finds a
	// connection whose peer still acknowledges but sends nothing.
	dialer := &net.Dialer{Timeout: c.opts.DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	if !anyAddress {
		dialer.Control = refuseInternal
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   c.opts.DialTimeout,
		ResponseHeaderTimeout: c.opts.ResponseTimeout,
		MaxIdleConnsPerHost:   int(c.opts.MaxConns),
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

func (c *Client) hosts(name string) ([]docker.RegistryHost, error) {
	r := c.regs[NormalizeName(name)]
	if r == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNotAllowed)
	}
	return []docker.RegistryHost{r.host}, nil
}

// ErrInternalAddress is returned for a connection to a loopback, private,
// link-local or unspecified address that the config did not name.
var ErrInternalAddress = errors.New("refusing to connect to an internal address")

// refuseInternal is a dialer Control: it runs after name resolution, on
// the address actually dialled.
func refuseInternal(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return err
	}
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() || netip.MustParsePrefix("100.64.0.0/10").Contains(ip) {
		return fmt.Errorf("%w %s", ErrInternalAddress, ip)
	}
	return nil
}

// Allowed reports whether registry name may be contacted.
func (c *Client) Allowed(name string) bool { return c.regs[NormalizeName(name)] != nil }

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

// Blob opens blob d of repo at offset and returns it with the size of the
// whole blob. It sends one GET (with Range), no HEAD first: the size comes
// from the response. The reader reconnects with a Range request when the
// connection drops; a large blob read from offset 0 whose connection is
// slow is split into segments fetched in parallel (segments.go). It holds
// one of the MaxConns slots until closed.
func (c *Client) Blob(ctx context.Context, name, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, c.opts.SlotWait)
	err = c.sem.Acquire(wctx, 1)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		return nil, 0, fmt.Errorf("%w: all %d upstream connections busy for %s", ErrBusy, c.opts.MaxConns, c.opts.SlotWait)
	}
	release := func() { c.sem.Release(1) }
	var (
		rs       io.ReadSeekCloser
		first    []byte
		eof      bool
		size     int64
		ranged   bool
		location string
	)
	// From offset 0 the GET asks "bytes=0-" all the same: a 206 says the
	// registry serves ranges, which splitting needs.
	askRange := offset == 0 && c.opts.Segments > 0 && !emptyBlob(d)
	err = c.do(ctx, r, func(ctx context.Context) error {
		cs := callFrom(ctx)
		if askRange {
			ctx = withRange(ctx, -1)
		}
		f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+d.String())
		if err != nil {
			return err
		}
		// containerd's Fetch opens lazily and wants a size to stop at;
		// the real one is the response's (the recorder notes it), so the
		// first read, which sends the GET, happens here: errors and the
		// size are known before Blob returns.
		if rs, first, eof, err = openAt(ctx, f, d, unknownSize, offset); err != nil {
			return err
		}
		ranged, location = cs.rangeStart() == offset, cs.redirectedTo()
		if size = cs.blobSize(); size < 0 {
			// A GET without a length (chunked): ask the HEAD, as before.
			if size, err = headBlob(ctx, f, d); err == nil && size < 0 {
				err = fmt.Errorf("%w: blob %s answered without a length", ErrInvalid, d)
			}
			if err != nil {
				rs.Close()
				return err
			}
		}
		return nil
	})
	if err != nil {
		release()
		return nil, 0, err
	}
	var rd io.ReadCloser = &primed{first: first, eof: eof, rc: rs}
	if askRange && ranged && !eof && size >= 2*c.opts.SegmentSize {
		rd = c.newSegmented(ctx, r, repo, d, size, rd, int64(len(first)), location)
	}
	return newSlotReader(rd, release, r.stalled), size, nil
}

// openAt opens blob d with containerd's reader, which stops at size, seeks
// to offset and reads the first bytes (sending the GET).
func openAt(ctx context.Context, f remotes.Fetcher, d digest.Digest, size, offset int64) (rs io.ReadSeekCloser, first []byte, eof bool, err error) {
	rc, err := f.Fetch(ctx, ocispec.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size})
	if err != nil {
		return nil, nil, false, err
	}
	rs, ok := rc.(io.ReadSeekCloser)
	if !ok {
		rc.Close()
		return nil, nil, false, errors.New("containerd blob reader cannot seek")
	}
	if offset > 0 {
		if _, err := rs.Seek(offset, io.SeekStart); err != nil {
			rs.Close()
			return nil, nil, false, err
		}
	}
	buf := make([]byte, 32<<10)
	n, err := rs.Read(buf)
	if err != nil && err != io.EOF {
		rs.Close()
		return nil, nil, false, err
	}
	return rs, buf[:n], err == io.EOF, nil
}

// unknownSize stands for "up to the end of the response" in containerd's
// reader, which needs a size to stop at.
const unknownSize = math.MaxInt64 - 1

// primed is a reader whose first bytes were already read (and maybe its
// end: containerd's reader must not be read past its end, it would
// reopen the blob there).
type primed struct {
	first []byte
	eof   bool
	rc    io.ReadCloser
}

func (p *primed) Read(b []byte) (int, error) {
	if len(p.first) > 0 {
		n := copy(b, p.first)
		p.first = p.first[n:]
		return n, nil
	}
	if p.eof {
		return 0, io.EOF
	}
	n, err := p.rc.Read(b)
	if err == io.EOF {
		p.eof = true
	}
	return n, err
}

func (p *primed) Close() error { return p.rc.Close() }

// stallRelease is how long a blob transfer may make no progress before its
// connection slot goes back to the pool: a stalled connection moves no
// bytes, and must not keep other images' cold pulls waiting. (BodyIdle
// later aborts it.)
const stallRelease = 5 * time.Second

type slotReader struct {
	io.ReadCloser
	once    sync.Once
	release func()
	stalled *time.Timer
}

// newSlotReader calls stalled, too, when the transfer makes no progress
// for stallRelease.
func newSlotReader(rc io.ReadCloser, release, stalled func()) *slotReader {
	s := &slotReader{ReadCloser: rc, release: release}
	s.stalled = time.AfterFunc(stallRelease, func() {
		stalled()
		s.once.Do(s.release)
	})
	return s
}

// stalled is called when a connection to r stops moving bytes or answers
// no request in time: whatever froze it (a middlebox, a peer that lost
// its state) may have frozen the idle connections in r's keep-alive pool
// too, so they are closed rather than reused. A request on one would wait
// the whole response timeout; new connections cost one handshake.
func (r *registry) stalled() { r.tr.CloseIdleConnections() }

func (s *slotReader) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if n > 0 {
		s.stalled.Reset(stallRelease)
	}
	return n, err
}

func (s *slotReader) Close() error {
	s.stalled.Stop()
	err := s.ReadCloser.Close()
	s.once.Do(s.release)
	return err
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
	r := c.regs[NormalizeName(name)]
	if r == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNotAllowed)
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

// callStatus records the HTTP status of the latest response to one
// operation's requests (the recorder writes it through the request context): containerd
// does not always keep the status in the errors it returns.
type callStatus struct {
	mu    sync.Mutex
	last  int
	size  int64 // of the whole blob, from the latest blob response; -1 unknown
	start int64 // where the latest blob response's Content-Range starts; -1 none
	// where the latest blob response came from when the registry
	// redirected there (a CDN's signed URL); "" when it did not
	location string
}

type callStatusKey struct{}

func withCallStatus(ctx context.Context) (context.Context, *callStatus) {
	cs := &callStatus{size: -1, start: -1}
	return context.WithValue(ctx, callStatusKey{}, cs), cs
}

// callFrom returns the callStatus of ctx (a fresh one when it has none).
func callFrom(ctx context.Context) *callStatus {
	if cs, ok := ctx.Value(callStatusKey{}).(*callStatus); ok {
		return cs
	}
	return &callStatus{size: -1, start: -1}
}

func (cs *callStatus) blobSize() int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.size
}

// noteResponse records resp's status and, for a blob's 200 or 206, the
// size of the whole blob (Content-Length, or the total of Content-Range).
func (cs *callStatus) noteResponse(resp *http.Response, blob bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.last = resp.StatusCode
	if !blob {
		return
	}
	cs.start, cs.location = -1, ""
	if resp.Request != nil && resp.Request.Response != nil && resp.StatusCode < 300 {
		cs.location = resp.Request.URL.String()
	}
	switch resp.StatusCode {
	case http.StatusOK:
		cs.size = resp.ContentLength
	case http.StatusPartialContent:
		cs.size = -1
		if start, _, total, ok := contentRange(resp.Header.Get("Content-Range")); ok {
			cs.start, cs.size = start, total
		}
	}
}

// contentRange parses a response's "bytes start-end/total" (total -1 when
// it is "*").
func contentRange(h string) (start, end, total int64, ok bool) {
	span, tot, found := strings.Cut(strings.TrimSpace(h), "/")
	if !found {
		return 0, 0, 0, false
	}
	if n, _ := fmt.Sscanf(span, "bytes %d-%d", &start, &end); n != 2 || start < 0 || end < start {
		return 0, 0, 0, false
	}
	total = -1
	if tot = strings.TrimSpace(tot); tot != "*" {
		var err error
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= end {
			return 0, 0, 0, false
		}
	}
	return start, end, total, true
}

// redirectedTo is where the latest blob response came from after a
// redirect, or "".
func (cs *callStatus) redirectedTo() string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.location
}

// rangeStart is where the latest blob response's bytes start, when it was
// a 206 (-1 otherwise).
func (cs *callStatus) rangeStart() int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.start
}

func (cs *callStatus) get() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.last
}

// do runs op, one idempotent upstream operation, and classifies its
// outcome (observe). A 500, 502, 503 or 504 is retried twice, after
// jittered pauses of about 0.2 s and 0.6 s; timeouts and other errors are
// not (a hung server would only hang longer).
func (c *Client) do(ctx context.Context, r *registry, op func(ctx context.Context) error) error {
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

// observe classifies err, updates r's health and returns the error to give
// callers. Only failures of the registry itself count towards marking it
// down, and only DownAfter of them in a row: a token server's failure, or
// an answer about one repository (401, 403, 404), never does.
func (c *Client) observe(ctx context.Context, r *registry, cs *callStatus, err error) error {
	if err == nil {
		r.mu.Lock()
		r.failures = 0
		r.mu.Unlock()
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	var tokenErr *TokenError
	if errors.As(err, &tokenErr) {
		return fmt.Errorf("%s: %w: %v", r.Name, ErrUnavailable, err)
	}
	var status remoteerrors.ErrUnexpectedStatus
	if errors.As(err, &status) {
		cs.mu.Lock()
		cs.last = status.StatusCode
		cs.mu.Unlock()
	}
	code := cs.get()
	switch {
	case errdefs.IsNotFound(err), code == http.StatusNotFound:
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case errors.Is(err, ErrNotAllowed), errors.Is(err, errRangeIgnored):
		return err
	case code == http.StatusTooManyRequests:
		r.mu.Lock()
		wait := r.retryAfter
		r.limitedUntil = time.Now().Add(wait)
		r.lastErr = "429 Too Many Requests"
		r.mu.Unlock()
		c.log.Warn("upstream rate limit reached", "registry", r.Name, "retry_after", wait)
		return &RateLimitError{Registry: r.Name, RetryAfter: wait}
	case code == http.StatusUnauthorized || code == http.StatusForbidden, errors.Is(err, docker.ErrInvalidAuthorization):
		return fmt.Errorf("%w: %v", ErrDenied, err)
	case code >= 300 && code < 500:
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, ErrStalled) {
		r.stalled()
	}
	c.markFailed(r, err)
	return fmt.Errorf("%s: %w: %v", r.Name, ErrUnavailable, err)
}

// markFailed counts a failure of r; the DownAfter-th in a row marks it down
// and starts a background probe that marks it up again once it answers.
func (c *Client) markFailed(r *registry, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastErr = err.Error()
	if r.failures++; r.failures < c.opts.DownAfter && !r.down {
		return
	}
	if !r.down {
		c.log.Warn("upstream unavailable; serving from cache until it answers", "registry", r.Name, "err", err)
	}
	r.down = true
	if r.probing {
		return
	}
	r.probing = true
	go c.probe(r)
}

func (c *Client) probe(r *registry) {
	t := time.NewTicker(c.opts.ProbeEvery)
	defer t.Stop()
	client := &http.Client{Transport: c.transport(r.Endpoint != ""), Timeout: c.opts.DialTimeout}
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		resp, err := client.Get(r.url.JoinPath("v2/").String())
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode < 500 {
			r.mu.Lock()
			r.down, r.probing, r.failures = false, false, 0
			r.mu.Unlock()
			c.log.Info("upstream is back", "registry", r.Name)
			return
		}
	}
}

// Status is the health of one registry, for logs and status pages.
type Status struct {
	Name, Endpoint     string
	Up                 bool
	RateLimitedUntil   time.Time
	RateLimitRemaining int // -1 when the registry does not say
	LastError          string
}

// Status reports every registry's health.
func (c *Client) Status() []Status {
	var out []Status
	for _, r := range c.regs {
		r.mu.Lock()
		out = append(out, Status{Name: r.Name, Endpoint: r.url.String(), Up: !r.down,
			RateLimitedUntil: r.limitedUntil, RateLimitRemaining: r.remaining, LastError: r.lastErr})
		r.mu.Unlock()
	}
	return out
}

// recorder notes rate-limit headers of every upstream response.
type recorder struct {
	reg  *registry
	opts Options
	next http.RoundTripper
}

func (t *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	// A blob's bytes come from its blobs URL or from where that redirected
	// (a CDN); a token response never says a blob's size.
	blob := strings.Contains(req.URL.Path, "/blobs/") || req.Response != nil
	bounded := false
	if blob && req.Method == http.MethodGet {
		if v, ok := rangeFrom(req.Context(), req.Header.Get("Range")); ok {
			req = req.Clone(req.Context())
			req.Header.Set("Range", v)
			bounded = !strings.HasSuffix(v, "-")
		}
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if bounded && resp.StatusCode == http.StatusOK {
		// containerd would read the whole blob up to the offset.
		resp.Body.Close()
		resp.Body = io.NopCloser(errReader{errRangeIgnored})
	}
	resp.Body = idle.Body(resp.Body, t.opts.BodyIdle, ErrStalled, t.reg.stalled)
	if cs, ok := req.Context().Value(callStatusKey{}).(*callStatus); ok { // the latest response decides
		cs.noteResponse(resp, blob)
	}
	if v := resp.Header.Get("ratelimit-remaining"); v != "" {
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(v, ";", 2)[0]))
		t.reg.mu.Lock()
		t.reg.remaining = n
		t.reg.mu.Unlock()
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		wait := t.opts.RetryAfter
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = time.Duration(s) * time.Second
		} else if at, err := http.ParseTime(resp.Header.Get("Retry-After")); err == nil {
			wait = time.Until(at)
		}
		t.reg.mu.Lock()
		t.reg.retryAfter = wait
		t.reg.mu.Unlock()
	}
	return resp, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
