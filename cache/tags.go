package cache

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// ResolveTag returns the digest tag points at in repo, or ErrManifestUnknown.
func (s *Store) ResolveTag(repo, tag string) (digest.Digest, error) {
	d, _, err := s.TagInfo(repo, tag)
	return d, err
}

// TagInfo returns the digest tag points at and, for a mirrored tag, when
// upstream was last asked about it (zero for pushed tags). Errors:
// ErrManifestUnknown.
func (s *Store) TagInfo(repo, tag string) (digest.Digest, time.Time, error) {
	key := refKey{repo, tag}
	if e, ok := s.tags.Get(key); ok {
		return e.digest, e.checked, nil
	}
	g := s.generation(key)
	var e tagEntry
	err := s.idx.View(func(txn Txn) error {
		v, err := txn.Get(tagKey(repo, tag))
		e = decodeTag(v)
		return err
	})
	if errors.Is(err, errNotFound) {
		return "", time.Time{}, ErrManifestUnknown
	} else if err != nil {
		return "", time.Time{}, err
	}
	s.remember(key, g, func() { s.tags.Add(key, e) })
	return e.digest, e.checked, nil
}

// TouchTag records that upstream registry confirmed mirrored tag still
// points at d.
func (s *Store) TouchTag(repo, registry, tag string, d digest.Digest, checked time.Time) error {
	err := s.update(func(txn Txn) error {
		return txn.Set(tagKey(repo, tag), encodeTag(tagEntry{d, checked, registry}))
	})
	if err == nil {
		s.invalidate(repo, tag)
	}
	return err
}

// tagEntry is a tag's value: the digest, and for mirrored tags the time
// upstream was last checked and the registry, stored as
// "<digest>\x00<unix nanos>\x00<registry>" (a pushed tag is "<digest>";
// mirrored tags from before origins were kept lack the registry).
type tagEntry struct {
	digest   digest.Digest
	checked  time.Time
	registry string
}

// mirrored reports a tag written by the mirror.
func (e tagEntry) mirrored() bool { return e.registry != "" || !e.checked.IsZero() }

func encodeTag(e tagEntry) []byte {
	if e.registry == "" && e.checked.IsZero() {
		return []byte(e.digest)
	}
	return []byte(e.digest.String() + "\x00" + strconv.FormatInt(e.checked.UnixNano(), 10) + "\x00" + e.registry)
}

func decodeTag(v []byte) tagEntry {
	d, rest, ok := strings.Cut(string(v), "\x00")
	e := tagEntry{digest: digest.Digest(d)}
	if ok {
		at, reg, _ := strings.Cut(rest, "\x00")
		if n, err := strconv.ParseInt(at, 10, 64); err == nil {
			e.checked = time.Unix(0, n)
		}
		e.registry = reg
	}
	return e
}
