package registry

import (
	"net/http"
	"testing"
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
