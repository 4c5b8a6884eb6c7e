package e2e

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestSIGTERMFinishesInFlight sends SIGTERM while a blob upload is still
// streaming: the upload completes, the process exits 0 having closed the
// index, and after a restart the blob is there.
func TestSIGTERMFinishesInFlight(t *testing.T) {
	data := t.TempDir()
	w := startWharf(t, data, "--mirror=false")
	blob := make([]byte, 4<<20)
	rand.Read(blob)
	d := digest.FromBytes(blob)

	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, w.url("/v2/shut/down/blobs/uploads/?digest="+d.String()), pr)
	req.ContentLength = int64(len(blob))
	result := make(chan *http.Response, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			errc <- err
			return
		}
		resp.Body.Close()
		result <- resp
	}()
	half := len(blob) / 2
	if _, err := pw.Write(blob[:half]); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- w.stop(t) }()
	time.Sleep(300 * time.Millisecond) // SIGTERM is delivered while the body is half sent
	// New connections are refused once shutdown began.
	if resp, err := http.Get(w.url("/v2/")); err == nil {
		resp.Body.Close()
		t.Fatalf("a new request was served after SIGTERM: %s", resp.Status)
	}
	if _, err := io.Copy(pw, bytes.NewReader(blob[half:])); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	select {
	case resp := <-result:
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("in-flight upload after SIGTERM: %s", resp.Status)
		}
	case err := <-errc:
		t.Fatalf("in-flight upload was cut by SIGTERM: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("in-flight upload did not finish")
	}
	if err := <-stopped; err != nil {
		t.Fatalf("wharf exited with %v after SIGTERM\n%s", err, w.log)
	}

	w = startWharf(t, data, "--mirror=false")
	resp, err := http.Get(w.url("/v2/shut/down/blobs/" + d.String()))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := digest.FromReader(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || got != d {
		t.Fatalf("blob uploaded during shutdown: %s, content %s", resp.Status, got)
	}
}
