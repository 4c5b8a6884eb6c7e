package registry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

func (reg *Registry) getManifest(w http.ResponseWriter, r *http.Request, q *request) error {
	m, err := reg.store.GetManifest(q.repo, q.ref.String())
	if err != nil {
		return err
	}
	return writeManifest(w, r, m)
}

// writeManifest sends m's exact bytes with its media type and digest.
func writeManifest(w http.ResponseWriter, r *http.Request, m *cache.Manifest) error {
	// Canonical keys assigned directly: Set would canonicalize each one
	// again on every warm GET.
	// The values are the cached manifest's, made once (shared, never
	// modified).
	h, mh := w.Header(), m.Header()
	h["Content-Type"] = mh.ContentType
	h["Content-Length"] = mh.ContentLength
	h["Docker-Content-Digest"] = mh.Digest
	h["Etag"] = mh.ETag
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	w.Write(m.Body)
	return nil
}

func (reg *Registry) putManifest(w http.ResponseWriter, r *http.Request, q *request) error {
	var want digest.Digest
	var tags []string
	if q.ref.isDigest() {
		want = q.ref.digest
		tags = r.URL.Query()["tag"]
		for _, t := range tags {
			if err := oci.CheckTag(t); err != nil {
				return err
			}
		}
	} else {
		tags = []string{q.ref.tag}
	}
	if r.ContentLength > cache.MaxManifestSize {
		return cache.ErrManifestTooBig
	}
	release, err := reg.reserveManifest(r)
	if err != nil {
		return err
	}
	defer release()
	body, err := readManifestBody(r)
	if err != nil {
		return err
	}
	m, err := reg.putLinkingFallthrough(r, q, want, tags, body)
	if err != nil {
		return err
	}
	reg.gate.Audit(r, "push", slog.String("repo", q.repo), slog.String("digest", m.Digest.String()), slog.Any("tags", tags))
	e := Event{Action: "push", Repo: q.repo, Kind: "manifests", Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(body))}
	if len(tags) == 0 {
		reg.notify(r, e)
	}
	for _, t := range tags {
		e.Tag = t
		reg.notify(r, e)
	}
	reg.pushed(q)
	h := w.Header()
	setLocation(w, q.repo, "manifests", m.Digest.String())
	h.Set("Docker-Content-Digest", m.Digest.String())
	if m.Subject != "" {
		h.Set("OCI-Subject", m.Subject.String())
	}
	if want != "" && len(tags) > 0 {
		h.Set("OCI-Tag", strings.Join(tags, ", "))
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// pushed forgets the upstream misses remembered for a repository just
// pushed to (and for the mirrored name its reads fell through to until
// now): what upstream lacked may be here now.
func (reg *Registry) pushed(q *request) {
	if reg.pull == nil {
		return
	}
	reg.pull.misses.forget(q.repo)
	if t := policy.Mirror(q.name, ""); !t.Named {
		reg.pull.misses.forget(t.Local)
	}
}

// putLinkingFallthrough stores a pushed manifest. A name whose reads fall
// through to a mirrored copy until it is pushed (registry:2's "centos" is
// Docker Hub's library/centos until then) answered the client's blob
// probes from that copy, so the client skipped uploading those blobs: they
// are linked from the copy, if the caller may pull it, as a mount would.
func (reg *Registry) putLinkingFallthrough(r *http.Request, q *request, want digest.Digest, tags []string, body []byte) (*cache.Manifest, error) {
	mediaType := r.Header.Get("Content-Type")
	var fixed cache.Fixed
	if pol := reg.policy(); pol.HasImmutable() {
		fixed = func(tag string) (string, bool) { return pol.ImmutableTag(q.repo, tag) }
	}
	m, err := reg.store.PutManifestKeeping(q.repo, want, tags, mediaType, body, fixed)
	var missing *cache.MissingRefError
	if err == nil || !errors.As(err, &missing) || reg.pull == nil || q.ns != "" {
		return m, err
	}
	t := policy.Mirror(q.name, "")
	if t.Named || q.repo != q.name {
		return m, err
	}
	if o, ok := reg.store.Origin(t.Local); !ok || !o.Mirrored() ||
		!reg.policy().Allowed(auth.CallerOf(r).Subject, t.Local, policy.Pull, true) {
		return m, err
	}
	for range maxLinkedRefs {
		if _, lerr := reg.store.MountBlob(t.Local, q.repo, missing.Digest); lerr != nil {
			return m, err
		}
		if m, err = reg.store.PutManifestKeeping(q.repo, want, tags, mediaType, body, fixed); err == nil || !errors.As(err, &missing) {
			return m, err
		}
	}
	return m, err
}

// maxLinkedRefs bounds the blobs one manifest push links from a mirrored copy.
const maxLinkedRefs = 1024

func (reg *Registry) deleteManifest(w http.ResponseWriter, r *http.Request, q *request) error {
	if !reg.opts.AllowDelete {
		return oci.ErrDeleteDisabled
	}
	if pol := reg.policy(); pol.HasImmutable() {
		tags, err := reg.store.TagsRemovedBy(q.repo, q.ref.String())
		if err != nil {
			return err
		}
		if why := pol.ImmutableDeleteRefused(auth.CallerOf(r).Subject, q.repo, tags); why != "" {
			return oci.Errorf(oci.CodeDenied, "%s", why)
		}
	}
	if err := reg.store.DeleteReleasing(q.repo, q.ref.String()); err != nil {
		return err
	}
	reg.gate.Audit(r, "delete", slog.String("repo", q.repo), slog.String("reference", q.ref.String()))
	e := Event{Action: "delete", Repo: q.repo, Kind: "manifests", Size: -1}
	if q.ref.isDigest() {
		e.Digest = q.ref.digest
	} else {
		e.Tag = q.ref.tag
	}
	reg.notify(r, e)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// manifestMemory bounds the bytes of pushed manifests held at once: each
// PUT reserves twice its Content-Length (the body, and what checking it
// takes), or twice the largest manifest when it sends none, before it
// reads a byte. Everyday manifests of a few KiB never wait; 60 clients
// pushing 4 MiB manifests at once take turns instead of holding 60 of
// them (and their parsing) in memory together.
const manifestMemory = 32 << 20

// manifestMemWait is how long a PUT waits for its share before 429.
const manifestMemWait = 30 * time.Second

func (reg *Registry) reserveManifest(r *http.Request) (func(), error) {
	n := r.ContentLength
	if n < 0 {
		n = cache.MaxManifestSize
	}
	n = 2 * max(n, 1)
	ctx, cancel := context.WithTimeout(r.Context(), manifestMemWait)
	defer cancel()
	if err := reg.manifestMem.Acquire(ctx, n); err != nil {
		if r.Context().Err() != nil {
			return nil, r.Context().Err()
		}
		return nil, &oci.Error{Code: oci.CodeTooManyRequests, Message: "too many large manifests being pushed at once; retry later", RetryAfter: 1e9}
	}
	return func() { reg.manifestMem.Release(n) }, nil
}

// readManifestBody reads a pushed manifest: with a Content-Length into a
// buffer of that size, else up to the largest manifest allowed.
func readManifestBody(r *http.Request) ([]byte, error) {
	if n := r.ContentLength; n >= 0 {
		body := make([]byte, n)
		if got, err := io.ReadFull(r.Body, body); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return nil, oci.Errorf(oci.CodeSizeInvalid, "manifest body is %d bytes, Content-Length said %d", got, n)
			}
			return nil, oci.Errorf(oci.CodeManifestInvalid, "reading manifest: %v", err)
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, cache.MaxManifestSize+1))
	if err != nil {
		return nil, oci.Errorf(oci.CodeManifestInvalid, "reading manifest: %v", err)
	}
	if len(body) > cache.MaxManifestSize {
		return nil, cache.ErrManifestTooBig
	}
	return body, nil
}
