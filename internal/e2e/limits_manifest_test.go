package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentLargeManifests: 60 clients PUT a 4 MiB manifest each at
// once (all refused: their blobs are missing). The server's memory stays
// bounded (peak RSS under 150 MB; unbounded, it reached 618 MB), every
// answer is a clear 4xx, and a normal push works right after.
func TestConcurrentLargeManifests(t *testing.T) {
	w := startWharf(t, "")
	pid := w.cmd.Process.Pid
	// A manifest of just under 4 MiB: one layer it does not have, and a
	// large annotation.
	pad := strings.Repeat("x", 4<<20-600)
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("1", 64) + `","size":2},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + strings.Repeat("2", 64) + `","size":10}],` +
		`"annotations":{"pad":"` + pad + `"}}`)
	if len(body) > 4<<20 {
		t.Fatalf("manifest is %d bytes", len(body))
	}
	before := rssBytes(pid)
	var wg sync.WaitGroup
	statuses := make(chan int, 60)
	c := &http.Client{Timeout: 2 * time.Minute}
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPut, w.url(fmt.Sprintf("/v2/team/big%d/manifests/v1", i)), bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			resp, err := c.Do(req)
			if err != nil {
				t.Errorf("PUT %d: %v", i, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	counts := map[int]int{}
	for s := range statuses {
		counts[s]++
		if s < 400 || s >= 500 {
			t.Errorf("a large manifest PUT answered %d", s)
		}
	}
	peak := peakRSS(pid)
	t.Logf("60 concurrent 4 MiB manifest PUTs: answers %v; RSS %d MiB before, peak %d MiB", counts, before>>20, peak>>20)
	if peak > 150<<20 {
		t.Errorf("peak RSS %d MiB with 60 concurrent 4 MiB manifest PUTs (bound 150 MB)", peak>>20)
	}
	pushBytes(t, w, "team/after", []byte("still pushing"))
}
