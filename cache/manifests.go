package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
)

// Manifest is a manifest as a repository holds it.
type Manifest struct {
	Digest       digest.Digest   `json:"-"`
	MediaType    string          `json:"mediaType"`
	Size         int64           `json:"size"`
	Subject      digest.Digest   `json:"subject,omitempty"`
	ArtifactType string          `json:"artifactType,omitempty"`
	Refs         []digest.Digest `json:"refs,omitempty"`  // blobs and child manifests
	Pushed       time.Time       `json:"pushed,omitzero"` // when this link was made
	// Origin is "pushed" or "mirror:<registry>" (empty in records written
	// before origins were kept; the repository's o/ record has it then).
	Origin string `json:"origin,omitempty"`
	// Body is the exact bytes pushed; set on manifests returned by
	// GetManifest and PutManifest.
	Body []byte `json:"-"`

	header *ManifestHeader // made with Body, for the ones the store caches
}

// ManifestHeader is a manifest's HTTP response header values, made once
// per cached manifest so that a warm GET builds none. They are shared:
// never modify them (each slice's capacity is its length, so an append
// copies).
type ManifestHeader struct {
	ContentType, ContentLength, Digest, ETag []string
}

// Header returns m's response header values.
func (m *Manifest) Header() *ManifestHeader {
	if m.header != nil {
		return m.header
	}
	return newManifestHeader(m)
}

func newManifestHeader(m *Manifest) *ManifestHeader {
	one := func(v string) []string { return []string{v}[:1:1] }
	return &ManifestHeader{ContentType: one(m.MediaType), ContentLength: one(strconv.Itoa(len(m.Body))),
		Digest: one(m.Digest.String()), ETag: one(`"` + m.Digest.String() + `"`)}
}

// PutManifest stores body as a manifest of repo and points each of tags at
// it. want, when set, is the digest the client pushed by; the body must hash
// to it. Without it the digest is sha256, unless the repository already holds
// the same bytes under their sha512 digest. Errors: ErrManifestInvalid,
// ErrManifestTooBig, ErrDigestMismatch, *MissingRefError.
func (s *Store) PutManifest(repo string, want digest.Digest, tags []string, contentType string, body []byte) (*Manifest, error) {
	return s.PutManifestKeeping(repo, want, tags, contentType, body, nil)
}

// Fixed says whether a tag may not move once it exists, and the rule that
// fixes it.
type Fixed func(tag string) (rule string, ok bool)

// TagImmutableError: a push would move an immutable tag to another
// manifest.
type TagImmutableError struct {
	Repo, Tag string
	Current   digest.Digest
	Rule      string
}

func (e *TagImmutableError) Error() string {
	return fmt.Sprintf("tag %s of %s is immutable (%s): it names %s; push under a new tag", e.Tag, e.Repo, e.Rule, e.Current)
}

// PutManifestKeeping is PutManifest that refuses, with
// *TagImmutableError and nothing written, to move a tag fixed says may not
// move; pointing it at the manifest it names already is no move. The check
// is made again in the committing transaction, so two racing pushes of
// one immutable tag cannot both win.
func (s *Store) PutManifestKeeping(repo string, want digest.Digest, tags []string, contentType string, body []byte, fixed Fixed) (*Manifest, error) {
	if len(body) > MaxManifestSize {
		return nil, ErrManifestTooBig
	}
	p, err := parseManifest(contentType, body)
	if err != nil {
		return nil, err
	}
	d, err := s.manifestDigest(repo, want, body)
	if err != nil {
		return nil, err
	}
	return s.putManifest(repo, d, p, body, tags, true, time.Time{}, Pushed, fixed)
}

// PutMirroredManifest stores a manifest fetched from upstream registry as
// d, exactly as received, and points tag (if set) at it, noting when
// upstream was checked. Referenced blobs need not be present: they are
// fetched on demand. Errors: ErrManifestInvalid, ErrManifestTooBig,
// ErrDigestMismatch.
func (s *Store) PutMirroredManifest(repo, registry string, d digest.Digest, tag, mediaType string, body []byte, checked time.Time) (*Manifest, error) {
	if len(body) > MaxManifestSize {
		return nil, ErrManifestTooBig
	}
	if err := ValidateDigest(d); err != nil || d.Algorithm().FromBytes(body) != d {
		return nil, ErrDigestMismatch
	}
	p, err := parseManifest(mediaType, body)
	if err != nil {
		return nil, err
	}
	var tags []string
	if tag != "" {
		tags = []string{tag}
	}
	return s.putManifest(repo, d, p, body, tags, false, checked, MirroredFrom(registry), nil)
}

func (s *Store) putManifest(repo string, d digest.Digest, p *parsedManifest, body []byte, tags []string, checkRefsOf bool, checked time.Time, o Origin, fixed Fixed) (*Manifest, error) {
	m := &Manifest{Digest: d, MediaType: p.mediaType, Size: int64(len(body)), ArtifactType: p.artifactType, Body: body,
		Pushed: time.Now().UTC(), Origin: o.encode()}
	m.Refs = append(append(m.Refs, p.blobs...), p.children...)
	if p.subject != nil {
		m.Subject = p.subject.Digest
	}
	// References are checked before any byte is written (a rejected push
	// leaves nothing) and again in the committing transaction (a
	// concurrent delete cannot slip in between).
	if checkRefsOf || fixed != nil {
		if err := s.idx.View(func(txn Txn) error {
			if err := checkFixed(txn, repo, d, tags, fixed); err != nil || !checkRefsOf {
				return err
			}
			return checkRefs(txn, repo, p)
		}); err != nil {
			return nil, err
		}
	}
	mu := s.contentLocks.of(d)
	mu.Lock()
	defer mu.Unlock()
	before, err := s.blobBefore(d)
	if err != nil {
		return nil, err
	}
	if err := s.writeManifestBytes(d, body, !s.shared || (before != nil && liveRecord(before))); err != nil {
		return nil, err
	}
	rec, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	var referrer []byte
	if p.subject != nil {
		referrer, err = json.Marshal(Descriptor{MediaType: p.mediaType, Digest: d, Size: m.Size,
			ArtifactType: p.artifactType, Annotations: p.annotations})
		if err != nil {
			return nil, err
		}
	}
	err = s.updateWithOrigin(repo, o, func(txn Txn) error {
		if err := checkFixed(txn, repo, d, tags, fixed); err != nil {
			return err
		}
		if checkRefsOf {
			if err := checkRefs(txn, repo, p); err != nil {
				return err
			}
		}
		if err := s.recordBlob(txn, d, m.Size, before); err != nil {
			return err
		}
		if err := txn.Set(manifestKey(repo, d), rec); err != nil {
			return err
		}
		for _, t := range tags {
			if err := txn.Set(tagKey(repo, t), encodeTag(tagEntry{d, checked, o.Registry})); err != nil {
				return err
			}
		}
		if referrer != nil {
			return txn.Set(referrerKey(repo, m.Subject, d), referrer)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.noteLinked(d)
	s.invalidate(repo, append([]string{d.String()}, tags...)...)
	return m, nil
}

// checkFixed refuses to move a tag fixed says may not move.
func checkFixed(txn Txn, repo string, d digest.Digest, tags []string, fixed Fixed) error {
	if fixed == nil {
		return nil
	}
	for _, t := range tags {
		rule, ok := fixed(t)
		if !ok {
			continue
		}
		raw, err := txn.Get(tagKey(repo, t))
		if errors.Is(err, errNotFound) {
			continue
		} else if err != nil {
			return err
		}
		if cur := decodeTag(raw).digest; cur != d {
			return &TagImmutableError{Repo: repo, Tag: t, Current: cur, Rule: rule}
		}
	}
	return nil
}

// checkRefs requires every blob of p to be linked in repo and every child
// manifest to be a manifest of repo.
func checkRefs(txn Txn, repo string, p *parsedManifest) error {
	for _, b := range p.blobs {
		if ok, err := exists(txn, linkKey(repo, b)); err != nil {
			return err
		} else if !ok {
			return &MissingRefError{Digest: b}
		}
	}
	for _, c := range p.children {
		if ok, err := exists(txn, manifestKey(repo, c)); err != nil {
			return err
		} else if !ok {
			return &MissingRefError{Digest: c}
		}
	}
	return nil
}

func (s *Store) manifestDigest(repo string, want digest.Digest, body []byte) (digest.Digest, error) {
	if want != "" {
		if err := ValidateDigest(want); err != nil {
			return "", err
		}
		if want.Algorithm().FromBytes(body) != want {
			return "", ErrDigestMismatch
		}
		return want, nil
	}
	alt := digest.SHA512.FromBytes(body)
	var found bool
	err := s.idx.View(func(txn Txn) (err error) {
		found, err = exists(txn, manifestKey(repo, alt))
		return err
	})
	if err != nil {
		return "", err
	}
	if found {
		return alt, nil
	}
	return digest.SHA256.FromBytes(body), nil
}

// writeManifestBytes stores body as content d, verified like any blob;
// with trustStored, not again if the blob store has d.
func (s *Store) writeManifestBytes(d digest.Digest, body []byte, trustStored bool) error {
	if _, err := s.blobs.Stat(d); err == nil && trustStored {
		return nil
	}
	id := "tmp-" + uuid.NewString()
	app, err := s.blobs.Append(id)
	if err != nil {
		return err
	}
	_, err = app.Write(body)
	if cerr := app.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.blobs.Commit(id, d)
	}
	if err != nil {
		s.blobs.Discard(id)
	}
	return err
}

// GetManifest returns the manifest ref (a tag or a digest) of repo with its
// body, or ErrManifestUnknown. The returned value must not be modified.
func (s *Store) GetManifest(repo, ref string) (*Manifest, error) {
	d := digest.Digest(ref)
	if !strings.Contains(ref, ":") {
		var err error
		if d, err = s.ResolveTag(repo, ref); err != nil {
			return nil, err
		}
	}
	key := refKey{repo, d.String()}
	if m, ok := s.manifests.Get(key); ok {
		return m, nil
	}
	g := s.generation(key)
	m, err := s.manifestRecord(repo, d)
	if err != nil {
		return nil, err
	}
	rc, size, err := s.blobs.Open(d)
	if errors.Is(err, ErrBlobUnknown) {
		return nil, fmt.Errorf("manifest %s of %s is indexed but its bytes are missing: %w", d, repo, ErrManifestUnknown)
	} else if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > MaxManifestSize {
		return nil, fmt.Errorf("manifest %s: stored size %d: %w", d, size, ErrManifestTooBig)
	}
	m.Body = make([]byte, size)
	if _, err := io.ReadFull(rc, m.Body); err != nil {
		return nil, err
	}
	if len(m.Body) <= s.opts.ManifestCacheBody {
		m.header = newManifestHeader(m)
		s.remember(key, g, func() { s.manifests.Add(key, m) })
	}
	return m, nil
}

func (s *Store) manifestRecord(repo string, d digest.Digest) (*Manifest, error) {
	var m Manifest
	err := s.idx.View(func(txn Txn) error {
		v, err := txn.Get(manifestKey(repo, d))
		if err != nil {
			return err
		}
		return json.Unmarshal(v, &m)
	})
	if errors.Is(err, errNotFound) {
		return nil, ErrManifestUnknown
	} else if err != nil {
		return nil, err
	}
	m.Digest = d
	return &m, nil
}

// DeleteManifest removes ref from repo. A tag is untagged; a digest loses
// its manifest link, every tag pointing at it and its referrer entry. The
// bytes stay until garbage collection. Errors: ErrManifestUnknown.
func (s *Store) DeleteManifest(repo, ref string) error { return s.deleteManifest(repo, ref, false) }

// DeleteReleasing is DeleteManifest for a deliberate delete (an operator,
// a client's DELETE): it records in the same transaction what it released
// (released.go), which the next collection frees without the grace.
func (s *Store) DeleteReleasing(repo, ref string) error { return s.deleteManifest(repo, ref, true) }

func (s *Store) deleteManifest(repo, ref string, record bool) error {
	// What a delete releases loses its grace from the time its manifest
	// was pushed (released.go); a mirrored manifest's layers are linked
	// after it, as clients fetch them, and nobody pushes there: all of it
	// is released now.
	origin, _ := s.Origin(repo)
	now := time.Now()
	releaseAt := func(pushed time.Time) time.Time {
		if origin.Mirrored() {
			return now
		}
		return pushed
	}
	if !strings.Contains(ref, ":") {
		err := s.release(func(txn Txn) error {
			v, err := txn.Get(tagKey(repo, ref))
			if errors.Is(err, errNotFound) {
				return ErrManifestUnknown
			} else if err != nil {
				return err
			}
			if record {
				d := decodeTag(v).digest
				var m Manifest
				if mv, err := txn.Get(manifestKey(repo, d)); err == nil {
					json.Unmarshal(mv, &m)
				}
				if err := putReleased(txn, repo, d, nil, releaseAt(m.Pushed)); err != nil {
					return err
				}
			}
			return txn.Delete(tagKey(repo, ref))
		})
		if err == nil {
			s.invalidate(repo, ref)
		}
		return err
	}
	d := digest.Digest(ref)
	var dropped []string
	err := s.release(func(txn Txn) error {
		dropped = dropped[:0]
		v, err := txn.Get(manifestKey(repo, d))
		if errors.Is(err, errNotFound) {
			return ErrManifestUnknown
		} else if err != nil {
			return err
		}
		var m Manifest
		if err := json.Unmarshal(v, &m); err != nil {
			return err
		}
		if m.Subject != "" {
			if err := txn.Delete(referrerKey(repo, m.Subject, d)); err != nil {
				return err
			}
		}
		var keys [][]byte
		if err := txn.Scan(tagPrefix(repo), nil, false, func(k, v []byte) error {
			if decodeTag(v).digest == d {
				keys = append(keys, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range keys {
			if err := txn.Delete(k); err != nil {
				return err
			}
			dropped = append(dropped, string(k[len(tagPrefix(repo)):]))
		}
		if record {
			if err := putReleased(txn, repo, d, m.Refs, releaseAt(m.Pushed)); err != nil {
				return err
			}
		}
		return txn.Delete(manifestKey(repo, d))
	})
	if err == nil {
		s.invalidate(repo, append(dropped, d.String())...)
	}
	return err
}
