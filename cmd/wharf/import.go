package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/cache"
)

// importCommand brings a registry:2 data directory across: every
// repository, tag, manifest and blob of its filesystem storage, as pushed
// content, each digest verified. Everything it writes is a complete store
// operation, so a second run skips what is there and an interrupted run
// continues where it stopped.
var importCommand = &cli.Command{
	Name:  "import",
	Usage: "import registry:2's filesystem storage (its root directory) as pushed content; run it with the server stopped",
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "registry-root", Required: true, Usage: "registry:2's root directory (storage.filesystem.rootdirectory, e.g. /var/lib/registry)"},
		&cli.BoolFlag{Name: "quiet", Usage: "no progress line"},
		&cli.BoolFlag{Name: "include-library", Usage: "also import library/... repositories (by default skipped: they are Docker Hub's names, which Wharf mirrors, and a registry:2 pull-through cache keeps Docker Hub's images there)"},
	}, dataFlags...),
	Action: func(c *cli.Context) error {
		src, err := scanRegistry2(c.String("registry-root"))
		if err != nil {
			return err
		}
		st, err := openForMaintenance(c)
		if err != nil {
			return err
		}
		defer st.Close()
		imp := &importer{ctx: c.Context, st: st, src: src, done: map[digest.Digest]bool{}, library: c.Bool("include-library")}
		if !c.Bool("quiet") {
			stop := imp.showProgress(os.Stderr)
			defer stop()
		}
		rep, err := imp.run()
		if !c.Bool("quiet") {
			fmt.Fprintln(os.Stderr)
		}
		rep.write(c.App.Writer)
		return err
	},
}

// r2Repo is one repository of a registry:2 storage.
type r2Repo struct {
	name      string
	layers    []digest.Digest          // _layers links
	revisions []digest.Digest          // _manifests/revisions links
	tags      map[string]digest.Digest // _manifests/tags/<tag>/current/link
}

// r2Source is a registry:2 storage read from its root directory.
type r2Source struct {
	v2    string // <root>/docker/registry/v2
	repos []*r2Repo
	total int64 // bytes of every blob file the links name (each once)
}

func (s *r2Source) blobPath(d digest.Digest) string {
	hex := d.Encoded()
	if len(hex) < 2 {
		return ""
	}
	return filepath.Join(s.v2, "blobs", string(d.Algorithm()), hex[:2], hex, "data")
}

// scanRegistry2 lists the repositories, links and tags under root.
func scanRegistry2(root string) (*r2Source, error) {
	src := &r2Source{v2: filepath.Join(root, "docker", "registry", "v2")}
	reposDir := filepath.Join(src.v2, "repositories")
	if _, err := os.Stat(reposDir); err != nil {
		return nil, fmt.Errorf("%s holds no registry:2 storage (no docker/registry/v2/repositories): %w", root, err)
	}
	err := filepath.WalkDir(reposDir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() || p == reposDir {
			return nil
		}
		if strings.HasPrefix(e.Name(), "_") {
			return filepath.SkipDir // a repository's own directories
		}
		_, errM := os.Stat(filepath.Join(p, "_manifests"))
		_, errL := os.Stat(filepath.Join(p, "_layers"))
		if errM != nil && errL != nil {
			return nil // a name's parent directory
		}
		rel, _ := filepath.Rel(reposDir, p)
		r := &r2Repo{name: filepath.ToSlash(rel), tags: map[string]digest.Digest{}}
		r.layers = readLinks(filepath.Join(p, "_layers"))
		r.revisions = readLinks(filepath.Join(p, "_manifests", "revisions"))
		tagDirs, _ := os.ReadDir(filepath.Join(p, "_manifests", "tags"))
		for _, t := range tagDirs {
			if d, err := readLink(filepath.Join(p, "_manifests", "tags", t.Name(), "current", "link")); err == nil {
				r.tags[t.Name()] = d
			}
		}
		src.repos = append(src.repos, r)
		return nil // nested names (team/app under team) are found too
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(src.repos, func(i, j int) bool { return src.repos[i].name < src.repos[j].name })
	seen := map[digest.Digest]bool{}
	for _, r := range src.repos {
		for _, d := range append(append([]digest.Digest{}, r.layers...), r.revisions...) {
			if !seen[d] {
				seen[d] = true
				if fi, err := os.Stat(src.blobPath(d)); err == nil {
					src.total += fi.Size()
				}
			}
		}
	}
	return src, nil
}

// readLinks reads <dir>/<algorithm>/<hex>/link files.
func readLinks(dir string) []digest.Digest {
	var out []digest.Digest
	algs, _ := os.ReadDir(dir)
	for _, a := range algs {
		entries, _ := os.ReadDir(filepath.Join(dir, a.Name()))
		for _, e := range entries {
			if d, err := readLink(filepath.Join(dir, a.Name(), e.Name(), "link")); err == nil {
				out = append(out, d)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func readLink(path string) (digest.Digest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return digest.Parse(strings.TrimSpace(string(b)))
}

// importReport says what an import did.
type importReport struct {
	repos                          int
	blobs, blobsPresent, blobBytes int64
	linked, copied                 int64 // new blob files: taken in place (hard links), copied
	manifests, manifestsPresent    int
	tags, tagsPresent              int
	skipped                        []string // what was not imported, and why
}

func (r *importReport) skip(format string, args ...any) {
	r.skipped = append(r.skipped, fmt.Sprintf(format, args...))
}

func (r *importReport) write(w io.Writer) {
	fmt.Fprintf(w, "imported from registry:2: %d repositories; %d blobs (%s), %d manifests, %d tags\n",
		r.repos, r.blobs, humanBytes(r.blobBytes), r.manifests, r.tags)
	if r.linked > 0 {
		fmt.Fprintf(w, "blob files taken in place (hard links to registry:2's files, no extra space): %d; copied: %d\n", r.linked, r.copied)
	}
	fmt.Fprintf(w, "already here (an earlier run): %d blobs, %d manifests, %d tags\n", r.blobsPresent, r.manifestsPresent, r.tagsPresent)
	if len(r.skipped) == 0 {
		fmt.Fprintln(w, "skipped: nothing")
		return
	}
	fmt.Fprintf(w, "skipped (%d):\n", len(r.skipped))
	for _, s := range r.skipped {
		fmt.Fprintln(w, "  "+s)
	}
}

type importer struct {
	ctx    context.Context // stops the import between two blobs
	st     *cache.Store
	src    *r2Source
	copied atomic.Int64 // bytes read from the source, for the progress line
	start  time.Time
	done   map[digest.Digest]bool // blobs whose file was read (shared layers count once)
	bad    map[digest.Digest]string
	// library: import library/... too (Docker Hub's names: pushed content
	// there would shadow the mirror for them for good)
	library bool
}

func (imp *importer) run() (*importReport, error) {
	rep := &importReport{}
	imp.start = time.Now()
	imp.bad = map[digest.Digest]string{}
	for _, r := range imp.src.repos {
		if strings.HasPrefix(r.name, "library/") && !imp.library {
			rep.skip("repository %s: Docker Hub's library/ namespace, which Wharf mirrors (a registry:2 pull-through cache keeps Docker Hub's images there); --include-library imports it as private content", r.name)
			continue
		}
		rep.repos++
		if err := imp.ctx.Err(); err != nil {
			return rep, err
		}
		if err := imp.repo(r, rep); err != nil {
			return rep, fmt.Errorf("%s: %w", r.name, err)
		}
	}
	return rep, nil
}

// repo imports one repository: its blobs, then its manifests (image
// manifests before the indexes that list them), then its tags.
func (imp *importer) repo(r *r2Repo, rep *importReport) error {
	for _, d := range r.layers {
		if err := imp.ctx.Err(); err != nil {
			return err
		}
		if err := imp.blob(r.name, d, rep); err != nil {
			return err
		}
	}
	type man struct {
		d    digest.Digest
		body []byte
	}
	var pending []man
	for _, d := range r.revisions {
		if m, err := imp.st.GetManifest(r.name, d.String()); err == nil && m.Digest == d {
			rep.manifestsPresent++
			continue
		}
		body, err := os.ReadFile(imp.src.blobPath(d))
		switch {
		case errors.Is(err, os.ErrNotExist):
			rep.skip("manifest %s@%s: dangling link (no data in blobs/)", r.name, d)
			continue
		case err != nil:
			return err
		case d.Validate() != nil || d.Algorithm().FromBytes(body) != d:
			rep.skip("manifest %s@%s: its bytes do not match its digest", r.name, d)
			continue
		}
		imp.copied.Add(int64(len(body)))
		var head struct {
			SchemaVersion int `json:"schemaVersion"`
		}
		if json.Unmarshal(body, &head) == nil && head.SchemaVersion == 1 {
			rep.skip("manifest %s@%s: Docker schema1, which Wharf does not store (repush the image)", r.name, d)
			continue
		}
		pending = append(pending, man{d, body})
	}
	// A pass stores what it can; a manifest whose references are another
	// manifest still pending waits for the next pass.
	for len(pending) > 0 {
		var next []man
		missing := map[digest.Digest]string{}
		for _, m := range pending {
			_, err := imp.st.PutManifest(r.name, m.d, nil, "", m.body)
			var miss *cache.MissingRefError
			switch {
			case err == nil:
				rep.manifests++
			case errors.As(err, &miss):
				next = append(next, m)
				missing[m.d] = miss.Digest.String()
			case errors.Is(err, cache.ErrManifestInvalid), errors.Is(err, cache.ErrManifestTooBig):
				rep.skip("manifest %s@%s: %v", r.name, m.d, err)
			default:
				return err
			}
		}
		if len(next) == len(pending) {
			stuck := map[string]bool{}
			for _, m := range next {
				stuck[m.d.String()] = true
			}
			for _, m := range next {
				why := "references " + missing[m.d] + ", which is not in the registry:2 storage"
				if b, ok := imp.bad[digest.Digest(missing[m.d])]; ok {
					why = "references " + missing[m.d] + " (" + b + ")"
				} else if stuck[missing[m.d]] {
					why = "references manifest " + missing[m.d] + ", which is not imported either"
				}
				rep.skip("manifest %s@%s: %s", r.name, m.d, why)
			}
			break
		}
		pending = next
	}
	tags := make([]string, 0, len(r.tags))
	for t := range r.tags {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	for _, t := range tags {
		d := r.tags[t]
		if cur, _, err := imp.st.TagInfo(r.name, t); err == nil && cur == d {
			rep.tagsPresent++
			continue
		}
		m, err := imp.st.GetManifest(r.name, d.String())
		if err != nil {
			rep.skip("tag %s:%s: its manifest %s was not imported", r.name, t, d)
			continue
		}
		if _, err := imp.st.PutManifest(r.name, d, []string{t}, m.MediaType, m.Body); err != nil {
			return err
		}
		rep.tags++
	}
	return nil
}

// blob imports blob d of repo: linked when the store holds it already,
// else copied from its data file, which must hash to d.
func (imp *importer) blob(repo string, d digest.Digest, rep *importReport) error {
	if _, err := imp.st.StatBlob(repo, d); err == nil {
		rep.blobsPresent++
		imp.countOnce(d)
		return nil
	}
	if _, ok := imp.bad[d]; ok {
		rep.skip("blob %s@%s: %s", repo, d, imp.bad[d])
		return nil
	}
	if _, err := imp.st.LinkExisting(repo, d, cache.Pushed); err == nil {
		rep.blobs++
		imp.countOnce(d)
		return nil
	} else if !errors.Is(err, cache.ErrBlobUnknown) {
		return err
	}
	path := imp.src.blobPath(d)
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || path == "" {
		imp.bad[d] = "dangling link: no data in blobs/"
		rep.skip("blob %s@%s: %s", repo, d, imp.bad[d])
		return nil
	} else if err != nil {
		return err
	}
	linked, err := imp.st.Uploads().PutBlobFile(repo, d, path)
	imp.done[d] = true
	imp.copied.Add(fi.Size())
	switch {
	case errors.Is(err, cache.ErrDigestMismatch):
		imp.bad[d] = "its bytes do not match its digest: not imported"
		rep.skip("blob %s@%s: %s", repo, d, imp.bad[d])
		return nil
	case err != nil:
		return err
	}
	rep.blobs++
	rep.blobBytes += fi.Size()
	if linked {
		rep.linked++
	} else {
		rep.copied++
	}
	return nil
}

// countOnce counts a blob already here toward the progress, once.
func (imp *importer) countOnce(d digest.Digest) {
	if imp.done[d] {
		return
	}
	imp.done[d] = true
	if fi, err := os.Stat(imp.src.blobPath(d)); err == nil {
		imp.copied.Add(fi.Size())
	}
}

// showProgress prints bytes, share and ETA: one line redrawn on a
// terminal, a line every 5 s otherwise. The returned func stops it.
func (imp *importer) showProgress(w *os.File) func() {
	fi, _ := w.Stat()
	tty := fi != nil && fi.Mode()&os.ModeCharDevice != 0
	every := 5 * time.Second
	if tty {
		every = 200 * time.Millisecond
	}
	return imp.every(every, true, func() { imp.printProgress(w, tty) })
}

// every calls fn every interval, and once more when the returned func
// stops it if last is set.
func (imp *importer) every(interval time.Duration, last bool, fn func()) func() {
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				if last {
					fn()
				}
				return
			case <-t.C:
				fn()
			}
		}
	}()
	return func() { close(stop); <-stopped }
}

// progress is the share of bytes read and the time left, as text.
func (imp *importer) progress() (done, total int64, pct float64, eta string) {
	done, total = min(imp.copied.Load(), imp.src.total), imp.src.total
	pct, eta = 100.0, "–"
	if total > 0 {
		pct = 100 * float64(min(done, total)) / float64(total)
	}
	if el := time.Since(imp.start); done > 0 && done < total {
		eta = (time.Duration(float64(el) * float64(total-done) / float64(done))).Round(time.Second).String()
	}
	return done, total, pct, eta
}

func (imp *importer) printProgress(w io.Writer, tty bool) {
	done, total, pct, eta := imp.progress()
	const width = 30
	bar := strings.Repeat("#", int(pct/100*width)) + strings.Repeat(".", width-int(pct/100*width))
	line := fmt.Sprintf("[%s] %s / %s  %3.0f%%  ETA %s", bar, humanBytes(done), humanBytes(total), pct, eta)
	if tty {
		fmt.Fprint(w, "\r"+line+"   ")
	} else {
		fmt.Fprintln(w, line)
	}
}
