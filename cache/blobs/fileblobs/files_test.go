package fileblobs

import (
	"errors"
	"testing"

	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/blobs/blobstest"
)

func open(t *testing.T) blobs.Blobs {
	f, err := New(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestConformance(t *testing.T) { blobstest.Run(t, open) }

// TestFullDiskConformance: the full-disk double behaves as the files it
// wraps while there is room, and refuses every write when full.
func TestFullDiskConformance(t *testing.T) {
	blobstest.Run(t, func(t *testing.T) blobs.Blobs { return &blobstest.FullDisk{Blobs: open(t)} })
	d := &blobstest.FullDisk{Blobs: open(t)}
	d.Full.Store(true)
	app, err := d.Append("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Write([]byte("no room")); !errors.Is(err, blobs.ErrStorageFull) {
		t.Fatalf("write on a full disk: %v", err)
	}
}

type refuse struct{}

func (refuse) BlobWrite(n int64) error { return blobs.ErrStorageFull }

// TestRoomRefuses: a write the free-space guard refuses fails and leaves
// the ingest as it was.
func TestRoomRefuses(t *testing.T) {
	f, err := New(t.TempDir(), Options{Room: refuse{}})
	if err != nil {
		t.Fatal(err)
	}
	app, err := f.Append("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Write([]byte("no room")); !errors.Is(err, blobs.ErrStorageFull) || app.Size() != 0 {
		t.Fatalf("refused write: %v, size %d", err, app.Size())
	}
}
