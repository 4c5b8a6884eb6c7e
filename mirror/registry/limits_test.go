package registry

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestUploadSlotParking: a parked slot stops counting toward the overall
// limit, so another client's upload is admitted, but not toward its own
// client's; unparking counts it again even over the limit; release after
// parking does not count it twice.
func TestUploadSlotParking(t *testing.T) {
	l := &uploadLimiter{total: 1, perClient: 1, byClient: map[string]int{}}
	r := &http.Request{RemoteAddr: "127.0.0.9:1234"}
	other := &http.Request{RemoteAddr: "127.0.0.10:1234"}
	a, err := l.acquire(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquire(other); err == nil {
		t.Fatal("a second upload admitted over the overall limit")
	}
	a.park()
	if _, err := l.acquire(r); err == nil {
		t.Fatal("a client's parked upload let the same client over its own limit")
	}
	b, err := l.acquire(other)
	if err != nil {
		t.Fatalf("upload refused while the only other one is parked: %v", err)
	}
	a.unpark()
	if l.running != 2 {
		t.Fatalf("running %d after unpark, want 2", l.running)
	}
	a.park()
	a.release()
	b.release()
	a.release()
	if l.running != 0 || len(l.byClient) != 0 {
		t.Fatalf("after release: running %d, by client %v", l.running, l.byClient)
	}
}

// slowBody answers each Read after its delay, with one byte.
type slowBody struct{ delay time.Duration }

func (s *slowBody) Read(p []byte) (int, error) {
	time.Sleep(s.delay)
	p[0] = 1
	return 1, nil
}
func (s *slowBody) Close() error { return nil }

// TestTrickleStaysParked: an upload body whose reads each wait past
// parkAfter stays parked when its bytes arrive (64 tricklers sending in
// step counted all at once and refused everyone else's uploads, 1 s in 5);
// a read that comes quickly counts it again.
func TestTrickleStaysParked(t *testing.T) {
	l := &uploadLimiter{total: 1, byClient: map[string]int{}}
	slot, err := l.acquire(&http.Request{RemoteAddr: "127.0.0.9:1234"})
	if err != nil {
		t.Fatal(err)
	}
	body := &slowBody{delay: parkAfter + 100*time.Millisecond}
	b := &bodyReader{rc: body, ctl: http.NewResponseController(httptest.NewRecorder()), timeout: time.Minute,
		slot: slot, log: slog.New(slog.DiscardHandler)}
	buf := make([]byte, 8)
	for i := 0; i < 2; i++ {
		if _, err := b.Read(buf); err != nil {
			t.Fatal(err)
		}
		probe, err := l.acquire(&http.Request{RemoteAddr: "127.0.0.10:1234"})
		if err != nil {
			t.Fatalf("slow read %d: the trickle's slot counted again as its byte arrived: %v", i, err)
		}
		probe.release()
	}
	body.delay = 0
	if _, err := b.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquire(&http.Request{RemoteAddr: "127.0.0.10:1234"}); err == nil {
		t.Fatal("a quick read left the slot parked: a fast upload does not count toward the limit")
	}
}
