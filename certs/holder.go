package certs

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Holder gives the daemon the current Store and replaces it, as a whole,
// when the directory changes. Readers never lock: a mail transaction calls
// Current once and uses that snapshot throughout, so it never sees half
// of an old directory and half of a new one.
type Holder struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[Store]
	// reloadMu serializes reloads, so that the snapshot published last is
	// the one read last (Watch and a SIGHUP may reload at once).
	reloadMu sync.Mutex

	// Timing of Watch. Fields rather than constants so that tests can
	// shorten them; set only before Watch starts.
	debounce     time.Duration // quiet time after an event before reloading
	maxDelay     time.Duration // longest wait under a stream of events
	pollSafety   time.Duration // directory rescan while inotify works
	pollFallback time.Duration // directory rescan without inotify; retry of a lost watch
	forcePoll    bool          // tests: behave as if inotify were unavailable

	// sig and enrolledSig summarize the directories as they were before
	// the first load; Watch starts from them, so a change made during
	// that load is noticed.
	sig, enrolledSig [sha256.Size]byte
}

// NewHolder loads opts.Dir once. An unreadable directory is an error (a
// daemon should not start without its certificates); bad files are only
// logged. log may be nil.
func NewHolder(opts Options, log *slog.Logger) (*Holder, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Holder{
		opts:         opts,
		log:          log,
		debounce:     200 * time.Millisecond,
		maxDelay:     2 * time.Second,
		pollSafety:   time.Minute,
		pollFallback: 5 * time.Second,
	}
	h.sig = dirSignature(opts.Dir)
	h.enrolledSig = dirSignature(opts.EnrolledDir)
	s, err := Load(opts)
	if err != nil {
		return nil, err
	}
	h.cur.Store(s)
	h.logStore(s)
	return h, nil
}

// Current returns the current snapshot. It never blocks.
func (h *Holder) Current() *Store { return h.cur.Load() }

// Reload loads the directory again and publishes the result. When the
// directory cannot be read, the previous Store stays current and the
// error is returned: mail keeps being encrypted to the known certificates
// rather than to none.
func (h *Holder) Reload() error {
	h.reloadMu.Lock()
	defer h.reloadMu.Unlock()
	s, err := Load(h.opts)
	if err != nil {
		h.log.Error("certificate reload failed, keeping the previous certificates",
			"dir", h.opts.Dir, "enrolled_dir", h.opts.EnrolledDir, "err", err)
		return err
	}
	h.cur.Store(s)
	h.logStore(s)
	return nil
}

func (h *Holder) logStore(s *Store) {
	for _, c := range s.certs {
		h.log.Debug("certificate loaded", "file", c.File, "source", c.Source, "sha256", c.Fingerprint,
			"addresses", c.Addresses, "valid_until", c.validUntil)
	}
	for _, sk := range s.skipped {
		level := slog.LevelWarn
		switch {
		case errors.Is(sk.Err, ErrCA):
			// An intermediate put there on purpose.
			level = slog.LevelInfo
		case sk.kept:
			// Kept for later: expected ahead of a planned rollover.
			level = slog.LevelInfo
		}
		h.log.Log(context.Background(), level, "skipped", "file", sk.File, "subject", sk.Subject, "reason", sk.Err)
	}
	for _, k := range s.keys {
		h.log.Debug("OpenPGP key loaded", "file", k.File, "fingerprint", k.Fingerprint,
			"addresses", k.Addresses, "valid_until", k.validUntil)
	}
	enrolled := 0
	for _, c := range s.certs {
		if c.Source == SourceEnrollment {
			enrolled++
		}
	}
	attrs := []any{"dir", h.opts.Dir, "loaded", len(s.certs), "openpgp_keys", len(s.keys), "skipped", len(s.skipped)}
	if h.opts.EnrolledDir != "" {
		attrs = append(attrs, "enrolled_dir", h.opts.EnrolledDir, "enrolled", enrolled)
	}
	h.log.Info("certificates loaded", attrs...)
}
