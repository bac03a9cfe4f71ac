package certs

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Watch reloads the Store when the directory changes, until ctx is done;
// then it returns nil. Call it once per Holder.
//
// Changes are noticed with inotify (file written and closed, created,
// deleted, renamed in or out, attributes changed) and acted on once they
// have settled for a moment, so that a burst of writes costs one reload.
// A periodic rescan (every minute) compares names, sizes, times and
// inodes as a safety net for what inotify on the directory cannot see: a
// file that is a symbolic link whose target is rewritten, or Options.Dir
// being itself a symbolic link that is switched to another directory. It
// is the only mechanism when inotify is unavailable (every 5 seconds).
// When the directory is removed or renamed, the current Store stays and
// the watch is taken up again once a directory exists at that path.
//
// Writers should put files in place atomically (write a hidden temporary
// file, then rename it): a file caught half-written is skipped until the
// next reload.
//
// Options.EnrolledDir is watched the same way, each directory on its own;
// a change in either reloads both.
func (h *Holder) Watch(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, d := range []struct {
		dir string
		sig [sha256.Size]byte
	}{{h.opts.Dir, h.sig}, {h.opts.EnrolledDir, h.enrolledSig}} {
		if d.dir == "" {
			continue
		}
		wg.Go(func() { h.watchDir(ctx, d.dir, d.sig) })
	}
	wg.Wait()
	return nil
}

// watchDir is Watch for one directory, whose signature at the first load
// was sig.
func (h *Holder) watchDir(ctx context.Context, dir string, sig [sha256.Size]byte) {
	poll := h.pollSafety
	var (
		changed <-chan struct{}
		lost    <-chan int32
		failed  <-chan error
	)
	w, err := newInotify(dir)
	if h.forcePoll && err == nil {
		w.close()
		w, err = nil, errors.New("disabled for a test")
	}
	if err != nil {
		poll = h.pollFallback
		h.log.Warn("cannot watch the certificate directory, rescanning it periodically instead",
			"dir", dir, "interval", poll, "err", err)
	} else {
		defer w.close()
		changed, lost, failed = w.changed, w.lost, w.failed
		h.log.Info("watching the certificate directory", "dir", dir)
	}

	rescan := time.NewTicker(poll)
	defer rescan.Stop()
	// When the watched directory goes away, the watch is added again as
	// soon as the directory is back: retried often, as it matters more
	// than the safety rescan.
	var (
		retry  *time.Ticker
		retryC <-chan time.Time
	)
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()

	// The directory as last loaded (or as last tried): a rescan that sees
	// something else reloads.
	lastSig := sig

	var (
		settle   *time.Timer
		settleC  <-chan time.Time
		firstEvt time.Time
	)
	schedule := func() {
		now := time.Now()
		if settleC == nil {
			firstEvt = now
		}
		// Wait for a quiet moment, but not for ever under a steady
		// stream of events.
		delay := min(h.debounce, max(firstEvt.Add(h.maxDelay).Sub(now), 0))
		if settle == nil {
			settle = time.NewTimer(delay)
		} else {
			settle.Reset(delay)
		}
		settleC = settle.C
	}
	defer func() {
		if settle != nil {
			settle.Stop()
		}
	}()

	// Whatever changed between the load and the start of the watch would
	// otherwise go unnoticed until the first rescan.
	if dirSignature(dir) != lastSig {
		schedule()
	}

	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			schedule()
		case wd := <-lost:
			// The watched directory was deleted or moved away. Reload
			// anyway: if it is gone, Reload keeps the old store and says
			// so; if another directory took its place, that one counts.
			if !w.onLost(dir, wd) && retry == nil {
				retry = time.NewTicker(h.pollFallback)
				retryC = retry.C
			}
			schedule()
		case err := <-failed:
			h.log.Warn("inotify stopped, rescanning the certificate directory periodically instead",
				"dir", dir, "interval", h.pollFallback, "err", err)
			changed, lost, failed = nil, nil, nil
			if retry != nil {
				retry.Stop()
				retry, retryC = nil, nil
			}
			rescan.Reset(h.pollFallback)
		case <-retryC:
			if w.add(dir) == nil {
				retry.Stop()
				retry, retryC = nil, nil
				h.log.Info("watching the certificate directory again", "dir", dir)
				schedule()
			}
		case <-rescan.C:
			if dirSignature(dir) != lastSig {
				schedule()
			}
		case <-settleC:
			settleC = nil
			// Taken before loading: a change made during the load shows
			// at the next rescan instead of being lost.
			lastSig = dirSignature(dir)
			_ = h.Reload() // logged by Reload; the old store stays current
		}
	}
}

// dirSignature summarizes what Load would read from dir: the names of the
// files it would consider, with size, modification time, mode, and (where
// available) inode and change time of what they point to. Equal
// signatures mean nothing Load depends on has visibly changed.
func dirSignature(dir string) [sha256.Size]byte {
	hash := sha256.New()
	entries, err := os.ReadDir(dir)
	if err != nil {
		hash.Write([]byte("error\x00" + err.Error()))
	}
	var buf [8]byte
	num := func(v int64) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		hash.Write(buf[:])
	}
	for _, e := range entries {
		if ignored(e.Name()) {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err == nil && fi.IsDir() {
			continue // not loaded, so its changes do not matter
		}
		hash.Write([]byte(e.Name() + "\x00"))
		if err != nil {
			hash.Write([]byte("error\x00"))
			continue
		}
		num(fi.Size())
		num(fi.ModTime().UnixNano())
		num(int64(fi.Mode()))
		for _, v := range fileIdentity(fi) {
			num(v)
		}
	}
	var sum [sha256.Size]byte
	hash.Sum(sum[:0])
	return sum
}
