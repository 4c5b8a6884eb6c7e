package blobstest

import (
	"fmt"
	"sync/atomic"

	"github.com/wharf-registry/wharf/cache/blobs"
)

// FullDisk is a store of blobs with a switch that makes every write fail
// as a full filesystem does.
type FullDisk struct {
	blobs.Blobs
	Full atomic.Bool
}

var _ blobs.Blobs = (*FullDisk)(nil)

func (f *FullDisk) Append(id string) (blobs.Appender, error) {
	a, err := f.Blobs.Append(id)
	if err != nil {
		return nil, err
	}
	return fullAppender{a, f}, nil
}

type fullAppender struct {
	blobs.Appender
	d *FullDisk
}

func (a fullAppender) Write(p []byte) (int, error) {
	if a.d.Full.Load() {
		return 0, fmt.Errorf("%w: write: no space left on device (injected)", blobs.ErrStorageFull)
	}
	return a.Appender.Write(p)
}
