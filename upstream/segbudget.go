package upstream

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"syscall"
)

// segBudget hands out segment buffers, at most n of them at a time, to
// the first blob in line that wants one. The buffers are mapped from the kernel
// and unmapped as soon as no blob wants them: a slow pull's 16 MiB must
// not stay in the process after it (the Go heap would keep it resident).
type segBudget struct {
	size int

	mu     sync.Mutex
	n      int          // buffers that may still be handed out
	wait   []*segmented // blobs waiting for a buffer, first in line first
	active []segKey     // the large blobs being read, first in line first
	seq    uint64       // the latest blob's
}

// segKey is a large blob's place in line for segments: by its order
// (WithOrder: where clients will read it, a manifest's layer index), then
// by when it began.
type segKey struct {
	order int
	seq   uint64
}

func (k segKey) compare(o segKey) int {
	if c := cmp.Compare(k.order, o.order); c != 0 {
		return c
	}
	return cmp.Compare(k.seq, o.seq)
}

type orderKey struct{}

// WithOrder tells the blob reads under ctx where clients will read them:
// a manifest's layers are read in order (dockerd 3 at a time, skopeo one),
// so of blobs downloading at once, the lower order gets segments first.
// Without it a read's order is 0: a client's own request comes first.
func WithOrder(ctx context.Context, order int) context.Context {
	return context.WithValue(ctx, orderKey{}, order)
}

// OrderOf is the order WithOrder gave ctx, 0 without.
func OrderOf(ctx context.Context) int {
	n, _ := ctx.Value(orderKey{}).(int)
	return n
}

// splitAhead is how many large blobs ahead in line may still be
// downloading for a blob to be split: clients read an image's layers in
// order, a few at a time (dockerd 3), so the first in line are the ones
// they wait for next; the others would only multiply upstream requests.
const splitAhead = 3

// begin puts a large blob being read in line.
func (b *segBudget) begin(order int) segKey {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	k := segKey{order, b.seq}
	i, _ := slices.BinarySearchFunc(b.active, k, segKey.compare)
	b.active = slices.Insert(b.active, i, k)
	return k
}

func (b *segBudget) ended(k segKey) {
	b.mu.Lock()
	b.active = slices.DeleteFunc(b.active, func(a segKey) bool { return a == k })
	b.mu.Unlock()
}

// ahead is how many large blobs before k in line are still read.
func (b *segBudget) ahead(k segKey) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, _ := slices.BinarySearchFunc(b.active, k, segKey.compare)
	return i
}

func newSegBudget(size int, n int) *segBudget {
	return &segBudget{size: size, n: n}
}

// alloc maps a buffer (nil when the kernel refuses: no segment then).
func (b *segBudget) alloc() []byte {
	buf, err := syscall.Mmap(-1, 0, b.size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil
	}
	return buf
}

// take returns a buffer for s, or nil; then s is queued, in line, and
// offered the next buffer put back (grant).
func (b *segBudget) take(s *segmented) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n > 0 {
		if buf := b.alloc(); buf != nil {
			b.n--
			return buf
		}
		return nil
	}
	if !slices.Contains(b.wait, s) {
		i, _ := slices.BinarySearchFunc(b.wait, s.key, func(w *segmented, k segKey) int { return w.key.compare(k) })
		b.wait = slices.Insert(b.wait, i, s)
	}
	return nil
}

// put gives buf back: to the first waiting blob in line that still wants it, or
// to the pool. Never call it holding a segmented's lock.
func (b *segBudget) put(buf []byte) {
	for {
		b.mu.Lock()
		if len(b.wait) == 0 {
			b.n++
			b.mu.Unlock()
			syscall.Munmap(buf)
			return
		}
		w := b.wait[0]
		b.wait = b.wait[1:]
		b.mu.Unlock()
		if w.grant(buf) {
			return
		}
	}
}

// forget drops s from the queue.
func (b *segBudget) forget(s *segmented) {
	b.mu.Lock()
	b.wait = slices.DeleteFunc(b.wait, func(w *segmented) bool { return w == s })
	b.mu.Unlock()
}
