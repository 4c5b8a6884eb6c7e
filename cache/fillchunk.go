package cache

import "sync/atomic"

// fillChunk is a piece of a fill's bytes as one read gathered them from
// upstream: written to the ingest file and hashed, then kept among the
// fill's recent chunks for the readers that keep up, who send it to their
// clients without copying it (FillReader.Next). Its bytes never change
// once written; refs counts the fill (while it is recent) and each reader
// holding it, and the last release returns it to the free list.
type fillChunk struct {
	b    []byte
	off  int64
	refs atomic.Int32
}

// fillChunkSize is a chunk's capacity: a download fills one per write
// (fillBatch). Every reader that keeps up holds one while its client's
// socket takes it, so its size is also that memory per client.
const fillChunkSize = fillBatch

// fillChunksFree keeps released chunks for the next reads. Unlike a
// sync.Pool it is not emptied by garbage collections, so a steady download
// allocates nothing and the heap does not swing by a chunk per read; at
// most its capacity (4 MiB) stays allocated after a burst.
var fillChunksFree = make(chan *fillChunk, 16)

// newFillChunk returns an empty chunk with one reference, its caller's.
func newFillChunk() *fillChunk {
	var c *fillChunk
	select {
	case c = <-fillChunksFree:
	default:
		c = &fillChunk{b: make([]byte, 0, fillChunkSize)}
	}
	c.b, c.off = c.b[:0], 0
	c.refs.Store(1)
	return c
}

func (c *fillChunk) release() {
	if c.refs.Add(-1) == 0 {
		select {
		case fillChunksFree <- c:
		default: // enough are kept: the collector has this one
		}
	}
}

// chunkLocked returns the recent chunk holding offset off, or nil.
func (f *fill) chunkLocked(off int64) *fillChunk {
	for _, c := range f.recent {
		if off >= c.off && off < c.off+int64(len(c.b)) {
			return c
		}
	}
	return nil
}
