package badgerindex

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/wharf-registry/wharf/cache/index"
	"github.com/wharf-registry/wharf/cache/index/indextest"
)

func TestConformance(t *testing.T) {
	indextest.Run(t, func(t *testing.T) index.Index {
		ix, err := Open(filepath.Join(t.TempDir(), "index"), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return ix
	})
}
