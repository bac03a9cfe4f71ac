package main

import (
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDemoWatchParent: the demo stops when getppid names another process,
// noticed by polling even when no signal comes (the thread that asked for
// it ended), and a parent-death signal while the parent process lives on
// (one of its threads ended) does not stop it.
func TestDemoWatchParent(t *testing.T) {
	const poll = 10 * time.Millisecond
	tests := []struct {
		name    string
		signals int // parent-death signals while the parent lives
	}{
		{name: "no signal, found by polling"},
		{name: "a parent thread ended first", signals: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ppid atomic.Int64
			ppid.Store(4242)
			getppid := func() int { return int(ppid.Load()) }
			died := make(chan os.Signal)
			var logBuf syncBuffer
			stopped := make(chan struct{})
			var stops atomic.Int32
			done := make(chan struct{})
			go func() {
				defer close(done)
				watchParent(4242, getppid, died, poll, slog.New(slog.NewTextHandler(&logBuf, nil)), func() {
					stops.Add(1)
					close(stopped)
				})
			}()
			for range tt.signals {
				// Unbuffered: the watcher took it, and it looks at getppid
				// before it can take the next one.
				select {
				case died <- parentDeathSignal:
				case <-stopped:
					t.Fatal("stopped while the parent process lives")
				case <-time.After(checkWait):
					t.Fatalf("the watcher took no signal within %v", checkWait)
				}
			}
			// The last signal is looked at, too, before the parent ends.
			for deadline := time.Now().Add(checkWait); strings.Count(logBuf.String(), "still running") < tt.signals; {
				if time.Now().After(deadline) {
					t.Fatalf("log: no %d \"still running\" lines within %v:\n%s", tt.signals, checkWait, logBuf.String())
				}
				time.Sleep(poll)
			}
			// Several polls while the parent lives, before it ends.
			if tt.signals == 0 {
				select {
				case <-stopped:
					t.Fatal("stopped while the parent process lives")
				case <-time.After(5 * poll):
				}
			}
			ppid.Store(1)
			select {
			case <-done:
			case <-time.After(checkWait):
				t.Fatalf("not stopped within %v after the parent ended", checkWait)
			}
			if n := stops.Load(); n != 1 {
				t.Errorf("stop calls: got %d, want 1", n)
			}
			logged := logBuf.String()
			if got := strings.Count(logged, "still running"); got != tt.signals {
				t.Errorf("log: got %d \"still running\" lines, want %d:\n%s", got, tt.signals, logged)
			}
			if !strings.Contains(logged, "the parent process has ended") || !strings.Contains(logged, "new_parent=1") {
				t.Errorf("log: got %q, want the end of the parent and the new parent", logged)
			}
		})
	}
}
