package upstream

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

func newSegmentClient(t *testing.T, hub *fakehub.Hub, opts Options) *Client {
	t.Helper()
	opts.Registries = []Registry{{Name: "docker.io", Endpoint: hub.URL}}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if opts.SegmentSize == 0 {
		opts.SegmentSize = 1 << 20
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func pushLayer(t *testing.T, hub *fakehub.Hub, repo string, size int, seed uint64) digest.Digest {
	t.Helper()
	img := hub.Push(repo, "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: size, Seed: seed})
	return img.Blobs[0]
}

func readBlob(t *testing.T, c *Client, repo string, d digest.Digest) []byte {
	t.Helper()
	rc, size, err := c.Blob(context.Background(), "docker.io", repo, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	all, err := io.ReadAll(rc)
	if err != nil || int64(len(all)) != size || digest.FromBytes(all) != d {
		t.Fatalf("%s: %d bytes of %d, %v (digest ok: %v)", d, len(all), size, err, digest.FromBytes(all) == d)
	}
	return all
}

// TestSlowBlobInSegments: a large blob whose connection is slow is fetched
// over several connections at once, through the registry's redirect to
// its CDN, and arrives whole and in order; the first response is cut at a
// segment boundary without much more than that boundary sent.
func TestSlowBlobInSegments(t *testing.T) {
	hub := fakehub.Start(t)
	hub.SetRedirect(true)
	const size = 10 << 20
	layer := pushLayer(t, hub, "library/slow", size, 1)
	hub.SetBandwidth(8 << 20)
	c := newSegmentClient(t, hub, Options{SplitAlways: true})
	before := hub.Count("bytes")
	readBlob(t, c, "library/slow", layer)
	if at := hub.Count("blob GETs at once"); at < 3 {
		t.Errorf("at most %d blob GETs at once; want the segments in parallel", at)
	}
	if n := hub.Count("GET range"); n < 5 {
		t.Errorf("%d ranged GETs for a 10 MiB blob in 1 MiB segments", n)
	}
	if sent := hub.Count("bytes") - before; sent > size+1<<20 {
		t.Errorf("hub sent %d bytes for a %d-byte blob", sent, size)
	}
	if hub.Count("HEAD blob") != 0 {
		t.Errorf("%d blob HEADs", hub.Count("HEAD blob"))
	}
	// The segments went straight to the URL the registry redirected to.
	if reg, cdn := hub.Count("GET blob "+layer.String()), hub.Count("GET cdn"); reg != 1 || cdn < 6 {
		t.Errorf("registry saw %d GETs of the blob, the CDN %d", reg, cdn)
	}
}

// TestSegmentsAfterExpiry: once the signed URL the registry redirected to
// has expired, the segments go through the registry again (a new
// redirect), and the blob arrives whole.
func TestSegmentsAfterExpiry(t *testing.T) {
	hub := fakehub.Start(t)
	hub.SetRedirect(true)
	hub.SetCDNTTL(150 * time.Millisecond)
	layer := pushLayer(t, hub, "library/expiring", 10<<20, 6)
	hub.SetBandwidth(8 << 20)
	c := newSegmentClient(t, hub, Options{SplitAlways: true})
	readBlob(t, c, "library/expiring", layer)
	if hub.Count("GET cdn expired") == 0 || hub.Count("GET blob "+layer.String()) < 2 {
		t.Fatalf("%d expired CDN GETs, %d registry GETs of the blob", hub.Count("GET cdn expired"), hub.Count("GET blob "+layer.String()))
	}
}

// TestFastBlobNotSplit: on a connection faster than SplitBelow a blob
// costs one GET.
func TestFastBlobNotSplit(t *testing.T) {
	hub := fakehub.Start(t)
	layer := pushLayer(t, hub, "library/fast", 24<<20, 2)
	hub.SetBandwidth(32 << 20)
	c := newSegmentClient(t, hub, Options{SplitBelow: 8 << 20})
	readBlob(t, c, "library/fast", layer)
	if hub.Count("GET blob") != 1 || hub.Count("GET range") != 0 {
		t.Fatalf("fast blob: %d GETs, %d ranged", hub.Count("GET blob"), hub.Count("GET range"))
	}
}

// TestSegmentsNeedRanges: a registry that ignores Range is read on one
// connection, slow or not; so is every blob when segments are off.
func TestSegmentsNeedRanges(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noRanges bool
		segments int
	}{{"registry without ranges", true, 0}, {"segments off", false, -1}} {
		hub := fakehub.Start(t)
		layer := pushLayer(t, hub, "library/plain", 6<<20, 3)
		hub.SetNoRanges(tc.noRanges)
		hub.SetBandwidth(16 << 20)
		c := newSegmentClient(t, hub, Options{Segments: tc.segments})
		readBlob(t, c, "library/plain", layer)
		if hub.Count("GET blob") != 1 || hub.Count("blob GETs at once") != 1 {
			t.Fatalf("%s: %d GETs, %d at once", tc.name, hub.Count("GET blob"), hub.Count("blob GETs at once"))
		}
	}
}

// TestSegmentDropped: a segment whose connection drops mid-way is
// finished by the reader itself from where it broke; the bytes are exact.
func TestSegmentDropped(t *testing.T) {
	hub := fakehub.Start(t)
	const size = 8 << 20
	layer := pushLayer(t, hub, "library/flaky", size, 4)
	hub.SetBandwidth(8 << 20)
	hub.DropAt(layer, 5<<20+12345) // inside a segment, not the first response
	c := newSegmentClient(t, hub, Options{SplitAlways: true})
	readBlob(t, c, "library/flaky", layer)
	if hub.Count("GET range") < 4 {
		t.Fatalf("%d ranged GETs", hub.Count("GET range"))
	}
}

// TestSegmentMemoryBounded: three slow blobs at once share the segment
// buffers: never more than SegmentMemory of them, all blobs exact, and
// every buffer is back once they are read.
func TestSegmentMemoryBounded(t *testing.T) {
	hub := fakehub.Start(t)
	hub.SetBandwidth(8 << 20)
	var layers []digest.Digest
	for i := range 3 {
		layers = append(layers, pushLayer(t, hub, "library/many", 6<<20, uint64(10+i)))
	}
	c := newSegmentClient(t, hub, Options{SplitAlways: true, SegmentMemory: 2 << 20})
	var peak int
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			c.segments.mu.Lock()
			peak = max(peak, 2-c.segments.n)
			c.segments.mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for _, d := range layers {
		wg.Add(1)
		go func() { defer wg.Done(); readBlob(t, c, "library/many", d) }()
	}
	wg.Wait()
	close(stop)
	<-watched
	c.segments.mu.Lock()
	free, waiting := c.segments.n, len(c.segments.wait)
	c.segments.mu.Unlock()
	if peak == 0 || peak > 2 || free != 2 || waiting != 0 {
		t.Fatalf("buffers: peak %d of 2, %d free after, %d blobs still waiting", peak, free, waiting)
	}
	if hub.Count("GET range") == 0 {
		t.Fatal("no segments fetched")
	}
}

// TestSegmentedCloseEarly: a reader closed half-way (the fill failed or
// was cancelled) stops its helpers and gives every buffer back.
func TestSegmentedCloseEarly(t *testing.T) {
	hub := fakehub.Start(t)
	layer := pushLayer(t, hub, "library/half", 12<<20, 5)
	hub.SetBandwidth(8 << 20)
	c := newSegmentClient(t, hub, Options{SplitAlways: true})
	rc, _, err := c.Blob(context.Background(), "docker.io", "library/half", layer, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, rc, 3<<20); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.segments.mu.Lock()
		free := c.segments.n
		c.segments.mu.Unlock()
		if free == 16 && c.sem.TryAcquire(32) {
			c.sem.Release(32)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after close: %d of 16 buffers back, connection slots not all free", free)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOldestBlobsSplit: of six slow blobs opened in order, only the three
// oldest may be split (clients read layers in order, a few at a time); the
// younger ones cost one GET each.
func TestOldestBlobsSplit(t *testing.T) {
	// All of order 0: their place in line is when they began.
	sixInLine(t, "library/wide", 20, func(i int) int { return 0 }, func(i int) int { return i })
}

// TestOrderedBlobsSplit: six slow blobs opened in the reverse of their
// order (WithOrder: where clients will read them): the three first in
// order are the ones split, whatever order their responses came in.
func TestOrderedBlobsSplit(t *testing.T) {
	last := func(i int) int { return 5 - i } // the last opened is the first in order
	sixInLine(t, "library/ordered", 40, last, last)
}

// sixInLine opens six slow 5 MiB blobs of repo one after the other, the
// i-th with WithOrder(order(i)), reads them all at once, and checks that
// only the first splitAhead in line (place(i)) were split, at least one
// of them.
func sixInLine(t *testing.T, repo string, seed uint64, order, place func(i int) int) {
	t.Helper()
	hub := fakehub.Start(t)
	hub.SetBandwidth(8 << 20)
	c := newSegmentClient(t, hub, Options{SplitAlways: true})
	var readers []io.ReadCloser
	var layers []digest.Digest
	for i := range 6 {
		layers = append(layers, pushLayer(t, hub, repo, 5<<20, seed+uint64(i)))
	}
	for i, d := range layers { // opened in turn, then read at once
		rc, _, err := c.Blob(WithOrder(context.Background(), order(i)), "docker.io", repo, d, 0)
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, rc)
	}
	var wg sync.WaitGroup
	for i, rc := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rc.Close()
			all, err := io.ReadAll(rc)
			if err != nil || digest.FromBytes(all) != layers[i] {
				t.Errorf("blob %d: %d bytes, %v", i, len(all), err)
			}
		}()
	}
	wg.Wait()
	split := 0
	for i, d := range layers {
		gets := hub.Count("GET blob " + d.String())
		if place(i) >= splitAhead && gets != 1 {
			t.Errorf("blob opened %d of 6, %d in line (behind %d others): %d GETs, want 1", i+1, place(i)+1, splitAhead, gets)
		}
		if place(i) < splitAhead && gets > 1 {
			split++
		}
	}
	if split == 0 {
		t.Errorf("none of the first %d in line was split", splitAhead)
	}
}

// TestSlowReaderNotSplit: a blob that arrives slowly because its reader is
// slow (a busy CPU or disk: the bytes wait in the socket, not on the
// network) is not split; more connections would not help it.
func TestSlowReaderNotSplit(t *testing.T) {
	hub := fakehub.Start(t)
	layer := pushLayer(t, hub, "library/cpu", 6<<20, 30)
	c := newSegmentClient(t, hub, Options{})
	rc, _, err := c.Blob(context.Background(), "docker.io", "library/cpu", layer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := digest.Canonical.Digester()
	buf := make([]byte, 64<<10)
	for {
		n, err := rc.Read(buf)
		h.Hash().Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // ~12 MiB/s at most, under SplitBelow
	}
	if h.Digest() != layer {
		t.Fatal("wrong bytes")
	}
	if hub.Count("GET range") != 0 || hub.Count("GET blob") != 1 {
		t.Fatalf("slow reader: %d GETs, %d ranged", hub.Count("GET blob"), hub.Count("GET range"))
	}
}

// TestSplitRule: the rule decide applies to what it measured. A slow
// connection the reader waits on is split; a fast one (lately or since
// its start) or one whose reader is busy is not.
func TestSplitRule(t *testing.T) {
	c := newSegmentClient(t, fakehub.Start(t), Options{SplitBelow: 32 << 20})
	for _, tc := range []struct {
		m    linkMeasure
		want bool
	}{
		{linkMeasure{Rate: 8 << 20, Overall: 8 << 20, Waited: 0.95}, true},
		{linkMeasure{Rate: 8 << 20, Overall: 8 << 20, Waited: 0.7}, true},
		{linkMeasure{Rate: 8 << 20, Overall: 8 << 20, Waited: 0.69}, false}, // the reader is busy
		{linkMeasure{Rate: 64 << 20, Overall: 8 << 20, Waited: 0.95}, false},
		{linkMeasure{Rate: 8 << 20, Overall: 40 << 20, Waited: 0.95}, false}, // fast until a moment ago
		{linkMeasure{Rate: 32 << 20, Overall: 8 << 20, Waited: 0.95}, false},
	} {
		if got := c.slowLink(tc.m); got != tc.want {
			t.Errorf("%+v: split %v, want %v", tc.m, got, tc.want)
		}
	}
	always := newSegmentClient(t, fakehub.Start(t), Options{SplitAlways: true})
	if !always.slowLink(linkMeasure{Rate: 1 << 30, Overall: 1 << 30}) {
		t.Error("SplitAlways: a fast link was not split")
	}
}

// TestSplitMeasure: what decide measures of a connection capped at
// 1 MiB/s, read by a reader that does nothing else: at most the cap
// (a slower machine only lowers it), and mostly waiting. (The figures
// are bounded from the side a loaded machine cannot cross.)
func TestSplitMeasure(t *testing.T) {
	hub := fakehub.Start(t)
	layer := pushLayer(t, hub, "library/measured", 4<<20, 40)
	hub.SetBandwidth(1 << 20)
	c := newSegmentClient(t, hub, Options{})
	rc, _, err := c.Blob(context.Background(), "docker.io", "library/measured", layer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	seg, ok := rc.(*slotReader).ReadCloser.(*segmented)
	if !ok {
		t.Fatalf("a 4 MiB blob from a registry that serves ranges is read through %T", rc.(*slotReader).ReadCloser)
	}
	buf := make([]byte, 32<<10)
	for seg.probe >= 0 && seg.pos < splitProbe*3 {
		if _, err := rc.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if seg.probe >= 0 {
		t.Fatalf("no decision after %d bytes", seg.pos)
	}
	m := seg.measured
	if m.Rate <= 0 || m.Rate > 1.5*(1<<20) || m.Overall > 1.5*(1<<20) {
		t.Errorf("measured %.0f B/s lately, %.0f overall on a 1 MiB/s link", m.Rate, m.Overall)
	}
	if m.Waited < 0.5 {
		t.Errorf("a reader doing nothing else waited %.0f%% of the window", 100*m.Waited)
	}
}

func TestContentRange(t *testing.T) {
	for h, want := range map[string][3]int64{
		"bytes 0-9/10":                   {0, 9, 10},
		" bytes 5-9/* ":                  {5, 9, -1},
		"bytes 2097152-4194303/20974684": {2097152, 4194303, 20974684},
	} {
		a, b, n, ok := contentRange(h)
		if !ok || [3]int64{a, b, n} != want {
			t.Errorf("%q: %d %d %d %v", h, a, b, n, ok)
		}
	}
	for _, h := range []string{"", "bytes 9-0/10", "bytes 0-9/9", "bytes -1-3/10", "0-9/10", "bytes 0-9", "bytes 0-9/x"} {
		if _, _, _, ok := contentRange(h); ok {
			t.Errorf("%q accepted", h)
		}
	}
}

// TestSplitBacksOff: when the registry's blobs share one bottleneck (its
// total bandwidth is capped, not each connection's), a split brings
// nothing: the next blob is fetched on one connection, and splitting
// resumes after the rest. Where each connection is capped, splits help
// and every slow blob is split.
func TestSplitBacksOff(t *testing.T) {
	hub := fakehub.Start(t)
	first := pushLayer(t, hub, "library/shared", 4<<20, 51)
	second := pushLayer(t, hub, "library/shared2", 4<<20, 52)
	hub.SetTotalBandwidth(2 << 20) // slow enough to be split on a loaded machine too
	c := newSegmentClient(t, hub, Options{SplitBelow: 32 << 20})
	readBlob(t, c, "library/shared", first)
	if hub.Count("GET range") == 0 {
		t.Fatal("a blob arriving at 2 MiB/s was not split")
	}
	hub.ResetCounts()
	readBlob(t, c, "library/shared2", second)
	if n := hub.Count("GET range"); n != 0 {
		t.Fatalf("split again (%d ranged GETs) right after a split that brought nothing", n)
	}
	r := c.regs["docker.io"]
	if now := time.Now(); c.splitsHelp(r, now) || !c.splitsHelp(r, now.Add(splitRestMin+time.Second)) {
		t.Fatalf("resting: now %v, after %s %v", c.splitsHelp(r, now), splitRestMin, c.splitsHelp(r, now.Add(splitRestMin+time.Second)))
	}

	capped := fakehub.Start(t)
	a := pushLayer(t, capped, "library/capped", 4<<20, 53)
	b := pushLayer(t, capped, "library/capped2", 4<<20, 54)
	capped.SetBandwidth(2 << 20)
	cc := newSegmentClient(t, capped, Options{SplitBelow: 32 << 20})
	readBlob(t, cc, "library/capped", a)
	n := capped.Count("GET range")
	readBlob(t, cc, "library/capped2", b)
	if n == 0 || capped.Count("GET range") == n {
		t.Fatalf("per-connection cap: %d ranged GETs for the first blob, %d for the second", n, capped.Count("GET range")-n)
	}
}
