package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

var prefetchCommand = &cli.Command{
	Name:      "prefetch",
	Usage:     "warm the cache: pull images through a running wharf",
	ArgsUsage: "IMAGE... (alpine:3.20, ghcr.io/org/app:v1, nginx@sha256:...)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "http://127.0.0.1:5000", Usage: "the running wharf", EnvVars: []string{"WHARF_SERVER"}},
		&cli.StringSliceFlag{Name: "platform", Value: cli.NewStringSlice("linux/" + runtime.GOARCH), Usage: `platforms to fetch from multi-platform images ("all" for every one)`},
		&cli.StringFlag{Name: "from", Usage: "file with one image per line (# comments)"},
		&cli.IntFlag{Name: "parallel", Value: 3, Usage: "blobs downloaded at once per image"},
	},
	Action: func(c *cli.Context) error {
		images := c.Args().Slice()
		if f := c.String("from"); f != "" {
			more, err := readImageList(f)
			if err != nil {
				return err
			}
			images = append(images, more...)
		}
		if len(images) == 0 {
			return fmt.Errorf("no images given")
		}
		p := &prefetcher{server: strings.TrimSuffix(c.String("server"), "/"), platforms: c.StringSlice("platform"),
			parallel: c.Int("parallel"), out: c.App.Writer}
		failed := 0
		for _, img := range images {
			if err := p.image(c.Context, img); err != nil {
				fmt.Fprintf(p.out, "%s: FAILED: %v\n", img, err)
				failed++
			}
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d images failed", failed, len(images))
		}
		return nil
	},
}

func readImageList(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

// splitImage turns an image reference into the repository path Wharf
// mirrors it under and the tag or digest.
func splitImage(img string) (path, ref string) {
	name, ref := img, "latest"
	if i := strings.Index(img, "@"); i >= 0 {
		name, ref = img[:i], img[i+1:]
	} else if i := strings.LastIndex(img, ":"); i > strings.LastIndex(img, "/") {
		name, ref = img[:i], img[i+1:]
	}
	t := policy.Mirror(name, "")
	if t.Registry == upstream.DockerHub {
		return t.Remote, ref
	}
	return t.Local, ref
}

type prefetcher struct {
	server    string
	platforms []string
	parallel  int
	out       io.Writer
}

var manifestAccept = strings.Join([]string{
	"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// get fetches path fully into w, verifying the digest when known, and
// returns its content type.
func (p *prefetcher) get(ctx context.Context, path string, want digest.Digest, w io.Writer) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.server+path, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("GET %s: %s %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	v := digest.Canonical.Digester()
	if want != "" {
		v = want.Algorithm().Digester()
	}
	if _, err := io.Copy(io.MultiWriter(w, v.Hash()), resp.Body); err != nil {
		return "", err
	}
	if want != "" && v.Digest() != want {
		return "", fmt.Errorf("%s: content does not match %s", path, want)
	}
	return resp.Header.Get("Content-Type"), nil
}

func (p *prefetcher) manifest(ctx context.Context, path, ref string) (*cache.ManifestInfo, error) {
	var b strings.Builder
	want := digest.Digest("")
	if strings.Contains(ref, ":") {
		want = digest.Digest(ref)
	}
	ct, err := p.get(ctx, "/v2/"+path+"/manifests/"+ref, want, &b)
	if err != nil {
		return nil, err
	}
	return cache.ParseManifest(ct, []byte(b.String()))
}

// image pulls one image (the chosen platforms of an index) through Wharf,
// printing progress.
func (p *prefetcher) image(ctx context.Context, img string) error {
	start := time.Now()
	path, ref := splitImage(img)
	top, err := p.manifest(ctx, path, ref)
	if err != nil {
		return err
	}
	images := []*cache.ManifestInfo{top}
	if cache.IsIndex(top.MediaType) {
		images = nil
		match, err := platformMatcher(p.platforms)
		if err != nil {
			return err
		}
		for _, m := range top.Manifests {
			if match != nil && (m.Platform == nil || !match.Match(*m.Platform)) {
				continue
			}
			child, err := p.manifest(ctx, path, m.Digest.String())
			if err != nil {
				return err
			}
			images = append(images, child)
		}
		if len(images) == 0 {
			return fmt.Errorf("no manifest for platforms %v", p.platforms)
		}
	}
	var blobs []digest.Digest
	for _, m := range images {
		blobs = append(blobs, m.Blobs...)
	}
	slices.Sort(blobs)
	blobs = slices.Compact(blobs)
	var bytesDone, blobsDone atomic.Int64
	stop := make(chan struct{})
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
				fmt.Fprintf(p.out, "%s: %d/%d blobs, %.1f MiB\n", img, blobsDone.Load(), len(blobs), float64(bytesDone.Load())/(1<<20))
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.parallel)
	for _, d := range blobs {
		g.Go(func() error {
			_, err := p.get(gctx, "/v2/"+path+"/blobs/"+d.String(), d, countWriter{&bytesDone})
			if err == nil {
				blobsDone.Add(1)
			}
			return err
		})
	}
	err = g.Wait()
	close(stop)
	if err != nil {
		return err
	}
	fmt.Fprintf(p.out, "%s: cached %d manifests, %d blobs, %.1f MiB in %s\n", img, len(images)+btoi(len(top.Manifests) > 0),
		len(blobs), float64(bytesDone.Load())/(1<<20), time.Since(start).Round(time.Millisecond))
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

type countWriter struct{ n *atomic.Int64 }

func (c countWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// platformMatcher matches the --platform values as containerd does; nil
// for "all".
func platformMatcher(names []string) (platforms.MatchComparer, error) {
	var ps []ocispec.Platform
	for _, n := range names {
		if n == "all" {
			return nil, nil
		}
		pl, err := platforms.Parse(n)
		if err != nil {
			return nil, fmt.Errorf("--platform %q: %w", n, err)
		}
		ps = append(ps, pl)
	}
	return platforms.Any(ps...), nil
}
