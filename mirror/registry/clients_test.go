package registry

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// chunks is a chunkSource over data: Next hands out pieces of it in place,
// Read copies; both are counted, and so are pieces not yet given back.
type chunks struct {
	data        []byte
	pos         int
	next, reads int
	held        int
}

func (c *chunks) Next() ([]byte, func(), error) {
	if c.pos == len(c.data) {
		return nil, nil, io.EOF
	}
	c.next++
	b := c.data[c.pos:min(c.pos+256<<10, len(c.data))]
	c.pos += len(b)
	c.held++
	return b, func() { c.held-- }, nil
}

func (c *chunks) Read(p []byte) (int, error) {
	if c.pos == len(c.data) {
		return 0, io.EOF
	}
	c.reads++
	n := copy(p, c.data[c.pos:])
	c.pos += n
	return n, nil
}

// slowFirst is a client whose first write waits longer than slowWrite.
type slowFirst struct {
	*httptest.ResponseRecorder
	writes int
	slow   bool
}

func (w *slowFirst) Write(p []byte) (int, error) {
	w.writes++
	if w.slow && w.writes == 1 {
		time.Sleep(slowWrite + 50*time.Millisecond)
	}
	return w.ResponseRecorder.Write(p)
}

// TestChunksToClient: a client that keeps up gets a download's chunks in
// place (no Read, no buffer); one whose write of a chunk waits goes on
// through the small copy buffer and holds no chunk; every chunk taken is
// given back, and the bytes arrive whole and in order either way.
func TestChunksToClient(t *testing.T) {
	reg := &Registry{opts: Options{ClientTimeout: time.Minute}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(i * 31)
	}
	for _, slow := range []bool{false, true} {
		src := &chunks{data: data}
		w := &slowFirst{ResponseRecorder: httptest.NewRecorder(), slow: slow}
		n, err := reg.copyToClient(w, &http.Request{}, src)
		if err != nil || n != int64(len(data)) || !bytes.Equal(w.Body.Bytes(), data) {
			t.Fatalf("slow %v: %d bytes, %v; the body matches: %v", slow, n, err, bytes.Equal(w.Body.Bytes(), data))
		}
		if src.held != 0 {
			t.Fatalf("slow %v: %d chunks never given back", slow, src.held)
		}
		switch {
		case !slow && (src.reads != 0 || src.next != 8):
			t.Fatalf("a client that keeps up: %d chunks in place, %d copied reads", src.next, src.reads)
		case slow && (src.next != 1 || src.reads == 0):
			t.Fatalf("a slow client: %d chunks in place (want only the first), %d copied reads", src.next, src.reads)
		}
	}
}
