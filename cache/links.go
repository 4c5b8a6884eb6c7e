package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
)

func encodeSize(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }

func decodeSize(b []byte) int64 {
	if len(b) < 8 {
		return -1
	}
	return int64(binary.BigEndian.Uint64(b))
}

// encodeLink is a link's value: the blob size, when it was linked (the
// collector spares fresh links: a push links its blobs before its manifest)
// and the origin of the content ("pushed" or "mirror:<registry>").
func encodeLink(size int64, at time.Time, o Origin) []byte {
	return append(binary.BigEndian.AppendUint64(encodeSize(size), uint64(at.UnixNano())), o.encode()...)
}

// linkTime is when a link was made; zero for links from before it was kept.
func linkTime(b []byte) time.Time {
	if len(b) < 16 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[8:16])))
}

// StatBlob returns the size of blob d as linked in repo, or ErrBlobUnknown.
func (s *Store) StatBlob(repo string, d digest.Digest) (int64, error) {
	if s.links == nil { // a single box: Badger answers as fast as a cache would
		return s.readLink(repo, d)
	}
	key := refKey{repo, d.String()}
	if size, ok := s.links.Get(key); ok {
		return size, nil
	}
	g := s.generation(key)
	size, err := s.readLink(repo, d)
	if err == nil {
		s.remember(key, g, func() { s.links.Add(key, size) })
	}
	return size, err
}

// readLink reads the size of blob d as linked in repo from the index.
func (s *Store) readLink(repo string, d digest.Digest) (int64, error) {
	size := int64(-1)
	err := s.idx.View(func(txn Txn) error {
		v, err := txn.Get(linkKey(repo, d))
		size = decodeSize(v)
		return err
	})
	if errors.Is(err, errNotFound) {
		return 0, ErrBlobUnknown
	}
	return size, err
}

// OpenBlob opens blob d of repo for reading. Errors: ErrBlobUnknown. The
// reader is an *os.File for the file store, so HTTP can use sendfile.
func (s *Store) OpenBlob(repo string, d digest.Digest) (io.ReadSeekCloser, int64, error) {
	if _, err := s.StatBlob(repo, d); err != nil {
		return nil, 0, err
	}
	rc, size, err := s.blobs.Open(d)
	if errors.Is(err, ErrBlobUnknown) {
		s.log.Error("indexed blob has no content", "repo", repo, "digest", d)
		return nil, 0, fmt.Errorf("blob %s of %s is indexed but missing: %w", d, repo, ErrBlobUnknown)
	}
	return rc, size, err
}

// DeleteBlob unlinks blob d from repo; its bytes stay until garbage
// collection. Errors: ErrBlobUnknown.
func (s *Store) DeleteBlob(repo string, d digest.Digest) error {
	err := s.update(func(txn Txn) error {
		if ok, err := exists(txn, linkKey(repo, d)); err != nil {
			return err
		} else if !ok {
			return ErrBlobUnknown
		}
		return txn.Delete(linkKey(repo, d))
	})
	if err == nil {
		s.forgetLink(repo, d)
	}
	return err
}

// forgetLink drops a link this node deleted from the links cache at once
// (the change feed would, a moment later).
func (s *kv) forgetLink(repo string, d digest.Digest) {
	if s.links == nil {
		return
	}
	key := refKey{repo, d.String()}
	s.cacheMu.Lock()
	s.gens[stripe(key)]++
	s.links.Remove(key)
	s.cacheMu.Unlock()
}

// MountBlob links blob d, linked in from, into to as well (a push to to)
// and returns its size. Errors: ErrBlobUnknown when from does not hold d.
func (s *Store) MountBlob(from, to string, d digest.Digest) (int64, error) {
	mu := s.contentLocks.of(d)
	mu.Lock()
	defer mu.Unlock()
	var size int64
	err := s.updateWithOrigin(to, Pushed, func(txn Txn) error {
		v, err := txn.Get(linkKey(from, d))
		if errors.Is(err, errNotFound) {
			return ErrBlobUnknown
		} else if err != nil {
			return err
		}
		size = decodeSize(v)
		if _, err := s.touchBlob(txn, d); err != nil {
			return err
		}
		return txn.Set(linkKey(to, d), encodeLink(size, time.Now(), Pushed))
	})
	s.noteLinked(d)
	return size, err
}

// LinkExisting links blob d, already stored (for any repository), into
// repo as content of origin o and returns its size. Callers must know that
// repo may hold d — for a mirror, because upstream said so. Errors:
// ErrBlobUnknown when d is not stored.
func (s *Store) LinkExisting(repo string, d digest.Digest, o Origin) (int64, error) {
	mu := s.contentLocks.of(d)
	mu.Lock()
	defer mu.Unlock()
	defer s.noteLinked(d)
	var size int64
	err := s.updateWithOrigin(repo, o, func(txn Txn) error {
		var err error
		if size, err = s.touchBlob(txn, d); err != nil {
			return err
		}
		return txn.Set(linkKey(repo, d), encodeLink(size, time.Now(), o))
	})
	if err != nil {
		return 0, err
	}
	if _, err := s.blobs.Stat(d); err != nil { // indexed but the file is gone: undo
		s.release(func(txn Txn) error { return txn.Delete(linkKey(repo, d)) })
		s.forgetLink(repo, d)
		return 0, ErrBlobUnknown
	}
	return size, nil
}

// linkBlob records committed content d and links it into repo as content
// of origin o; the upload session key, when given, is deleted in the same
// transaction.
func (s *Store) linkBlob(repo string, d digest.Digest, size int64, session []byte, o Origin, before []byte) error {
	return s.updateWithOrigin(repo, o, func(txn Txn) error {
		if err := s.recordBlob(txn, d, size, before); err != nil {
			return err
		}
		if session != nil {
			if err := txn.Delete(session); err != nil {
				return err
			}
		}
		return txn.Set(linkKey(repo, d), encodeLink(size, time.Now(), o))
	})
}

// commitBlob moves ingest id into place as d and links it into each of
// repos as content of origin o (and drops the upload session key, when
// given), serialised with the collector on d. peer names the cluster node
// the bytes came from, which stores them itself ("": none).
func (s *Store) commitBlob(id string, repos []string, d digest.Digest, size int64, session []byte, o Origin, peer string) error {
	mu := s.contentLocks.of(d)
	mu.Lock()
	defer mu.Unlock()
	defer s.noteLinked(d)
	var before []byte
	stored := false // by peer: this node keeps a local copy only
	if peer != "" && s.shared {
		before, stored = s.Cluster().awaitStored(d, peer)
	}
	if stored {
		if err := s.blobs.(blobs.LocalCommitter).CommitLocal(id, d); err != nil {
			return err
		}
	} else {
		var err error
		if before, err = s.blobBefore(d); err != nil {
			return err
		}
		if err := s.blobs.Commit(id, d); err != nil {
			return err
		}
	}
	for i, repo := range repos {
		if i > 0 {
			session = nil
		}
		if err := s.linkBlob(repo, d, size, session, o, before); err != nil {
			return err
		}
	}
	return nil
}
