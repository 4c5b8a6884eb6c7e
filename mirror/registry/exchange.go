package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/cluster"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// exchange is the bookkeeping of one request: every exit of ServeHTTP goes
// through its finish, once (access log, metrics, recent errors, the
// storage-full hook).
type exchange struct {
	w     *statusWriter
	r     *http.Request
	start time.Time
	label string    // route label for metrics: "manifest", "health", "token", ...
	kind  routeKind // for the error mapping
	repo  string
	ref   string // a manifest request's tag or digest
	err   error
	gone  bool // the client went away before an answer: logged as 499
	sw    statusWriter
	q     request // the resolved request (resolve fills it)
}

// ServeHTTP authenticates, routes, resolves and authorizes the request
// once, calls the one handler the route table names, and writes errors.
func (reg *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r = reg.gate.Admit(r) // who calls, from where (behind a trusted proxy)
	if len(reg.opts.Headers) > 0 {
		h := w.Header()
		for k, vs := range reg.opts.Headers {
			h[k] = vs[:len(vs):len(vs)] // an Add by a handler copies, never writes into the configuration
		}
	}
	x := &exchange{sw: statusWriter{ResponseWriter: w}, r: r, start: time.Now(), label: "unknown"}
	x.w = &x.sw
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				reg.finish(x)
				panic(p)
			}
			reg.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			x.err = fmt.Errorf("panic: %v", p)
			if x.w.status == 0 {
				writeError(x.w, oci.Errorf(oci.CodeUnknown, "internal error"), x.kind)
			}
		}
		reg.finish(x)
	}()
	if x.err = reg.dispatch(x); x.err != nil && x.w.status == 0 {
		if x.r.Context().Err() != nil && errors.Is(x.err, context.Canceled) {
			// The client hung up and the handler gave up on that: nobody
			// reads an error. (A body cut off by its deadline also cancels
			// the context, but the client still waits for its 400.)
			x.gone = true
			return
		}
		writeError(x.w, x.err, x.kind)
	}
}

var apiVersion = []string{"registry/2.0"} // never modified

func (reg *Registry) dispatch(x *exchange) error {
	w, r := x.w, x.r
	switch r.URL.Path {
	case "/healthz", "/readyz":
		x.label = "health"
		return reg.health(w, r)
	case "/token":
		if reg.gate.Required() {
			x.label = "token"
			return reg.gate.ServeToken(w, r)
		}
	}
	for i := range reg.opts.Planes {
		if p := &reg.opts.Planes[i]; p.serves(r.URL.Path) {
			x.label = p.Label
			return p.Serve(w, r)
		}
	}
	w.Header()["Docker-Distribution-Api-Version"] = apiVersion
	rt, err := parseRoute(r.URL.Path)
	if err != nil {
		return err
	}
	x.label, x.kind = rt.kind.String(), rt.kind
	if rt.kind == routeManifest {
		x.ref = rt.ref.String()
	}
	q := &x.q
	reg.resolve(r, rt, q)
	x.repo = q.repo
	x.sw.onStatus = reg.pullNotice(x)
	if reg.node != nil {
		if rt.kind == routeUpload {
			if handled, err := reg.node.RelayUpload(w, r, rt.upload); handled {
				return err
			}
		}
		if cluster.Proven(r) {
			r = cluster.ServedHere(r) // another node filling its copy: never sent on to an owner
		}
	}
	h := reg.handler(rt.kind, r.Method, q.mirrored)
	if h == nil {
		return oci.Errorf(oci.CodeUnsupported, "%s not supported on %s", r.Method, r.URL.Path)
	}
	if err := reg.authorize(r, q); err != nil {
		return err
	}
	var slot *uploadSlot // nil: the request holds none
	if (rt.kind == routeUpload || rt.kind == routeUploads) && (r.Method == http.MethodPatch || r.Method == http.MethodPut || r.Method == http.MethodPost) {
		if slot, err = reg.uploads.acquire(r); err != nil {
			return err
		}
		defer slot.release()
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &bodyReader{rc: r.Body, ctl: http.NewResponseController(w), timeout: reg.opts.ClientTimeout, slot: slot, log: reg.log, client: r.RemoteAddr}
	}
	if q.ns != "" && q.mirrored {
		w.Header().Set("OCI-Namespace", q.ns)
	}
	return h(w, r, q)
}

// statusClientGone is what logs and metrics say of a request whose client
// went away before it was answered (nginx's 499): not a server error.
const statusClientGone = 499

// finish logs and counts one request.
func (reg *Registry) finish(x *exchange) {
	r, err, took := x.r, x.err, time.Since(x.start)
	status := x.w.status
	switch {
	case x.gone:
		status = statusClientGone
	case status == 0:
		status = http.StatusOK
	}
	if err != nil && errors.Is(err, cache.ErrStorageFull) && reg.opts.OnStorageFull != nil {
		reg.opts.OnStorageFull()
	}
	if x.kind == routeManifest && r.Method == http.MethodGet && status == http.StatusOK && x.repo != "" && (reg.node == nil || !cluster.Proven(r)) {
		reg.events.Pulled(x.repo, x.ref)
	}
	if m := reg.opts.Metrics; m != nil {
		m.request(x.label, r.Method, status, took.Seconds())
	}
	level := slog.LevelDebug
	switch {
	case status >= 500 && !x.gone:
		level = slog.LevelError
		msg := fmt.Sprintf("%d %s %s", status, r.Method, r.URL.Path)
		if err != nil {
			msg += ": " + err.Error()
		}
		reg.events.Refused(x.repo, msg)
	case status >= 400 && !x.gone && strings.HasPrefix(r.URL.Path, "/v2/") && status != http.StatusUnauthorized && !(status == http.StatusNotFound && r.Method == http.MethodHead):
		// A registry request refused: a client's mistake worth seeing
		// (not the 401 that asks for credentials, nor a push's probe).
		level = slog.LevelInfo
		msg := fmt.Sprintf("%d %s %s", status, r.Method, r.URL.Path)
		if err != nil {
			msg += ": " + err.Error()
		}
		reg.events.Refused(x.repo, msg)
	case status >= 400 || isWrite(r.Method):
		level = slog.LevelInfo
	}
	if !reg.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", status),
		slog.Int64("bytes", x.w.n), slog.Duration("took", took), slog.String("remote", r.RemoteAddr),
	}
	if x.repo != "" {
		attrs = append(attrs, slog.String("repo", x.repo))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	if status == http.StatusUnauthorized || status == http.StatusTooManyRequests {
		// Refused sign-ins and throttled clients come in floods (a
		// password guesser): one line per client address and minute,
		// with the count of those held back.
		ok, held := reg.logLimit.Allow("request\x00"+strconv.Itoa(status)+"\x00"+auth.ClientIP(r), time.Now())
		if !ok {
			return
		}
		if held > 0 {
			attrs = append(attrs, slog.Int("repeated", held))
		}
	}
	reg.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// statusWriter records the status and body size. It keeps ReadFrom so that
// blob bodies still go out with sendfile.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
	// onStatus, when set, is called once with the status before it is
	// written (the pull notice).
	onStatus func(int)
}

func (w *statusWriter) begin(code int) {
	w.status = code
	if w.onStatus != nil {
		w.onStatus(code)
	}
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.begin(code)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.begin(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.begin(http.StatusOK)
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(w.ResponseWriter, src)
	}
	w.n += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
