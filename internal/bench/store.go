package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
)

var (
	storeBlobs = flag.Int("store-blobs", 100000, "blobs in the large index")
	storeTags  = flag.Int("store-tags", 10000, "tags (one manifest each) in the large index")
)

// runStore measures a large index: wharf's start-up time and RSS, a GC
// pass, an eviction pass, and cache-hit throughput while GC runs.
func runStore(tmp, bin string) error {
	data := filepath.Join(tmp, "store-data")
	start := time.Now()
	if err := seedStore(data, *storeBlobs, *storeTags); err != nil {
		return err
	}
	fmt.Printf("store: %d blobs, %d tags (half of them mirrored) loaded in %s\n", *storeBlobs, *storeTags, time.Since(start).Round(time.Second))

	t0 := time.Now()
	w, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", data, "--mirror=false", "--gc-interval", "0")
	if err != nil {
		return err
	}
	for {
		if resp, err := http.Get("http://" + w.addr + "/v2/"); err == nil {
			resp.Body.Close()
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	startup := time.Since(t0)
	time.Sleep(500 * time.Millisecond)
	rss := readRSS(w.cmd.Process.Pid)
	fmt.Printf("  start-up to first answer %s (target < 1s); RSS %.1f MiB (target < 150 MiB)\n", startup.Round(time.Millisecond), float64(rss)/(1<<20))
	url := "http://" + w.addr + "/v2/bench/r0/manifests/t0"
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conns}}
	quiet := load(c, url, *conns, *duration)
	w.stop()

	w, err = startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", data, "--mirror=false", "--gc-interval", "1s", "--gc-grace", "1h")
	if err != nil {
		return err
	}
	busy := load(c, "http://"+w.addr+"/v2/bench/r0/manifests/t0", *conns, *duration)
	w.stop()
	fmt.Printf("  cache-hit manifest GETs: %.0f req/s without GC, %.0f req/s with GC running every second (%.1f%%, target >= 90%%)\n",
		quiet.rps, busy.rps, 100*busy.rps/quiet.rps)
	if quiet.errors+busy.errors > 0 {
		return fmt.Errorf("requests failed in the store benchmark")
	}

	t1 := time.Now()
	out, err := exec.Command(bin, "gc", "--data", data, "--dry-run").CombinedOutput()
	if err != nil {
		return fmt.Errorf("wharf gc: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fmt.Printf("  GC pass over the index (wharf gc --dry-run, with open and close): %s — %s\n", time.Since(t1).Round(time.Millisecond), lines[len(lines)-1])

	st, err := stores.Open(cache.Options{Dir: data, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer st.Close()
	size, _ := st.Maintenance().Size()
	t2 := time.Now()
	rep, err := st.Maintenance().Evict(cache.EvictOptions{MaxBytes: int64(float64(size) / 0.96),
		GC: cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(2 * time.Hour), MirroredGrace: time.Minute}})
	if err != nil {
		return err
	}
	fmt.Printf("  eviction pass (quota just exceeded): %s, %d mirrored tags evicted, %.1f MiB freed\n",
		time.Since(t2).Round(time.Millisecond), len(rep.Tags), float64(rep.Freed)/(1<<20))
	return nil
}

// seedStore writes blobs and tagged manifests (each referencing
// blobs/tags blobs) through the store's API without fsync.
func seedStore(dir string, blobs, tags int) error {
	st, err := stores.Open(cache.Options{Dir: dir, NoSync: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer st.Close()
	fills := st.NewFills(cache.FillsOptions{})
	defer fills.Close()
	per := max(1, blobs/tags)
	for i := 0; i < tags; i++ {
		repo, mirrored := fmt.Sprintf("bench/r%d", i%1000), i%2 == 1
		if mirrored {
			repo = fmt.Sprintf("docker.io/bench/r%d", i%1000)
		}
		var layers []map[string]any
		for j := 0; j < per; j++ {
			b := []byte(fmt.Sprintf("blob %d-%d", i, j))
			d := digest.FromBytes(b)
			if !mirrored {
				if err := st.Uploads().PutBlob(repo, d, int64(len(b)), bytes.NewReader(b)); err != nil {
					return err
				}
			} else if err := mirrorBlob(fills, repo, d, b); err != nil {
				return err
			}
			layers = append(layers, map[string]any{"mediaType": "application/octet-stream", "digest": d, "size": len(b)})
		}
		m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest, "config": layers[0], "layers": layers[1:]})
		tag := fmt.Sprintf("t%d", i/1000)
		var err error
		if mirrored {
			_, err = st.PutMirroredManifest(repo, "docker.io", digest.FromBytes(m), tag, cache.MediaTypeOCIManifest, m, time.Now())
		} else {
			_, err = st.PutManifest(repo, "", []string{tag}, cache.MediaTypeOCIManifest, m)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// mirrorBlob stores b as a blob mirrored from docker.io, the way the
// pull-through mirror does (through the store's download coordinator).
func mirrorBlob(fills *cache.Fills, repo string, d digest.Digest, b []byte) error {
	src := cache.BlobSource{Open: func(context.Context, int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
	}}
	rd, _, err := fills.Get(context.Background(), repo, cache.MirroredFrom("docker.io"), d, src)
	if err != nil || rd == nil {
		return err
	}
	defer rd.Close()
	return rd.Wait(context.Background())
}
