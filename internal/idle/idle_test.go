package idle

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

var errKind = errors.New("stalled")

// TestBody: a body that delivers is read whole; one that stops is closed
// after the idle time, its Read fails with the kind given, and the
// callback runs before the close.
func TestBody(t *testing.T) {
	got, err := io.ReadAll(Body(io.NopCloser(strings.NewReader("all of it")), time.Second, errKind, nil))
	if err != nil || string(got) != "all of it" {
		t.Fatalf("a body that delivers: %q %v", got, err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	calledBeforeClose := make(chan bool, 1)
	closed := false
	rc := &closer{Reader: pr, close: func() { closed = true; pr.CloseWithError(errors.New("closed")) }}
	b := Body(rc, 50*time.Millisecond, errKind, func() { calledBeforeClose <- !closed })
	start := time.Now()
	_, err = b.Read(make([]byte, 8))
	if !errors.Is(err, errKind) || time.Since(start) > 5*time.Second {
		t.Fatalf("a stalled body: %v after %s", err, time.Since(start))
	}
	if !<-calledBeforeClose {
		t.Fatal("the callback ran after the body was closed")
	}
}

type closer struct {
	io.Reader
	close func()
}

func (c *closer) Close() error { c.close(); return nil }
