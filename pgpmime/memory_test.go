package pgpmime_test

import (
	"bytes"
	"io"
	"runtime"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/pgpmime"
)

// heapWatch records the largest live heap, measured after a collection, at
// every MiB of data: what the seal, a copy and OpenBody keep, as opposed to
// the garbage they leave (OpenBody, through go-crypto's reader, allocates per read).
type heapWatch struct {
	base, peak uint64
	next, n    int64
}

func newHeapWatch() *heapWatch {
	w := &heapWatch{next: 1 << 20}
	w.base = liveHeap()
	return w
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func (w *heapWatch) add(n int) {
	w.n += int64(n)
	if w.n >= w.next {
		w.next += 1 << 20
		if h := liveHeap(); h > w.base && h-w.base > w.peak {
			w.peak = h - w.base
		}
	}
}

// watchedWriter discards what it is written, measuring as it goes.
type watchedWriter struct{ w *heapWatch }

func (d watchedWriter) Write(p []byte) (int, error) { d.w.add(len(p)); return len(p), nil }

// TestBoundedMemory streams 32 MiB through the seal, a live copy, a copy
// from the ciphertext and OpenBody, and checks that the live heap never grows
// by more than a small constant: nothing holds the message.
func TestBoundedMemory(t *testing.T) {
	const size = 32 << 20
	const limit = 2 << 20
	key := pgptest.GoKey(t, "go", pgptest.Curve25519).EncryptionKey(t)
	h := headerOf(t, []byte("From: a@example.test\r\nSubject: big\r\nContent-Type: application/octet-stream\r\n\r\n"))
	chunk := bytes.Repeat([]byte{0x5a, 0xa5, 0x0f, 0xf0}, 8<<10)
	// The ciphertext's room is taken before measuring: it is the spool.
	ct := bytes.NewBuffer(make([]byte, 0, size+1<<20))

	watch := newHeapWatch()
	live := &struct{ *pgpmime.LiveCopy }{}
	out := writerFunc(func(p []byte) (int, error) {
		ct.Write(p)
		if live.LiveCopy != nil {
			return live.Write(p)
		}
		return len(p), nil
	})
	s, err := pgpmime.NewSeal(out, h, pgpmime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	lc, err := s.NewLiveCopy(watchedWriter{watch}, []*packet.PublicKey{key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Write(ct.Bytes()); err != nil {
		t.Fatal(err)
	}
	live.LiveCopy = lc
	for range size / len(chunk) {
		if _, err := s.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lc.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("seal and live copy: live heap grew by at most %d KiB over %d MiB (%d MiB of armor)", watch.peak>>10, size>>20, watch.n>>20)
	if watch.peak > limit {
		t.Errorf("seal and live copy: live heap grew by %d KiB, want at most %d KiB", watch.peak>>10, limit>>10)
	}

	watch = newHeapWatch()
	if err := s.WriteCopy(watchedWriter{watch}, bytes.NewReader(ct.Bytes()), []*packet.PublicKey{key}); err != nil {
		t.Fatal(err)
	}
	t.Logf("WriteCopy: live heap grew by at most %d KiB", watch.peak>>10)
	if watch.peak > limit {
		t.Errorf("WriteCopy: live heap grew by %d KiB, want at most %d KiB", watch.peak>>10, limit>>10)
	}

	watch = newHeapWatch()
	body, err := s.OpenBody(bytes.NewReader(ct.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(watchedWriter{watch}, body)
	if err != nil || n != size {
		t.Fatalf("OpenBody: %d bytes, %v", n, err)
	}
	t.Logf("OpenBody: live heap grew by at most %d KiB", watch.peak>>10)
	if watch.peak > limit {
		t.Errorf("OpenBody: live heap grew by %d KiB, want at most %d KiB", watch.peak>>10, limit>>10)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
