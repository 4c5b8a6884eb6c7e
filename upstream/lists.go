package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Listings: what a repository lists upstream (its tags, an image's
// referrers). containerd's remotes fetch content only, so these are plain
// GETs through the registry's own client and authorizer (the same
// connection pool, token cache, health and rate-limit accounting).

const (
	// listPage is the n asked for per page; listPages bounds the pages
	// followed and listBytes each page's body.
	listPage  = 1000
	listPages = 200
	listBytes = 4 << 20
)

// Tags lists every tag of repo upstream, following the registry's Link
// pagination, sorted and without duplicates. Errors: those of Resolve.
func (c *Client) Tags(ctx context.Context, name, repo string) ([]string, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, err
	}
	next := r.apiURL(repo, "tags/list") + "?n=" + fmt.Sprint(listPage)
	tags := []string{}
	for page := 0; next != "" && page < listPages; page++ {
		var body []byte
		body, next, err = c.get(ctx, r, repo, next, "application/json")
		if err != nil {
			return nil, err
		}
		var list struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			return nil, fmt.Errorf("%w: tag list of %s: %v", ErrInvalid, repo, err)
		}
		tags = append(tags, list.Tags...)
	}
	if next != "" {
		c.log.Warn("upstream tag list longer than the pages followed: the rest is left out", "registry", r.Name, "repo", repo, "tags", len(tags))
	}
	slices.Sort(tags)
	return slices.Compact(tags), nil
}

// Referrers lists the manifests upstream whose subject is d in repo: from
// the registry's referrers API or, where it answers 404 (a registry
// without the API, such as CNCF Distribution 3.1), from the referrers tag
// schema's index (tag "sha256-<hex>"); none there is an empty list.
func (c *Client) Referrers(ctx context.Context, name, repo string, d digest.Digest) ([]Descriptor, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, err
	}
	next := r.apiURL(repo, "referrers/"+d.String())
	out := []Descriptor{}
	for page := 0; next != "" && page < listPages; page++ {
		var body []byte
		body, next, err = c.get(ctx, r, repo, next, ocispec.MediaTypeImageIndex)
		if errors.Is(err, ErrNotFound) && page == 0 {
			return c.referrersTag(ctx, name, repo, d)
		}
		if err != nil {
			return nil, err
		}
		ms, err := indexManifests(body)
		if err != nil {
			return nil, fmt.Errorf("%w: referrers of %s@%s: %v", ErrInvalid, repo, d, err)
		}
		out = append(out, ms...)
	}
	return out, nil
}

// referrersTag reads the tag schema's index of d's referrers.
func (c *Client) referrersTag(ctx context.Context, name, repo string, d digest.Digest) ([]Descriptor, error) {
	tag := d.Algorithm().String() + "-" + d.Encoded()
	if len(tag) > 128 {
		tag = tag[:128]
	}
	desc, err := c.Resolve(ctx, name, repo, tag)
	if errors.Is(err, ErrNotFound) {
		return []Descriptor{}, nil
	} else if err != nil {
		return nil, err
	}
	body, err := c.Manifest(ctx, name, repo, desc, listBytes)
	if err != nil {
		return nil, err
	}
	ms, err := indexManifests(body)
	if err != nil {
		return nil, fmt.Errorf("%w: referrers tag %s of %s: %v", ErrInvalid, tag, repo, err)
	}
	return ms, nil
}

func indexManifests(body []byte) ([]Descriptor, error) {
	var idx struct {
		Manifests []Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, err
	}
	out := make([]Descriptor, 0, len(idx.Manifests))
	for _, m := range idx.Manifests {
		if m.Digest.Validate() != nil {
			return nil, fmt.Errorf("invalid digest %q", m.Digest)
		}
		out = append(out, m)
	}
	return out, nil
}

// apiURL is the URL of repo's endpoint path on r.
func (r *registry) apiURL(repo, path string) string {
	return r.host.Scheme + "://" + r.host.Host + r.host.Path + "/" + repo + "/" + path
}

// withNS adds ?ns=<registry> to u when the registry is reached at another
// host (a mirror of it, such as another Wharf), as containerd does for
// every request: the mirror then knows which registry's repository is meant.
func (r *registry) withNS(u string) string {
	if r.url.Host == r.Name {
		return u
	}
	p, err := url.Parse(u)
	if err != nil || p.Query().Has("ns") {
		return u
	}
	q := p.Query()
	q.Set("ns", r.Name)
	p.RawQuery = q.Encode()
	return p.String()
}

// get fetches u (on r, for repo) with the registry's authorization and
// returns its body (at most listBytes) and the URL its Link header names
// as next ("" when none, or when it points at another host).
func (c *Client) get(ctx context.Context, r *registry, repo, u, accept string) (body []byte, next string, err error) {
	u = r.withNS(u)
	err = c.do(ctx, r, func(ctx context.Context) error {
		ctx = docker.WithScope(ctx, "repository:"+repo+":pull")
		var responses []*http.Response
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return err
			}
			req.Header.Set("Accept", accept)
			if err := r.host.Authorizer.Authorize(ctx, req); err != nil {
				return err
			}
			resp, err := r.host.Client.Do(req)
			if err != nil {
				return err
			}
			if resp.StatusCode == http.StatusUnauthorized && len(responses) < 2 {
				responses = append(responses, resp)
				resp.Body.Close()
				if err := r.host.Authorizer.AddResponses(ctx, responses); err != nil {
					return err
				}
				continue
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return remoteerrors.NewUnexpectedStatusErr(resp)
			}
			if body, err = io.ReadAll(io.LimitReader(resp.Body, listBytes+1)); err != nil {
				return err
			}
			if len(body) > listBytes {
				return fmt.Errorf("%w: %s answered more than %d bytes", ErrInvalid, req.URL.Path, listBytes)
			}
			next = nextLink(req.URL, resp.Header.Get("Link"))
			return nil
		}
	})
	return body, next, err
}

// nextLink resolves a Link header's rel="next" URL against base; a link to
// another host is ignored (the allow-list names hosts).
func nextLink(base *url.URL, link string) string {
	for _, part := range strings.Split(link, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
		if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
			continue
		}
		target = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(target), "<"), ">")
		u, err := base.Parse(target)
		if err != nil || u.Host != base.Host {
			return ""
		}
		return u.String()
	}
	return ""
}
