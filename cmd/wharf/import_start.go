package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
)

// registry2ImportedFile, in a data directory holding registry:2's storage,
// records that a start imported it (when, how long, what): later starts
// leave that storage alone.
const registry2ImportedFile = "registry2-imported"

// registry2ImportingFile holds the progress of an import at start, for
// `wharf health` to say why nothing answers yet.
const registry2ImportingFile = "registry2-importing"

// importAtStart serves registry:2's storage found in the data directory
// (registry:2's volume, reused as it is): the first start imports it before
// it listens, taking each verified blob in place where the filesystem
// allows (a hard link: no second copy of the bytes). An interrupted import
// is resumed by the next start; a complete one is recorded and not redone.
func importAtStart(ctx context.Context, cfg serveConfig, st *cache.Store) error {
	dir, log := cfg.cache.Dir, cfg.log
	if !dirExists(filepath.Join(dir, "docker", "registry", "v2", "repositories")) {
		return nil
	}
	marker := filepath.Join(dir, registry2ImportedFile)
	if b, err := os.ReadFile(marker); err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		log.Info("registry:2's storage in the data directory was imported by an earlier start: nothing to import ("+
			"`wharf import --registry-root "+dir+"` with the server stopped imports it again)", "record", marker, "imported", first)
		return nil
	}
	src, err := scanRegistry2(dir)
	if err != nil {
		return err
	}
	log.Info("the data directory holds registry:2's storage: importing it before serving (every digest verified; "+
		"blobs taken in place as hard links where the filesystem allows; an interrupted import resumes at the next start)",
		"repositories", len(src.repos), "bytes", humanBytes(src.total))
	imp := &importer{ctx: ctx, st: st, src: src, done: map[digest.Digest]bool{}}
	progressFile := filepath.Join(dir, registry2ImportingFile)
	os.WriteFile(progressFile, []byte("importing registry:2's storage: starting\n"), 0o640)
	defer os.Remove(progressFile)
	stop := imp.every(5*time.Second, false, func() {
		done, total, pct, eta := imp.progress()
		os.WriteFile(progressFile, []byte(fmt.Sprintf("importing registry:2's storage: %s of %s (%.0f%%), ETA %s\n",
			humanBytes(done), humanBytes(total), pct, eta)), 0o640)
		log.Info("importing registry:2's storage", "done", humanBytes(done), "total", humanBytes(total),
			"percent", fmt.Sprintf("%.0f", pct), "eta", eta)
		// systemd: the start takes as long as the import does.
		sdNotify(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d\nSTATUS=importing registry:2's storage: %.0f%%",
			(30 * time.Second).Microseconds(), pct))
	})
	rep, err := imp.run()
	stop()
	if err != nil {
		return fmt.Errorf("importing registry:2's storage from %s (the next start resumes it): %w", dir, err)
	}
	took := time.Since(imp.start).Round(time.Millisecond)
	log.Info("imported registry:2's storage: its images are served as pushed content under the same names",
		"repositories", rep.repos, "blobs", rep.blobs, "files_in_place", rep.linked, "files_copied", rep.copied, "bytes", humanBytes(rep.blobBytes),
		"manifests", rep.manifests, "tags", rep.tags, "skipped", len(rep.skipped), "took", took.String())
	if rep.linked > 0 {
		log.Info("registry:2's files under docker/ share their bytes with Wharf's blobs (hard links): remove " +
			filepath.Join(dir, "docker") + " once you no longer need registry:2, so that what Wharf deletes frees space")
	}
	const shown = 20
	for i, s := range rep.skipped {
		if i == shown {
			log.Warn(fmt.Sprintf("registry:2 import: %d more not imported; the list is in %s", len(rep.skipped)-shown, marker))
			break
		}
		log.Warn("registry:2 import: not imported: " + s)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s in %s\n", time.Now().UTC().Format(time.RFC3339), took)
	rep.write(&b)
	if err := os.WriteFile(marker, b.Bytes(), 0o640); err != nil {
		log.Warn("recording the import of registry:2's storage (the next start checks it again)", "err", err)
	}
	return nil
}
