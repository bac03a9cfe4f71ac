package certs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Bounded waits for Watch: generous, because -race and a loaded CI
// machine are slow, but a pass normally takes a fraction of a second.
const watchWait = 15 * time.Second

func newTestHolder(t *testing.T, dir string) (*Holder, *logRecorder) {
	t.Helper()
	rec := &logRecorder{t: t, counts: map[string]int{}}
	h, err := NewHolder(Options{Dir: dir}, slog.New(rec))
	if err != nil {
		t.Fatalf("NewHolder: %v", err)
	}
	h.debounce = 20 * time.Millisecond
	h.maxDelay = 200 * time.Millisecond
	h.pollSafety = 100 * time.Millisecond
	h.pollFallback = 50 * time.Millisecond
	return h, rec
}

// logRecorder is a slog.Handler that passes records to t.Log (a failing
// test shows them) and counts them by message, so that tests can wait
// for "the reload happened" instead of sleeping.
type logRecorder struct {
	t      *testing.T
	mu     sync.Mutex
	counts map[string]int
	text   strings.Builder
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	r.mu.Lock()
	r.counts[rec.Message]++
	r.text.WriteString(b.String() + "\n")
	r.mu.Unlock()
	r.t.Log(b.String())
	return nil
}

func (r *logRecorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[msg]
}

func (r *logRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.text.String()
}

const (
	msgLoaded       = "certificates loaded"
	msgReloadFailed = "certificate reload failed, keeping the previous certificates"
)

func TestNewHolderUnreadableDir(t *testing.T) {
	if h, err := NewHolder(Options{Dir: filepath.Join(t.TempDir(), "missing")}, nil); err == nil {
		t.Errorf("NewHolder = %v, nil; want an error", h)
	}
}

// TestReloadAtomic: readers take Current() and look up while the store
// is replaced over and over. Each snapshot is a whole generation, never
// a mixture: every certificate and every lookup agrees on one of the
// two directory contents.
func TestReloadAtomic(t *testing.T) {
	const perGen = 6
	// Two generations, A and B, each with its own addresses; their
	// fingerprints identify them.
	gens := [2]map[string]string{{}, {}} // fingerprint → address
	var genPEM [2][][]byte
	for g, name := range []string{"a", "b"} {
		for i := range perGen {
			addr := fmt.Sprintf("%s%d@example.org", name, i)
			tmpl := leafTemplate(addr)
			tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-day), time.Now().Add(day)
			c := selfSigned(t, tmpl)
			gens[g][fpOf(c)] = addr
			genPEM[g] = append(genPEM[g], pemOf(c))
		}
	}
	// The directory the holder reads is a symbolic link switched between
	// two complete directories, so that the directory itself changes
	// atomically and a load can only see one generation.
	base := t.TempDir()
	for g := range 2 {
		d := filepath.Join(base, fmt.Sprint("gen", g))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, p := range genPEM[g] {
			writeFile(t, d, fmt.Sprintf("c%d.pem", i), p)
		}
	}
	live := filepath.Join(base, "live")
	point := func(g int) {
		tmp := filepath.Join(base, ".live.tmp")
		os.Remove(tmp)
		if err := os.Symlink(fmt.Sprint("gen", g), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, live); err != nil {
			t.Fatal(err)
		}
	}
	point(0)
	h, err := NewHolder(Options{Dir: live}, nil)
	if err != nil {
		t.Fatal(err)
	}

	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		seen     [2]atomic.Int64
		failures atomic.Int64
	)
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 5 {
			t.Errorf(format, args...)
		}
	}
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				s := h.Current()
				certs := s.Certs()
				if len(certs) != perGen {
					fail("snapshot has %d certificates, want %d", len(certs), perGen)
					continue
				}
				g := 0
				if _, ok := gens[1][certs[0].Fingerprint]; ok {
					g = 1
				}
				for _, c := range certs {
					if _, ok := gens[g][c.Fingerprint]; !ok {
						fail("snapshot mixes generations")
					}
				}
				// Lookups on the same snapshot agree with its Certs: every
				// address of this generation found, none of the other.
				for fp, addr := range gens[g] {
					if got := s.Lookup(addr); len(got) != 1 || got[0].Fingerprint != fp {
						fail("Lookup(%q) in generation %d = %v", addr, g, fingerprints(got))
					}
				}
				for _, addr := range gens[1-g] {
					if got := s.Lookup(addr); got != nil {
						fail("Lookup(%q) of the other generation = %v, want nil", addr, fingerprints(got))
					}
				}
				seen[g].Add(1)
			}
		})
	}
	for i := range 200 {
		point((i + 1) % 2)
		if err := h.Reload(); err != nil {
			t.Errorf("Reload: %v", err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if seen[0].Load() == 0 || seen[1].Load() == 0 {
		t.Errorf("readers saw generation A %d times and B %d times; want both", seen[0].Load(), seen[1].Load())
	}
}

func TestReloadFailureKeepsStore(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "certs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmpl := leafTemplate("a@example.org")
	tmpl.NotBefore = time.Now().Add(-day)
	writeFile(t, dir, "a.pem", pemOf(selfSigned(t, tmpl)))
	h, _ := newTestHolder(t, dir)
	before := h.Current()

	stillThere := func(when string) {
		t.Helper()
		if h.Current() != before {
			t.Errorf("%s: Current() changed, want the previous store kept", when)
		}
		if len(h.Current().Lookup("a@example.org")) != 1 {
			t.Errorf("%s: the previous certificate is no longer found", when)
		}
	}

	// Tests run as root, for whom chmod 000 does not prevent reading:
	// make the directory unreadable by removing it, then by putting a
	// file in its place.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err == nil {
		t.Error("Reload of a removed directory succeeded")
	}
	stillThere("directory removed")

	writeFile(t, base, "certs", []byte("now a file"))
	if err := h.Reload(); err == nil {
		t.Error("Reload of a file instead of a directory succeeded")
	}
	stillThere("directory replaced by a file")

	// Back to normal: an empty directory is a valid (empty) store.
	os.Remove(dir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if h.Current() == before || h.Current().Lookup("a@example.org") != nil {
		t.Error("after a good reload, the new (empty) store is not current")
	}
}

func TestReloadLogsSkipped(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "key.pem", privateKeyPEM(t))
	h, rec := newTestHolder(t, dir)
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	out := rec.String()
	for _, want := range []string{"skipped file=", "key.pem", ErrPrivateKey.Error(), msgLoaded, "skipped=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := rec.count(msgLoaded); n != 2 {
		t.Errorf("%q logged %d times, want 2 (NewHolder and Reload)", msgLoaded, n)
	}
}

const (
	msgWatching = "watching the certificate directory"
	msgPolling  = "cannot watch the certificate directory, rescanning it periodically instead"
)

// startWatch runs Watch until the test ends and checks that it returns
// nil, promptly, once its context is cancelled. It returns once the
// watch is set up, so that what the test does next happens under watch.
func startWatch(t *testing.T, h *Holder, rec *logRecorder) {
	t.Helper()
	defer waitFor(t, watchWait, "watch set up", func() bool {
		return rec.count(msgWatching)+rec.count(msgPolling) > 0
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v, want nil after cancel", err)
			}
		case <-time.After(watchWait):
			t.Error("Watch did not return after its context was cancelled")
		}
	})
}

func validNow(t *testing.T, addr string) []byte {
	tmpl := leafTemplate(addr)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-day), time.Now().Add(day)
	return pemOf(selfSigned(t, tmpl))
}

func found(h *Holder, addr string) func() bool {
	return func() bool { return len(h.Current().Lookup(addr)) == 1 }
}

func gone(h *Holder, addr string) func() bool {
	return func() bool { return h.Current().Lookup(addr) == nil }
}

// testWatch is the behaviour shared by the inotify and the polling
// watcher: a new file, an atomic rename into place, a replaced file and
// a removed file are all picked up within a bounded wait.
func testWatch(t *testing.T, forcePoll bool) {
	dir := t.TempDir()
	writeFile(t, dir, "a.pem", validNow(t, "a@example.org"))
	h, rec := newTestHolder(t, dir)
	h.forcePoll = forcePoll
	// In inotify mode the safety rescan must not be what makes the test
	// pass: make it too slow to matter.
	if !forcePoll {
		h.pollSafety = time.Hour
	}
	startWatch(t, h, rec)

	writeFile(t, dir, "b.pem", validNow(t, "b@example.org"))
	waitFor(t, watchWait, "new file b.pem picked up", found(h, "b@example.org"))

	writeAtomic(t, dir, "c.pem", validNow(t, "c@example.org"))
	waitFor(t, watchWait, "c.pem renamed into place picked up", found(h, "c@example.org"))

	writeAtomic(t, dir, "c.pem", validNow(t, "c2@example.org"))
	waitFor(t, watchWait, "c.pem replaced by rename", func() bool {
		return found(h, "c2@example.org")() && gone(h, "c@example.org")()
	})

	if err := os.Remove(filepath.Join(dir, "a.pem")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, watchWait, "removal of a.pem noticed", gone(h, "a@example.org"))
	if !found(h, "b@example.org")() {
		t.Error("b@example.org lost along the way")
	}
}

func TestWatchInotify(t *testing.T) { testWatch(t, false) }

func TestWatchPollFallback(t *testing.T) { testWatch(t, true) }

// TestWatchDirectoryReplaced: the watched directory is moved away and
// another takes its name later (a deployment swapping whole
// directories). The holder keeps its store while there is no directory,
// then loads the new one and watches it.
func TestWatchDirectoryReplaced(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "certs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "a.pem", validNow(t, "a@example.org"))
	h, rec := newTestHolder(t, dir)
	// Only inotify and the retry of a lost watch may act, not the
	// safety rescan.
	h.pollSafety = time.Hour
	startWatch(t, h, rec)

	if err := os.Rename(dir, filepath.Join(base, "old")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, watchWait, "failed reload of the missing directory", func() bool {
		return rec.count(msgReloadFailed) > 0
	})
	if len(h.Current().Lookup("a@example.org")) != 1 {
		t.Error("store lost while the directory was missing")
	}

	next := filepath.Join(base, "next")
	if err := os.Mkdir(next, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, next, "b.pem", validNow(t, "b@example.org"))
	if err := os.Rename(next, dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, watchWait, "replacement directory loaded", func() bool {
		return found(h, "b@example.org")() && gone(h, "a@example.org")()
	})

	// Watched, not merely reloaded once.
	writeFile(t, dir, "c.pem", validNow(t, "c@example.org"))
	waitFor(t, watchWait, "file in the replacement directory picked up", found(h, "c@example.org"))
}

// TestWatchDebounces: a burst of writes costs a few reloads, not one
// each.
func TestWatchDebounces(t *testing.T) {
	dir := t.TempDir()
	h, rec := newTestHolder(t, dir)
	h.debounce = 300 * time.Millisecond
	h.maxDelay = 5 * time.Second
	h.pollSafety = time.Hour
	startWatch(t, h, rec)

	const n = 20
	files := make([][]byte, n)
	for i := range files {
		files[i] = validNow(t, fmt.Sprintf("c%d@example.org", i))
	}
	loadsBefore := rec.count(msgLoaded)
	for i, data := range files {
		writeFile(t, dir, fmt.Sprintf("c%d.pem", i), data)
	}
	waitFor(t, watchWait, "all files loaded", func() bool { return len(h.Current().Certs()) == n })
	// Writing 20 small files takes far less than 300 ms, except on a
	// badly overloaded machine; allow a few reloads, not twenty.
	if got := rec.count(msgLoaded) - loadsBefore; got > 5 {
		t.Errorf("%d reloads for a burst of %d files, want a few", got, n)
	}
}

func TestWatchStopsOnCancel(t *testing.T) {
	h, _ := newTestHolder(t, t.TempDir())
	for _, poll := range []bool{false, true} {
		h.forcePoll = poll
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- h.Watch(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch = %v, want nil", err)
			}
		case <-time.After(watchWait):
			t.Fatal("Watch did not return after cancel")
		}
	}
}

// TestWatchCatchesUpOnStart: a file added between NewHolder and Watch
// (the daemon does other work in between) is loaded when Watch starts,
// not a rescan interval later.
func TestWatchCatchesUpOnStart(t *testing.T) {
	dir := t.TempDir()
	h, rec := newTestHolder(t, dir)
	h.pollSafety = time.Hour
	writeFile(t, dir, "a.pem", validNow(t, "a@example.org"))
	startWatch(t, h, rec)
	waitFor(t, watchWait, "file added before Watch picked up", found(h, "a@example.org"))
}
