package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// Listing is what an upstream registry listed for a mirrored repository:
// its tags, or the referrers of one of its manifests; and when it was
// asked. The mirror serves it for the tag TTL, and stale while upstream
// cannot be asked. Missing records upstream's answer that there is no such
// repository (a 404), so that it is not asked again within the TTL.
type Listing struct {
	At        time.Time    `json:"at"`
	Missing   bool         `json:"missing,omitempty"`
	Tags      []string     `json:"tags,omitempty"`
	Referrers []Descriptor `json:"referrers,omitempty"`
}

// maxListing bounds a stored listing's encoding (etcd's default request
// limit is 1.5 MiB): a longer one is served as upstream gave it but not
// kept (ErrListingTooBig).
const maxListing = 1 << 20

// ErrListingTooBig: a listing over maxListing bytes is not stored.
var ErrListingTooBig = errors.New("cache: listing too big to keep")

func listingKey(repo, what string) []byte { return []byte("g/" + repo + "\x00" + what) }

// TagsListing is the key of a repository's tag list; ReferrersListing of
// the referrers of manifest d.
const TagsListing = "tags"

// ReferrersListing names the listing of the referrers of d.
func ReferrersListing(d digest.Digest) string { return "referrers/" + d.String() }

// Listing returns repo's listing what (TagsListing or ReferrersListing),
// or ok false when none was stored.
func (s *Store) Listing(repo, what string) (l Listing, ok bool, err error) {
	err = s.idx.View(func(txn Txn) error {
		v, err := txn.Get(listingKey(repo, what))
		if errors.Is(err, errNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		ok = true
		return json.Unmarshal(v, &l)
	})
	return l, ok, err
}

// PutListing stores repo's listing what. Errors: ErrListingTooBig, and
// those of an index write (ErrStorageFull, ErrIndexUnavailable).
func (s *Store) PutListing(repo, what string, l Listing) error {
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if len(v) > maxListing {
		return fmt.Errorf("%w: %s of %s is %d bytes", ErrListingTooBig, what, repo, len(v))
	}
	return s.update(func(txn Txn) error { return txn.Set(listingKey(repo, what), v) })
}
