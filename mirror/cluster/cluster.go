// Package cluster is what a node of a cluster (stores on a shared index
// and object store) adds to the data plane, built once at start and only
// then: relaying upload requests to the node that holds the session, and
// filling cold mirrored blobs and manifests from the node that owns their
// download (rendezvous hashing over the live members) before going
// upstream. On a single box there is no Node, and the data plane asks
// nothing.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/idle"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// The nodes of a cluster (a store on a shared index) talk to each other
// over their public HTTP API:
//   - a request for an upload session another node holds (its id names the
//     node) is relayed there, since the session's bytes are on its disk;
//   - a cold mirrored blob is downloaded from upstream by one node only,
//     its owner (rendezvous hashing of the digest over the live members);
//     the others fill from the owner, verify as always and keep a local
//     copy, and fall back to upstream if the owner fails.
//
// Requests between nodes carry PeerHeader and are served where they land,
// never relayed again (two nodes with different views of the membership
// cannot bounce a request between them). A node authenticates to another
// with a node token signed with the shared token key.
const PeerHeader = "X-Wharf-Peer"

// Options configures a Node.
type Options struct {
	// Relayed counts a request sent to another node (kind: upload, blob,
	// manifest); nil: not counted.
	Relayed func(kind string)
	Logger  *slog.Logger
}

// Node is this node's side of the cluster. It is safe for concurrent use.
type Node struct {
	store *cache.Store
	gate  *auth.Gate
	opts  Options
	log   *slog.Logger
	peers *peers
	self  string // this node's id
}

// New returns the cluster side of a node whose store is shared, or nil
// when the store is not (a single box).
func New(store *cache.Store, gate *auth.Gate, o Options) *Node {
	if !store.Cluster().Shared() || store.Cluster().NodeID() == "" {
		return nil
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Relayed == nil {
		o.Relayed = func(string) {}
	}
	return &Node{store: store, gate: gate, opts: o, log: o.Logger, peers: newPeers(), self: store.Cluster().NodeID()}
}

// peers holds what a node needs to reach the others.
type peers struct {
	client *http.Client
	mu     sync.Mutex
	relays map[string]*httputil.ReverseProxy // by node URL
	down   map[string]time.Time              // node URL → until when it is not asked (it hung)
}

// peerDownFor is how long a node that did not answer in time is not asked
// for what it owns: the others go upstream themselves meanwhile.
const peerDownFor = 15 * time.Second

// hung notes that the node at target did not answer in time.
func (p *peers) hung(target string, err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.markDown(target)
	}
}

func (p *peers) markDown(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down[target] = time.Now().Add(peerDownFor)
}

// peerBodyIdle is how long a peer's body may deliver nothing before it is
// given up (the fill resumes from the next source: upstream).
const peerBodyIdle = 20 * time.Second

var errPeerStalled = errors.New("the node that owns the blob stopped sending it")

// skip reports whether the node at target is not to be asked now.
func (p *peers) skip(target string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.down[target]
	if ok && time.Now().After(until) {
		delete(p.down, target)
		return false
	}
	return ok
}

func newPeers() *peers {
	tr := &http.Transport{
		Proxy:               nil, // nodes reach each other directly
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// A cold fill's first bytes (the owner's own upstream request);
		// also ends a loop of two nodes each taking the other for the
		// owner. A node that hangs past it is skipped for peerDownFor.
		ResponseHeaderTimeout: 10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &peers{client: &http.Client{Transport: tr}, relays: map[string]*httputil.ReverseProxy{}, down: map[string]time.Time{}}
}

// fromPeer reports a request that says another node sent it: enough not
// to relay it again, never enough to trust it (Proven).
func fromPeer(r *http.Request) bool { return r.Header.Get(PeerHeader) != "" }

// Proven reports a request another node sent, with a valid node token:
// it is served where it lands (this node owns the download), and it is no
// client's pull.
func Proven(r *http.Request) bool { return fromPeer(r) && auth.CallerOf(r).Node != "" }

// ServedHere marks the context of a request another node proved it sent:
// it is answered here, never sent on to an owner (a header alone would
// let any client make every node download a cold blob upstream itself).
func ServedHere(r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), peerKey{}, true))
}

// IsServedHere reports a context ServedHere marked.
func IsServedHere(ctx context.Context) bool { return ctx.Value(peerKey{}) != nil }

// RelayUpload sends a request for upload session id that another node
// holds to that node; handled is false when the session is this node's.
func (n *Node) RelayUpload(w http.ResponseWriter, r *http.Request, id string) (handled bool, err error) {
	node := cache.UploadNode(id)
	if node == "" || node == n.self || fromPeer(r) {
		return false, nil
	}
	target, ok := n.store.Cluster().Members()[node]
	if !ok {
		return true, oci.Errorf(oci.CodeBlobUploadUnknown, "the node that holds this upload session (%s) left the cluster: start the upload again", node)
	}
	rp, err := n.relay(target)
	if err != nil {
		return true, err
	}
	n.opts.Relayed("upload")
	rp.ServeHTTP(w, r)
	return true, nil
}

// relay is the reverse proxy to the node at target.
func (n *Node) relay(target string) (*httputil.ReverseProxy, error) {
	n.peers.mu.Lock()
	defer n.peers.mu.Unlock()
	if rp := n.peers.relays[target]; rp != nil {
		return rp, nil
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("cluster member URL %q: %w", target, err)
	}
	self := n.self
	rp := &httputil.ReverseProxy{
		Transport: n.peers.client.Transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Set(PeerHeader, self)
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			n.log.Warn("cluster: relaying to the node that holds the upload", "node", target, "err", err)
			oci.Write(w, oci.Errorf(oci.CodeUnavailable, "the node that holds this upload session did not answer; retry"))
		},
	}
	n.peers.relays[target] = rp
	return rp, nil
}

// BlobOwner is the live member that downloads blob d from upstream for the
// whole cluster: the highest of hash(member, d) (rendezvous hashing, so a
// member joining or leaving moves only its share of the digests).
func BlobOwner(members map[string]string, d digest.Digest) (id, url string) {
	return Owner(members, d.String())
}

// ManifestOwner is the member that fetches and revalidates manifest ref
// (a tag or a digest) of local mirrored repository repo.
func ManifestOwner(members map[string]string, repo, ref string) (id, url string) {
	return Owner(members, repo+"@"+ref)
}

// Owner is the rendezvous owner of key among members.
func Owner(members map[string]string, key string) (id, url string) {
	var best uint64
	for m, u := range members {
		h := fnv.New64a()
		h.Write([]byte(m))
		h.Write([]byte{0})
		h.Write([]byte(key))
		if s := h.Sum64(); id == "" || s > best || (s == best && m < id) {
			id, url, best = m, u, s
		}
	}
	return id, url
}

// BlobSource is where this node fills blob d of local mirrored repository
// repo from: the node that owns d's download, then up (upstream) if the
// owner fails (it died, or left). Peer says whether every byte came from
// the owner.
func (n *Node) BlobSource(repo string, d digest.Digest, up cache.BlobSource) cache.BlobSource {
	var mu sync.Mutex
	from, upstreamUsed := "", false
	src := up
	src.Open = func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		mu.Lock()
		tried := upstreamUsed
		mu.Unlock()
		if !tried {
			members := n.store.Cluster().Members()
			if owner, target := BlobOwner(members, d); owner != "" && owner != n.self && !n.peers.skip(target) {
				rc, size, err := n.peerBlob(ctx, target, repo, d, offset)
				if err == nil {
					mu.Lock()
					if offset == 0 || from == owner {
						from = owner
					} else {
						upstreamUsed = true // bytes from two owners: this node stores the blob
					}
					mu.Unlock()
					n.opts.Relayed("blob")
					return rc, size, nil
				}
				n.log.Warn("cluster: the node that owns a blob's download failed; downloading from upstream", "owner", owner, "digest", d, "err", err)
			}
		}
		mu.Lock()
		upstreamUsed = true
		mu.Unlock()
		return up.Open(ctx, offset)
	}
	src.Peer = func() string {
		mu.Lock()
		defer mu.Unlock()
		if upstreamUsed {
			return ""
		}
		return from
	}
	return src
}

// peerBlob GETs blob d of repo from the node at target, from offset on,
// and returns its body and the blob's whole size.
func (n *Node) peerBlob(ctx context.Context, target, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(target, "/")+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set(PeerHeader, n.self)
	req.Header.Set("Authorization", "Bearer "+n.gate.NodeToken(n.self))
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := n.peers.client.Do(req)
	if err != nil {
		n.peers.hung(target, err)
		return nil, 0, err
	}
	resp.Body = idle.Body(resp.Body, peerBodyIdle, errPeerStalled, func() { n.peers.markDown(target) })
	switch {
	case resp.StatusCode == http.StatusOK && offset == 0:
		return resp.Body, resp.ContentLength, nil
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		var first, last, total int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err != nil || first != offset {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("peer %s: Content-Range %q for offset %d", target, resp.Header.Get("Content-Range"), offset)
		}
		return resp.Body, total, nil
	}
	resp.Body.Close()
	return nil, 0, fmt.Errorf("peer %s: %s", target, resp.Status)
}

// peerKey marks the context of a request another node sent.
type peerKey struct{}

// manifestAccept is every manifest type Wharf serves.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// ViaOwner asks the node that owns manifest ref (a tag or a digest) of
// local mirrored repository repo for it, so that one node per cluster asks
// upstream (a cold fetch, or a tag's revalidation after its TTL); that
// node stores it in the shared index, where this one reads it. ok is false
// when this node owns ref, the owner failed, or ctx is a request another
// node sent: then this node asks upstream itself.
func (n *Node) ViaOwner(ctx context.Context, repo, ref string) (m *cache.Manifest, ok bool, err error) {
	if IsServedHere(ctx) {
		return nil, false, nil
	}
	owner, target := ManifestOwner(n.store.Cluster().Members(), repo, ref)
	if owner == "" || owner == n.self || n.peers.skip(target) {
		return nil, false, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, strings.TrimSuffix(target, "/")+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return nil, false, nil
	}
	req.Header.Set(PeerHeader, n.self)
	req.Header.Set("Accept", manifestAccept)
	req.Header.Set("Authorization", "Bearer "+n.gate.NodeToken(n.self))
	resp, err := n.peers.client.Do(req)
	if err != nil {
		n.peers.hung(target, err)
		n.log.Warn("cluster: the node that owns a manifest did not answer; asking upstream", "owner", owner, "repo", repo, "ref", ref, "err", err)
		return nil, false, nil
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	n.opts.Relayed("manifest")
	switch d := digest.Digest(resp.Header.Get("Docker-Content-Digest")); {
	case resp.StatusCode == http.StatusOK && d.Validate() == nil:
		m, err := n.store.GetManifest(repo, d.String())
		if err != nil {
			return nil, false, nil
		}
		return m, true, nil
	case resp.StatusCode == http.StatusNotFound:
		return nil, true, cache.ErrManifestUnknown
	}
	n.log.Warn("cluster: the node that owns a manifest failed; asking upstream", "owner", owner, "repo", repo, "ref", ref, "status", resp.Status)
	return nil, false, nil
}
