package mirror

import (
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
)

func (reg *Registry) getBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	d := digest.Digest(rt.ref)
	h := w.Header()
	if r.Method == http.MethodHead {
		size, err := reg.store.StatBlob(rt.name, d)
		if err != nil {
			return err
		}
		setBlobHeaders(h, d)
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return nil
	}
	f, _, err := reg.store.OpenBlob(rt.name, d)
	if err != nil {
		return err
	}
	defer f.Close()
	setBlobHeaders(h, d)
	// ServeContent answers Range (206/416) and If-None-Match; for a file it
	// ends in sendfile.
	http.ServeContent(w, r, "", time.Time{}, f)
	return nil
}

func setBlobHeaders(h http.Header, d digest.Digest) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000, immutable")
}

func (reg *Registry) deleteBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	if !reg.opts.AllowDelete {
		return errDeleteDisabled
	}
	if err := reg.store.DeleteBlob(rt.name, digest.Digest(rt.ref)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}
