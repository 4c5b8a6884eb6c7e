package registry

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// startUpload handles POST /v2/<name>/blobs/uploads/: a cross-repository
// mount, a monolithic upload (?digest=), or the start of a session.
// blobMediaType is what registry:2's notifications say a blob is.
const blobMediaType = "application/octet-stream"

func (reg *Registry) startUpload(w http.ResponseWriter, r *http.Request, q *request) error {
	qs := r.URL.Query()
	if mount := qs.Get("mount"); mount != "" {
		d, err := parseDigest(mount)
		if err != nil {
			return err
		}
		// Without a valid source repository the mount falls back to an
		// ordinary upload session, as the spec allows.
		// A mount needs pull rights on the source.
		if from := qs.Get("from"); oci.ValidName(from) && reg.policy().Allowed(auth.CallerOf(r).Subject, from, policy.Pull, reg.origin(from).Mirrored()) {
			release := func() {}
			if size, err := reg.store.StatBlob(from, d); err == nil {
				if release, err = reg.checkQuota(q.repo, d, size); err != nil {
					return err
				}
			}
			size, err := reg.store.MountBlob(from, q.repo, d)
			release()
			if err == nil {
				reg.notify(r, Event{Action: "mount", Repo: q.repo, Kind: "blobs", Digest: d, MediaType: blobMediaType, Size: size, From: from})
				return blobCreated(w, q.repo, d)
			} else if !errors.Is(err, cache.ErrBlobUnknown) {
				return err
			}
		}
	} else if dq := qs.Get("digest"); dq != "" {
		d, err := parseDigest(dq)
		if err != nil {
			return err
		}
		release, err := reg.checkQuota(q.repo, d, r.ContentLength)
		if err != nil {
			return err
		}
		err = reg.store.Uploads().PutBlob(q.repo, d, r.ContentLength, r.Body)
		if release(); err != nil {
			return err
		}
		reg.notify(r, Event{Action: "push", Repo: q.repo, Kind: "blobs", Digest: d, MediaType: blobMediaType, Size: r.ContentLength})
		return blobCreated(w, q.repo, d)
	}
	if _, err := reg.checkQuota(q.repo, "", 0); err != nil { // full already: no session
		return err
	}
	id, err := reg.store.Uploads().NewUpload(q.repo)
	if err != nil {
		return err
	}
	return uploadAccepted(w, http.StatusAccepted, q.repo, id, 0)
}

func (reg *Registry) uploadStatus(w http.ResponseWriter, r *http.Request, q *request) error {
	off, err := reg.store.Uploads().UploadStatus(q.repo, q.upload)
	if err != nil {
		return err
	}
	return uploadAccepted(w, http.StatusNoContent, q.repo, q.upload, off)
}

func (reg *Registry) patchUpload(w http.ResponseWriter, r *http.Request, q *request) error {
	start, err := chunkStart(r)
	if err != nil {
		return err
	}
	body, err := reg.quotaChunk(q.repo, q.upload, r)
	if err != nil {
		return err
	}
	off, err := reg.store.Uploads().AppendUpload(q.repo, q.upload, start, body)
	var rng *cache.RangeError
	if errors.As(err, &rng) {
		setUploadHeaders(w, q.repo, q.upload, rng.Offset)
	}
	if err != nil {
		return err
	}
	return uploadAccepted(w, http.StatusAccepted, q.repo, q.upload, off)
}

// finishUpload handles PUT ...?digest=: an optional last chunk, then the
// verification and commit of the whole blob. A push over its quota is
// refused, and nothing of its session stays.
func (reg *Registry) finishUpload(w http.ResponseWriter, r *http.Request, q *request) (err error) {
	d, err := parseDigest(r.URL.Query().Get("digest"))
	if err != nil {
		return err
	}
	defer func() {
		if isQuotaFull(err) {
			reg.store.Uploads().CancelUpload(q.repo, q.upload)
		}
	}()
	body, err := reg.quotaChunk(q.repo, q.upload, r)
	if err != nil {
		return err
	}
	if start, err := chunkStart(r); err != nil {
		return err
	} else if start >= 0 {
		off, err := reg.store.Uploads().AppendUpload(q.repo, q.upload, start, body)
		if err != nil {
			var rng *cache.RangeError
			if errors.As(err, &rng) {
				setUploadHeaders(w, q.repo, q.upload, off)
			}
			return err
		}
		body = nil
	}
	release := func() {}
	if reg.policy().QuotaFor(q.repo) != nil {
		size, err := reg.store.Uploads().UploadStatus(q.repo, q.upload)
		if err != nil {
			return err
		}
		if body != nil && r.ContentLength > 0 {
			size += r.ContentLength
		}
		if release, err = reg.checkQuota(q.repo, d, size); err != nil {
			return err
		}
	}
	size, err := reg.store.Uploads().FinishUpload(q.repo, q.upload, d, body)
	if release(); err != nil {
		return err
	}
	reg.notify(r, Event{Action: "push", Repo: q.repo, Kind: "blobs", Digest: d, MediaType: blobMediaType, Size: size})
	return blobCreated(w, q.repo, d)
}

func (reg *Registry) cancelUpload(w http.ResponseWriter, r *http.Request, q *request) error {
	if err := reg.store.Uploads().CancelUpload(q.repo, q.upload); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// chunkStart reads Content-Range ("<start>-<end>", inclusive) and checks it
// against Content-Length. -1 means the request has no Content-Range.
func chunkStart(r *http.Request) (int64, error) {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return -1, nil
	}
	cr = strings.TrimPrefix(cr, "bytes ")
	a, b, ok := strings.Cut(cr, "-")
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if !ok || err1 != nil || err2 != nil || start < 0 || end < start-1 {
		return 0, &oci.Error{Code: oci.CodeBlobUploadInvalid, Status: http.StatusRequestedRangeNotSatisfiable,
			Message: fmt.Sprintf("invalid Content-Range %q", r.Header.Get("Content-Range"))}
	}
	if r.ContentLength >= 0 && r.ContentLength != end-start+1 {
		return 0, oci.Errorf(oci.CodeSizeInvalid, "Content-Range %q announces %d bytes, Content-Length %d", cr, end-start+1, r.ContentLength)
	}
	return start, nil
}

func setUploadHeaders(w http.ResponseWriter, name, id string, off int64) {
	h := w.Header()
	setLocation(w, name, "blobs", "uploads", id)
	h.Set("Docker-Upload-UUID", id)
	last := off - 1
	if last < 0 {
		last = 0
	}
	h.Set("Range", fmt.Sprintf("0-%d", last))
}

func uploadAccepted(w http.ResponseWriter, status int, name, id string, off int64) error {
	setUploadHeaders(w, name, id, off)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
	return nil
}

func blobCreated(w http.ResponseWriter, name string, d digest.Digest) error {
	h := w.Header()
	setLocation(w, name, "blobs", d.String())
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}
