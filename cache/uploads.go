package cache

import (
	"crypto/sha256"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache/blobs"
)

// uploadRecord is an upload session as the index keeps it. State is the
// sha256 state after Offset bytes, so a session is verified without
// re-reading its file when the client's digest is sha256.
type uploadRecord struct {
	Repo    string    `json:"repo"`
	Updated time.Time `json:"updated"`
	Offset  int64     `json:"offset"`
	State   []byte    `json:"state,omitempty"`
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// NewUpload opens an upload session for repo and returns its id.
func (s *Uploads) NewUpload(repo string) (string, error) {
	id := "up-" + uuid.NewString()
	if s.nodeID != "" {
		// Its bytes stay on this node: the id says which it is.
		id = "up-" + s.nodeID + "." + uuid.NewString()
	}
	rec, err := json.Marshal(uploadRecord{Repo: repo, Updated: time.Now().UTC()})
	if err != nil {
		return "", err
	}
	if err := s.update(func(txn Txn) error { return txn.Set(uploadKey(id), rec) }); err != nil {
		return "", err
	}
	return id, nil
}

// UploadNode is the cluster node holding upload session id ("" for a
// single box's session, or not an upload id).
func UploadNode(id string) string {
	rest, ok := strings.CutPrefix(id, "up-")
	if !ok {
		return ""
	}
	node, _, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	return node
}

func (s *Uploads) loadUpload(repo, id string) (*uploadRecord, error) {
	if !strings.HasPrefix(id, "up-") {
		return nil, ErrUploadUnknown
	}
	rec, err := s.readUpload(id)
	if errors.Is(err, errNotFound) || (err == nil && rec.Repo != repo) {
		return nil, ErrUploadUnknown
	}
	return rec, err
}

// readUpload reads session id's record (errNotFound if none).
func (s *Uploads) readUpload(id string) (*uploadRecord, error) {
	var rec uploadRecord
	err := s.idx.View(func(txn Txn) error {
		v, err := txn.Get(uploadKey(id))
		if err != nil {
			return err
		}
		return json.Unmarshal(v, &rec)
	})
	return &rec, err
}

func (s *Uploads) saveUpload(id string, rec *uploadRecord) error {
	rec.Updated = time.Now().UTC()
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.update(func(txn Txn) error { return txn.Set(uploadKey(id), v) })
}

// UploadStatus returns how many bytes session id of repo holds.
// Errors: ErrUploadUnknown.
func (s *Uploads) UploadStatus(repo, id string) (int64, error) {
	rec, err := s.loadUpload(repo, id)
	if err != nil {
		return 0, err
	}
	return rec.Offset, nil
}

// AppendUpload appends r to session id of repo and returns the new offset.
// start is where the client says the chunk begins (-1: wherever the session
// ends); a different start gives *RangeError. A chunk is stored whole or
// not at all: when r fails or the disk is full, the session stays where it
// was. Errors: ErrUploadUnknown, *RangeError, ErrStorageFull.
func (s *Uploads) AppendUpload(repo, id string, start int64, r io.Reader) (int64, error) {
	defer s.uploadLocks.lock(id)()
	rec, err := s.loadUpload(repo, id)
	if err != nil {
		return 0, err
	}
	if start >= 0 && start != rec.Offset {
		return rec.Offset, &RangeError{Offset: rec.Offset}
	}
	next := *rec
	if err := s.appendLocked(id, &next, r); err != nil {
		return rec.Offset, err
	}
	if err := s.saveUpload(id, &next); err != nil {
		s.truncateIngest(id, rec.Offset)
		return rec.Offset, err
	}
	return next.Offset, nil
}

// appendLocked appends r to the session's file and advances rec (offset
// and hash state). The file is first cut back to the recorded offset: a
// crash in the middle of an earlier chunk leaves bytes no record counts.
// On failure the file is cut back again and rec is unchanged.
func (s *Uploads) appendLocked(id string, rec *uploadRecord, r io.Reader) error {
	app, err := s.blobs.Append(id)
	if err != nil {
		return err
	}
	defer app.Close()
	switch size := app.Size(); {
	case size > rec.Offset:
		s.log.Info("upload session file longer than its record (a crash mid-chunk): cut back", "upload", id, "file", size, "offset", rec.Offset)
		if err := app.Truncate(rec.Offset); err != nil {
			return err
		}
	case size < rec.Offset:
		return fmt.Errorf("%w: session file has %d of its %d bytes", ErrUploadUnknown, size, rec.Offset)
	}
	h := sha256.New()
	hashed := rec.Offset == 0
	if !hashed && rec.State != nil {
		hashed = h.(encoding.BinaryUnmarshaler).UnmarshalBinary(rec.State) == nil
	}
	if r == nil {
		r = eofReader{}
	}
	if _, err := copyHashed(app, h, r); err != nil {
		if terr := app.Truncate(rec.Offset); terr != nil {
			return errors.Join(err, terr)
		}
		return err
	}
	rec.Offset = app.Size()
	rec.State = nil
	if hashed {
		if rec.State, err = h.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
			return err
		}
	}
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// truncateIngest cuts session id's file back to size (best effort: the
// next append does it too).
func (s *Uploads) truncateIngest(id string, size int64) {
	if app, err := s.blobs.Append(id); err == nil {
		app.Truncate(size)
		app.Close()
	}
}

// copyHashed copies r to w, hashing exactly the bytes w accepted.
func copyHashed(w io.Writer, h hash.Hash, r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			wn, werr := w.Write(buf[:n])
			h.Write(buf[:wn])
			total += int64(wn)
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		} else if rerr != nil {
			return total, rerr
		}
	}
}

// FinishUpload appends r (may be nil) to session id, verifies the whole
// upload against d and links the blob into repo. On a mismatch the session
// is cancelled. Errors: ErrUploadUnknown, ErrDigestMismatch.
func (s *Uploads) FinishUpload(repo, id string, d digest.Digest, r io.Reader) (int64, error) {
	defer s.uploadLocks.lock(id)()
	rec, err := s.loadUpload(repo, id)
	if err != nil {
		return 0, err
	}
	// Always through appendLocked: it makes the file exist and match the
	// record even with no final chunk.
	if err := s.appendLocked(id, rec, r); err != nil {
		return 0, err
	}
	sum, err := s.uploadDigest(id, rec, d.Algorithm())
	if err != nil {
		return 0, err
	}
	if sum != d {
		s.cancelLocked(id)
		return 0, fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, sum, d)
	}
	return rec.Offset, s.st().commitBlob(id, []string{repo}, d, rec.Offset, uploadKey(id), Pushed, "")
}

func (s *Uploads) uploadDigest(id string, rec *uploadRecord, alg digest.Algorithm) (digest.Digest, error) {
	if alg == digest.SHA256 && rec.State != nil {
		h := sha256.New()
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(rec.State); err == nil {
			return digest.NewDigest(alg, h), nil
		}
	}
	rc, err := s.blobs.ReadIngest(id)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	return alg.FromReader(rc)
}

// CancelUpload drops session id of repo. Errors: ErrUploadUnknown.
func (s *Uploads) CancelUpload(repo, id string) error {
	defer s.uploadLocks.lock(id)()
	if _, err := s.loadUpload(repo, id); err != nil {
		return err
	}
	return s.cancelLocked(id)
}

func (s *Uploads) cancelLocked(id string) error {
	if err := s.release(func(txn Txn) error { return txn.Delete(uploadKey(id)) }); err != nil {
		return err
	}
	return s.blobs.Discard(id)
}

// PutBlob stores r, which must hash to d (and be size bytes long when size
// is not negative), as a blob of repo in one step. Nothing is kept on
// failure. Errors: ErrDigestMismatch, ErrSizeInvalid.
func (s *Uploads) PutBlob(repo string, d digest.Digest, size int64, r io.Reader) error {
	id := "tmp-" + uuid.NewString()
	app, err := s.blobs.Append(id)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			s.blobs.Discard(id)
		}
	}()
	h := d.Algorithm().Hash()
	n, err := copyHashed(app, h, r)
	if cerr := app.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return err
	case size >= 0 && n != size:
		return fmt.Errorf("%w: got %d bytes, announced %d", ErrSizeInvalid, n, size)
	case digest.NewDigest(d.Algorithm(), h) != d:
		return ErrDigestMismatch
	}
	err = s.st().commitBlob(id, []string{repo}, d, n, nil, Pushed, "")
	committed = err == nil // on failure the deferred Discard removes what is left
	return err
}

// PutBlobFile stores the file at path, which must hash to d, as a blob of
// repo. When the blob store can take the file in place (a hard link on the
// same filesystem) its bytes are read to verify them but not copied, and
// linked is true; otherwise it is copied as PutBlob does. Nothing is kept
// on failure. Errors: ErrDigestMismatch.
func (s *Uploads) PutBlobFile(repo string, d digest.Digest, path string) (linked bool, err error) {
	if err := blobs.ValidDigest(d); err != nil {
		return false, err
	}
	l, ok := s.blobs.(blobs.Linker)
	id := "tmp-" + uuid.NewString()
	if !ok || l.LinkIngest(id, path) != nil {
		f, err := os.Open(path)
		if err != nil {
			return false, err
		}
		defer f.Close()
		return false, s.PutBlob(repo, d, -1, f)
	}
	committed := false
	defer func() {
		if !committed {
			s.blobs.Discard(id) // the link only: the file at path stays
		}
	}()
	rc, err := s.blobs.ReadIngest(id)
	if err != nil {
		return true, err
	}
	h := d.Algorithm().Hash()
	n, err := io.Copy(h, rc)
	rc.Close()
	switch {
	case err != nil:
		return true, err
	case digest.NewDigest(d.Algorithm(), h) != d:
		return true, ErrDigestMismatch
	}
	err = s.st().commitBlob(id, []string{repo}, d, n, nil, Pushed, "")
	committed = err == nil
	return true, err
}

// CleanIngests removes upload sessions idle for longer than the upload TTL
// and every ingest file no live session owns. Open calls it before the
// store is used; it must not run while one-shot writes are in progress.
func (s *Uploads) CleanIngests(now time.Time) error {
	live := map[string]bool{}
	var expired [][]byte
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("u/"), nil, false, func(k, v []byte) error {
			var rec uploadRecord
			if (json.Unmarshal(v, &rec) != nil || now.Sub(rec.Updated) > s.opts.UploadTTL) && s.mayExpire(string(k[2:])) {
				expired = append(expired, append([]byte(nil), k...))
			} else {
				live[string(k[2:])] = true
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, k := range expired {
		if err := s.release(func(txn Txn) error { return txn.Delete(k) }); err != nil {
			return err
		}
	}
	ids, err := s.blobs.Ingests()
	if err != nil {
		return err
	}
	removed := 0
	for _, id := range ids {
		if !live[id] {
			if err := s.blobs.Discard(id); err != nil {
				return err
			}
			removed++
		}
	}
	if removed+len(expired) > 0 {
		s.log.Info("cleaned ingest area", "files", removed, "expired_sessions", len(expired))
	}
	return nil
}

// mayExpire reports whether this process may expire session id: on a
// cluster, only the node holding it does (its requests are serialised
// there), or any node once that one left the cluster.
func (s *Uploads) mayExpire(id string) bool {
	node := UploadNode(id)
	if !s.shared || node == "" || node == s.nodeID {
		return true
	}
	_, alive := (*Cluster)(s).Members()[node]
	return !alive
}

// ExpireUploads drops upload sessions idle for longer than the upload TTL,
// with their files, while the store is in use; it returns how many.
func (s *Uploads) ExpireUploads(now time.Time) (int, error) {
	var ids []string
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("u/"), nil, false, func(k, v []byte) error {
			var rec uploadRecord
			if err := json.Unmarshal(v, &rec); (err != nil || now.Sub(rec.Updated) > s.opts.UploadTTL) && s.mayExpire(string(k[2:])) {
				ids = append(ids, string(k[2:]))
			}
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		unlock := s.uploadLocks.lock(id)
		rec, err := s.readUpload(id)
		// Re-checked under the session's lock: a request may have used it.
		if err == nil && now.Sub(rec.Updated) > s.opts.UploadTTL {
			if s.cancelLocked(id) == nil {
				n++
			}
		}
		unlock()
	}
	return n, nil
}
