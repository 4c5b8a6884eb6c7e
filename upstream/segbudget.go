package upstream

import (
	"cmp"
	"slices"
	"sync"
	"syscall"
)

// segBudget hands out segment buffers, at most n of them at a time, to
// the oldest blob that wants one. The buffers are mapped from the kernel
// and unmapped as soon as no blob wants them: a slow pull's 16 MiB must
// not stay in the process after it (the Go heap would keep it resident).
type segBudget struct {
	size int

	mu     sync.Mutex
	n      int          // buffers that may still be handed out
	wait   []*segmented // blobs waiting for a buffer, oldest first
	active []uint64     // seq of the large blobs being read, oldest first
	seq    uint64       // the latest blob's
}

// splitAhead is how many older large blobs may still be downloading for a
// blob to be split: clients read an image's layers in order, a few at a
// time (dockerd 3), so the oldest downloads are the ones they wait for
// next; the younger ones would only multiply upstream requests.
const splitAhead = 3

// begin numbers a large blob being read, in the order they began.
func (b *segBudget) begin() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	b.active = append(b.active, b.seq) // seqs only grow: active stays sorted
	return b.seq
}

func (b *segBudget) ended(seq uint64) {
	b.mu.Lock()
	b.active = slices.DeleteFunc(b.active, func(a uint64) bool { return a == seq })
	b.mu.Unlock()
}

// older is how many large blobs that started before seq are still read.
func (b *segBudget) older(seq uint64) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	i, _ := slices.BinarySearch(b.active, seq)
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

// take returns a buffer for s, or nil; then s is queued and offered the
// next buffer put back (grant).
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
		i, _ := slices.BinarySearchFunc(b.wait, s.seq, func(w *segmented, seq uint64) int { return cmp.Compare(w.seq, seq) })
		b.wait = slices.Insert(b.wait, i, s)
	}
	return nil
}

// put gives buf back: to the oldest waiting blob that still wants it, or
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
