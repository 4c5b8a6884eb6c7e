package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/testport"
)

// pushRandom pushes a random blob of size bytes to repo in one POST and
// returns its digest and the status.
func pushRandom(c *http.Client, w *wharfProc, repo string, size int) (digest.Digest, int, error) {
	b := make([]byte, size)
	rand.Read(b)
	d := digest.FromBytes(b)
	resp, err := c.Post(w.url("/v2/"+repo+"/blobs/uploads/?digest="+d.String()), "application/octet-stream", bytes.NewReader(b))
	if err != nil {
		return d, 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return d, resp.StatusCode, nil
}

// blobDigest reads blob d of repo back and hashes it.
func blobDigest(c *http.Client, w *wharfProc, repo string, d digest.Digest) (digest.Digest, error) {
	resp, err := c.Get(w.url("/v2/" + repo + "/blobs/" + d.String()))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET blob %s: %s", d, resp.Status)
	}
	return digest.FromReader(resp.Body)
}

// fillUp writes a file into dir until the filesystem is full.
func fillUp(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for i := 0; i < 1<<16; i++ {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	for { // the last few bytes
		if _, err := f.Write(chunk[:512]); err != nil {
			break
		}
	}
}

// TestFullDiskSurvives is the disk-full fault campaign on a 64 MiB tmpfs
// with the default settings: pushes and mirror pulls fill it, then 500
// upload sessions (with chunks) and a filesystem filled to the last byte
// by another process. The process stays up, /v2/ answers, every
// acknowledged blob reads back intact, no partial file is left, pushes work
// again once the tmpfs is made larger, and a start on a completely full
// tmpfs serves reads.
func TestFullDiskSurvives(t *testing.T) {
	fsDir := smallFS(t, 64)
	data := filepath.Join(fsDir, "data")
	hub := fakehub.Start(t)
	var images []string
	for i := 0; i < 8; i++ {
		name := fmt.Sprintf("library/img%d", i)
		hub.Push(name, "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 2, LayerSize: 2 << 20, Seed: uint64(300 + i)})
		images = append(images, name)
	}
	w := startWharf(t, data, "--upstream", "docker.io="+hub.URL)
	c := &http.Client{Timeout: 60 * time.Second}
	alive := func(when string) {
		t.Helper()
		resp, err := c.Get(w.url("/v2/"))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: /v2/ does not answer: %v %v\n%s", when, err, resp, w.log)
		}
		resp.Body.Close()
		if exited, _ := isExited(w); exited {
			t.Fatalf("%s: wharf exited\n%s", when, w.log)
		}
	}

	// Pushes and mirror pulls, alternating, until both are refused.
	acked := map[digest.Digest]string{}
	pulled, refusedPush, refusedPull := 0, 0, 0
	for i := 0; i < 200 && (refusedPush == 0 || i < len(images)); i++ {
		d, status, err := pushRandom(c, w, "team/app", 3<<20)
		switch {
		case err != nil:
			t.Fatalf("push %d: %v", i, err)
		case status == http.StatusCreated:
			acked[d] = "team/app"
		case status == http.StatusInsufficientStorage:
			refusedPush++
		default:
			t.Fatalf("push %d: status %d", i, status)
		}
		if i < len(images) {
			if err := pullMirrored(c, w.url(""), images[i]); err != nil {
				refusedPull++
			} else {
				pulled++
			}
		}
	}
	t.Logf("filling: %d pushes acknowledged, %d refused; %d mirror pulls, %d failed", len(acked), refusedPush, pulled, refusedPull)
	if len(acked) == 0 || refusedPush == 0 || pulled == 0 {
		t.Fatal("want pushes acknowledged and refused, and mirror pulls")
	}
	alive("after filling")

	// 500 upload sessions, each with a 256 KiB chunk, concurrently.
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	sessions := map[string]int64{} // id → bytes acknowledged
	chunk := make([]byte, 256<<10)
	rand.Read(chunk)
	sem := make(chan struct{}, 16)
	for i := 0; i < 500; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := c.Post(w.url("/v2/team/flood/blobs/uploads/"), "", nil)
			if err != nil {
				mu.Lock()
				statuses[-1]++
				mu.Unlock()
				return
			}
			resp.Body.Close()
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
			if resp.StatusCode != http.StatusAccepted {
				return
			}
			id := resp.Header.Get("Docker-Upload-UUID")
			req, _ := http.NewRequest(http.MethodPatch, w.url(resp.Header.Get("Location")), bytes.NewReader(chunk))
			req.Header.Set("Content-Type", "application/octet-stream")
			presp, err := c.Do(req)
			if err != nil {
				return
			}
			presp.Body.Close()
			mu.Lock()
			statuses[1000+presp.StatusCode]++
			if presp.StatusCode == http.StatusAccepted {
				sessions[id] = int64(len(chunk))
			} else {
				sessions[id] = 0
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("500 upload POSTs on a full disk: statuses %v (1000+: their PATCH)", statuses)
	if statuses[-1] > 0 || statuses[http.StatusInternalServerError] > 0 || statuses[1000+http.StatusInternalServerError] > 0 {
		t.Fatalf("upload flood: %v", statuses)
	}
	alive("after 500 upload POSTs")

	// Another process fills the filesystem to the last byte.
	filler := filepath.Join(fsDir, "filler")
	fillUp(t, filler)
	time.Sleep(6 * time.Second) // a free-space check runs every 5 s
	for i := 0; i < 20; i++ {
		if _, status, err := pushRandom(c, w, "team/app", 64<<10); err != nil || status == http.StatusCreated || status >= 500 && status != http.StatusInsufficientStorage {
			t.Fatalf("push on a filesystem full to the last byte: %d %v", status, err)
		}
		req, _ := http.NewRequest(http.MethodPost, w.url("/v2/team/flood/blobs/uploads/"), nil)
		if resp, err := c.Do(req); err != nil {
			t.Fatalf("upload POST on a full filesystem: %v", err)
		} else {
			resp.Body.Close()
		}
	}
	alive("with the filesystem full to the last byte")

	verify := func(when string) {
		t.Helper()
		for d, repo := range acked {
			got, err := blobDigest(c, w, repo, d)
			if err != nil || got != d {
				t.Fatalf("%s: acknowledged blob %s reads back as %s: %v", when, d, got, err)
			}
		}
	}
	verify("disk full")
	checkNoPartial(t, data, sessions)

	// A stop with the filesystem full to the last byte (its reserve already
	// given to the index, and eaten too): the index cannot write its
	// memtable out, so it is left to its log. The process exits cleanly; a
	// start while still full says what to do; with some room the log is
	// replayed and nothing acknowledged is lost.
	filler2 := filepath.Join(fsDir, "filler2")
	fillUp(t, filler2)
	stopStart := time.Now()
	if err := w.stop(t); err != nil || strings.Contains(w.log.String(), "fatal error") {
		t.Fatalf("SIGTERM on a full filesystem: %v\n%s", err, w.log)
	}
	t.Logf("stopped on a full filesystem in %s", time.Since(stopStart).Round(time.Millisecond))
	if !strings.Contains(w.log.String(), "left to its write-ahead log") {
		t.Fatalf("the stop did not say the index was left to its log:\n%s", w.log)
	}
	out, err := runErr(20*time.Second, nil, wharfBin, "serve", "--addr", testport.Pick(t), "--data", data)
	if err == nil || !strings.Contains(out, "free at least") || strings.Contains(out, "fatal error") {
		t.Fatalf("start on a full filesystem with an unreplayed log: %v\n%s", err, out)
	}
	os.Remove(filler2)
	w = startWharf(t, data, "--upstream", "docker.io="+hub.URL)
	verify("restarted after a stop on a full filesystem")

	// More space: pushes work again without a restart.
	os.Remove(filler)
	if out, err := exec.Command("mount", "-o", "remount,size=256m", fsDir).CombinedOutput(); err != nil {
		t.Fatalf("remount larger: %v %s", err, out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		d, status, err := pushRandom(c, w, "team/app", 8<<20)
		if err == nil && status == http.StatusCreated {
			acked[d] = "team/app"
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no push accepted within 15 s of the tmpfs growing: %d %v\n%s", status, err, w.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := pullMirrored(c, w.url(""), images[len(images)-1]); err != nil {
		t.Fatalf("mirror pull after the tmpfs grew: %v", err)
	}
	verify("after the tmpfs grew")

	// A start on a completely full filesystem serves reads.
	if err := w.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, w.log)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", fsDir).CombinedOutput(); err != nil {
		// Shrinking below what is used fails: fill what is left instead.
		t.Logf("shrinking the tmpfs: %v %s (filling it instead)", err, out)
	}
	fillUp(t, filler)
	w = startWharf(t, data, "--upstream", "docker.io="+hub.URL)
	verify("started on a full filesystem")
	if _, status, err := pushRandom(c, w, "team/app", 1<<20); err != nil || status != http.StatusInsufficientStorage {
		t.Fatalf("push after a start on a full filesystem: %d %v", status, err)
	}
	alive("started on a full filesystem")
	if !strings.Contains(w.log.String(), "filesystem is full") {
		t.Fatalf("no log line says the disk is full:\n%s", w.log)
	}
	// Space comes back: writes resume without anyone restarting Wharf.
	os.Remove(filler)
	if out, err := exec.Command("mount", "-o", "remount,size=256m", fsDir).CombinedOutput(); err != nil {
		t.Fatalf("remount larger: %v %s", err, out)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		d, status, err := pushRandom(c, w, "team/app", 1<<20)
		if err == nil && status == http.StatusCreated {
			acked[d] = "team/app"
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no push accepted within 30 s of space coming back: %d %v\n%s", status, err, w.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	verify("after space came back")
	alive("after space came back")
	t.Logf("disk-full campaign: %d blobs acknowledged and verified three times, %d mirror pulls, %d pushes refused with 507, 0 crashes",
		len(acked), pulled, refusedPush)
}

// checkNoPartial: no committed blob differs from its digest, and every
// ingest file belongs to a live upload session and is exactly as long as
// what was acknowledged for it.
func checkNoPartial(t *testing.T, data string, sessions map[string]int64) {
	t.Helper()
	filepath.WalkDir(filepath.Join(data, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if got, _ := digest.SHA256.FromReader(f); got.Encoded() != e.Name() {
			t.Fatalf("blob file %s holds %s", p, got)
		}
		return nil
	})
	entries, err := os.ReadDir(filepath.Join(data, "ingest"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		want, ok := sessions[e.Name()]
		info, _ := e.Info()
		if !ok || info.Size() != want {
			t.Fatalf("ingest file %s: %d bytes, session acknowledged %d (known %v)", e.Name(), info.Size(), want, ok)
		}
	}
	t.Logf("no partial file: %d ingest files, each as long as its acknowledged chunks", len(entries))
}

func isExited(w *wharfProc) (bool, error) {
	select {
	case err := <-w.done:
		w.done <- err
		return true, err
	default:
		return false, nil
	}
}

// TestFullDiskServesMirrored: with the filesystem full, cached mirrored
// images go on being served after their tag's TTL (the revalidation's
// bookkeeping write is skipped, not fatal), a tag that moved upstream is
// served as cached (the new manifest cannot be stored), and so is all of
// it after a restart on the full filesystem. Pushed content too.
func TestFullDiskServesMirrored(t *testing.T) {
	fsDir := smallFS(t, 64)
	data := filepath.Join(fsDir, "data")
	hub := fakehub.Start(t)
	for i := range 3 {
		hub.Push(fmt.Sprintf("library/keep%d", i), "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 2, LayerSize: 256 << 10, Seed: uint64(700 + i)})
	}
	args := []string{"--upstream", "docker.io=" + hub.URL, "--tag-ttl", "1s"}
	w := startWharf(t, data, args...)
	c := &http.Client{Timeout: time.Minute}
	for i := range 3 {
		if err := pullMirrored(c, w.url(""), fmt.Sprintf("library/keep%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	pushed := pushBytes(t, w, "team/app", []byte("pushed before the disk filled"))
	fillUp(t, filepath.Join(fsDir, "filler"))
	time.Sleep(6 * time.Second) // past the TTL, and a free-space check (every 5 s) has run
	// keep2 moved upstream: its new manifest cannot be stored.
	hub.Push("library/keep2", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 2, LayerSize: 256 << 10, Seed: 799})
	check := func(when string) {
		t.Helper()
		for round := range 2 {
			for i := range 3 {
				if err := pullMirrored(c, w.url(""), fmt.Sprintf("library/keep%d", i)); err != nil {
					t.Fatalf("%s, round %d: cached mirrored image keep%d: %v\n%s", when, round, i, err, w.log)
				}
			}
			time.Sleep(1100 * time.Millisecond) // past the TTL again
		}
		if got, err := blobDigest(c, w, "team/app", pushed); err != nil || got != pushed {
			t.Fatalf("%s: pushed blob: %s %v", when, got, err)
		}
	}
	check("disk full, tags past their TTL")
	if err := w.stop(t); err != nil {
		t.Fatalf("stop on a full filesystem: %v\n%s", err, w.log)
	}
	w = startWharf(t, data, args...)
	check("restarted on the full filesystem")
	if !strings.Contains(w.log.String(), "check time is kept in memory") {
		t.Errorf("after the restart on a full filesystem no revalidation hit the read-only index:\n%s", w.log)
	}
}
