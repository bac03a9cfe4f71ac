package deliver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// syncLog records the directories a Maildir fsyncs.
type syncLog struct {
	mu    sync.Mutex
	paths []string
}

func (l *syncLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.paths
	l.paths = nil
	slices.Sort(p)
	return p
}

func newMaildir(t *testing.T) (*Maildir, string, *syncLog) {
	root := t.TempDir()
	m, err := NewMaildir(filepath.Join(root, "%d", "%n"))
	if err != nil {
		t.Fatal(err)
	}
	log := &syncLog{}
	m.syncDir = func(path string) error {
		log.mu.Lock()
		log.paths = append(log.paths, path)
		log.mu.Unlock()
		return syncDir(path)
	}
	return m, root, log
}

// maildirDeliver delivers testMsg to rcpt and returns its outcome;
// afterBegin runs between Begin and the message.
func maildirDeliver(t *testing.T, m *Maildir, rcpt string, afterBegin func()) error {
	tx, err := m.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{rcpt}})
	if err != nil {
		return err
	}
	if afterBegin != nil {
		afterBegin()
	}
	if _, err := tx.Write([]byte(testMsg)); err != nil {
		tx.Abort()
		return err
	}
	return tx.Commit()[0]
}

// TestMaildirDurableCreation: the directories made for a new mailbox, and
// the directory each was made in, are fsynced before a message in it is
// reported delivered; a mailbox that exists costs only the fsync of new/.
func TestMaildirDurableCreation(t *testing.T) {
	m, root, log := newMaildir(t)
	rel := func(paths []string) string {
		for i, p := range paths {
			paths[i], _ = filepath.Rel(root, p)
		}
		return strings.Join(paths, " ")
	}
	for _, tc := range []struct {
		name, rcpt  string
		setup       func()
		begin, done string // fsyncs during Begin, during Commit
	}{
		{name: "new domain", rcpt: "alice@example.org",
			begin: ". example.org example.org/alice example.org/alice/cur example.org/alice/new example.org/alice/tmp",
			done:  "example.org/alice/new"},
		{name: "known mailbox", rcpt: "alice@example.org", done: "example.org/alice/new"},
		{name: "new mailbox in a known domain", rcpt: "bob@example.org",
			begin: "example.org example.org/bob example.org/bob/cur example.org/bob/new example.org/bob/tmp",
			done:  "example.org/bob/new"},
		{name: "mailbox made by someone else", rcpt: "carol@example.org",
			setup: func() {
				for _, sub := range []string{"cur", "new", "tmp"} {
					if err := os.MkdirAll(filepath.Join(root, "example.org", "carol", sub), 0o700); err != nil {
						t.Fatal(err)
					}
				}
			},
			done: "example.org/carol/new"},
		{name: "known mailbox removed", rcpt: "bob@example.org",
			setup: func() { os.RemoveAll(filepath.Join(root, "example.org", "bob")) },
			begin: "example.org example.org/bob example.org/bob/cur example.org/bob/new example.org/bob/tmp",
			done:  "example.org/bob/new"},
	} {
		if tc.setup != nil {
			tc.setup()
		}
		var begin string
		if err := maildirDeliver(t, m, tc.rcpt, func() { begin = rel(log.take()) }); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if begin != tc.begin {
			t.Errorf("%s: fsynced %q before the message, want %q", tc.name, begin, tc.begin)
		}
		if got := rel(log.take()); got != tc.done {
			t.Errorf("%s: fsynced %q at commit, want %q", tc.name, got, tc.done)
		}
	}
	for _, d := range []string{"example.org", "example.org/alice", "example.org/alice/cur", "example.org/alice/new", "example.org/alice/tmp"} {
		fi, err := os.Stat(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode(); got != os.ModeDir|0o700 {
			t.Errorf("%s: got mode %v, want %v", d, got, os.ModeDir|0o700)
		}
	}
}

// TestMaildirNewRemoved: a known mailbox whose new/ disappeared fails the
// delivery as temporary (the file stays out of new/), and the next one
// makes new/ again.
func TestMaildirNewRemoved(t *testing.T) {
	m, root, _ := newMaildir(t)
	if err := maildirDeliver(t, m, "alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	newDir := filepath.Join(root, "example.org", "alice", "new")
	err := maildirDeliver(t, m, "alice@example.org", func() { os.RemoveAll(newDir) })
	if err == nil || errors.Is(err, ErrBadMailbox) {
		t.Fatalf("with new/ gone: got %v, want a temporary failure", err)
	}
	if err := maildirDeliver(t, m, "alice@example.org", nil); err != nil {
		t.Fatalf("next delivery: got %v, want delivered", err)
	}
	if files, _ := os.ReadDir(newDir); len(files) != 1 {
		t.Errorf("got %d files in new/, want 1", len(files))
	}
}

// TestMaildirNotADirectory: a file where a Maildir directory belongs fails
// the recipient, not the process.
func TestMaildirNotADirectory(t *testing.T) {
	m, root, _ := newMaildir(t)
	if err := os.WriteFile(filepath.Join(root, "example.org"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tx, err := m.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{"alice@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	if rej := tx.Rejected(); rej[0] == nil {
		t.Errorf("got %v, want a refusal", rej)
	}
	tx.Abort()
}

// TestMaildirConcurrentCreation: deliveries racing into one new mailbox
// each begin only once its directories are durable, whichever of them
// made them.
func TestMaildirConcurrentCreation(t *testing.T) {
	m, root, log := newMaildir(t)
	box := filepath.Join(root, "example.org", "alice")
	want := []string{root, filepath.Dir(box), box, filepath.Join(box, "cur"), filepath.Join(box, "new"), filepath.Join(box, "tmp")}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			err := maildirDeliver(t, m, "alice@example.org", func() {
				log.mu.Lock()
				defer log.mu.Unlock()
				for _, w := range want {
					if !slices.Contains(log.paths, w) {
						t.Errorf("began before %s was fsynced", w)
					}
				}
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if files, _ := os.ReadDir(filepath.Join(box, "new")); len(files) != 8 {
		t.Errorf("got %d files in new/, want 8", len(files))
	}
}
