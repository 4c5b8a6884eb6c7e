// Package blobstest is the conformance suite of blobs.Blobs, which every
// implementation runs, and FullDisk, a store whose writes fail on demand
// as a full filesystem's do.
package blobstest

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache/blobs"
)

// Run checks the contract the content store relies on. open returns a
// new, empty store.
func Run(t *testing.T, open func(t *testing.T) blobs.Blobs) {
	cases := []struct {
		name string
		fn   func(*testing.T, blobs.Blobs)
	}{
		{"Unknown", unknown},
		{"AppendReadWhileWriting", appendRead},
		{"Truncate", truncate},
		{"CommitIdempotent", commitTwice},
		{"ReadIngestAfterCommit", readAfterCommit},
		{"Discard", discard},
		{"Walk", walk},
		{"Delete", del},
		{"Quarantine", quarantine},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
}

// Commit writes data as ingest id and commits it.
func Commit(t *testing.T, b blobs.Blobs, id string, data []byte) digest.Digest {
	t.Helper()
	app, err := b.Append(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := app.Close(); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(data)
	if err := b.Commit(id, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// Read reads committed content d whole.
func Read(t *testing.T, b blobs.Blobs, d digest.Digest) ([]byte, error) {
	t.Helper()
	rc, n, err := b.Open(d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err == nil && int64(len(data)) != n {
		t.Errorf("Open(%s) said %d bytes, read %d", d, n, len(data))
	}
	return data, err
}

func unknown(t *testing.T, b blobs.Blobs) {
	d := digest.FromString("never stored")
	if _, _, err := b.Open(d); !errors.Is(err, blobs.ErrBlobUnknown) {
		t.Errorf("Open of unknown content: %v", err)
	}
	if _, err := b.Stat(d); !errors.Is(err, blobs.ErrBlobUnknown) {
		t.Errorf("Stat of unknown content: %v", err)
	}
	if _, _, err := b.Open("sha256:../../etc/passwd"); !errors.Is(err, blobs.ErrDigestInvalid) {
		t.Errorf("Open of a hostile digest: %v", err)
	}
	if err := b.Commit("x", "sha256:nothex"); !errors.Is(err, blobs.ErrDigestInvalid) {
		t.Errorf("Commit to a hostile digest: %v", err)
	}
	if _, err := b.Append("../escape"); err == nil {
		t.Errorf("an ingest id with a path was accepted")
	}
}

func appendRead(t *testing.T, b blobs.Blobs) {
	app, err := b.Append("up1")
	if err != nil {
		t.Fatal(err)
	}
	app.Write([]byte("hello "))
	r, err := b.ReadIngest("up1")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 6)
	if n, err := r.ReadAt(buf, 0); n != 6 || string(buf) != "hello " {
		t.Fatalf("read while writing: %q %v", buf[:n], err)
	}
	app.Write([]byte("world"))
	if app.Size() != 11 {
		t.Fatalf("Size after two writes: %d", app.Size())
	}
	buf = make([]byte, 5)
	if n, err := r.ReadAt(buf, 6); n != 5 || string(buf) != "world" {
		t.Fatalf("read of a later write: %q %v", buf[:n], err)
	}
	app.Close()
	// Reopened for appending, it goes on at the end.
	app, err = b.Append("up1")
	if err != nil {
		t.Fatal(err)
	}
	if app.Size() != 11 {
		t.Fatalf("Size when reopened: %d", app.Size())
	}
	app.Write([]byte("!"))
	app.Close()
	if ids, err := b.Ingests(); err != nil || !slices.Contains(ids, "up1") {
		t.Fatalf("Ingests: %v %v", ids, err)
	}
	d := digest.FromString("hello world!")
	if err := b.Commit("up1", d); err != nil {
		t.Fatal(err)
	}
	if data, err := Read(t, b, d); err != nil || string(data) != "hello world!" {
		t.Fatalf("committed: %q %v", data, err)
	}
	if n, err := b.Stat(d); err != nil || n != 12 {
		t.Fatalf("Stat: %d %v", n, err)
	}
	if ids, _ := b.Ingests(); slices.Contains(ids, "up1") {
		t.Fatalf("a committed ingest is still listed: %v", ids)
	}
}

func truncate(t *testing.T, b blobs.Blobs) {
	app, err := b.Append("tr")
	if err != nil {
		t.Fatal(err)
	}
	app.Write([]byte("keep-this-not-this"))
	if err := app.Truncate(9); err != nil {
		t.Fatal(err)
	}
	if err := app.Truncate(100); err != nil || app.Size() != 9 {
		t.Fatalf("Truncate never lengthens: size %d, %v", app.Size(), err)
	}
	app.Write([]byte("+more"))
	app.Close()
	d := digest.FromString("keep-this+more")
	if err := b.Commit("tr", d); err != nil {
		t.Fatal(err)
	}
	if data, _ := Read(t, b, d); string(data) != "keep-this+more" {
		t.Fatalf("after truncate: %q", data)
	}
}

func commitTwice(t *testing.T, b blobs.Blobs) {
	data := []byte("the same content twice")
	d := Commit(t, b, "first", data)
	d2 := Commit(t, b, "second", data)
	if d != d2 {
		t.Fatal("digests differ")
	}
	if ids, _ := b.Ingests(); slices.Contains(ids, "second") {
		t.Fatalf("the ingest of content already present was kept: %v", ids)
	}
	if got, err := Read(t, b, d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after a second commit: %q %v", got, err)
	}
}

func readAfterCommit(t *testing.T, b blobs.Blobs) {
	app, err := b.Append("rc")
	if err != nil {
		t.Fatal(err)
	}
	app.Write([]byte("read on after commit"))
	app.Close()
	r, err := b.ReadIngest("rc")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := b.Commit("rc", digest.FromString("read on after commit")); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || string(got) != "read on after commit" {
		t.Fatalf("an ingest handle after commit: %q %v", got, err)
	}
}

func discard(t *testing.T, b blobs.Blobs) {
	app, err := b.Append("gone")
	if err != nil {
		t.Fatal(err)
	}
	app.Write([]byte("not wanted"))
	app.Close()
	if err := b.Discard("gone"); err != nil {
		t.Fatal(err)
	}
	if ids, _ := b.Ingests(); slices.Contains(ids, "gone") {
		t.Fatalf("a discarded ingest is listed: %v", ids)
	}
	if err := b.Discard("gone"); err != nil {
		t.Fatalf("discarding a missing ingest: %v", err)
	}
	if _, err := b.Stat(digest.FromString("not wanted")); !errors.Is(err, blobs.ErrBlobUnknown) {
		t.Fatalf("discarded content is visible: %v", err)
	}
}

func walk(t *testing.T, b blobs.Blobs) {
	want := map[digest.Digest]int64{}
	for _, s := range []string{"one", "two two", "three three three"} {
		want[Commit(t, b, "w-"+s[:3], []byte(s))] = int64(len(s))
	}
	got := map[digest.Digest]int64{}
	if err := b.Walk(func(i blobs.BlobInfo) error {
		if i.Digest != "" {
			got[i.Digest] = i.Size
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for d, n := range want {
		if got[d] != n {
			t.Errorf("Walk: %s has %d bytes, want %d", d, got[d], n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("Walk listed %d, want %d", len(got), len(want))
	}
	stop := errors.New("stop")
	if err := b.Walk(func(blobs.BlobInfo) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Walk's function error: %v", err)
	}
}

func del(t *testing.T, b blobs.Blobs) {
	d := Commit(t, b, "del", []byte("to delete"))
	if err := b.Delete(d); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(d); !errors.Is(err, blobs.ErrBlobUnknown) {
		t.Fatalf("deleted content: %v", err)
	}
	if err := b.Delete(d); err != nil {
		t.Fatalf("deleting missing content: %v", err)
	}
	// Content committed again after a delete is back.
	Commit(t, b, "del2", []byte("to delete"))
	if _, err := b.Stat(d); err != nil {
		t.Fatalf("committed again: %v", err)
	}
}

func quarantine(t *testing.T, b blobs.Blobs) {
	d := Commit(t, b, "q", []byte("suspect"))
	if err := b.Quarantine(d); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(d); !errors.Is(err, blobs.ErrBlobUnknown) {
		t.Fatalf("quarantined content still opens: %v", err)
	}
	var listed bool
	b.Walk(func(i blobs.BlobInfo) error {
		listed = listed || i.Digest == d
		return nil
	})
	if listed {
		t.Fatal("Walk lists quarantined content")
	}
}
