package enroll

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// Engine is the enrollment state machine over one state directory. It is
// safe for concurrent use, and several Engines (the daemon's, the command
// line's) may use one directory: every operation reads the directory anew
// under a file lock.
type Engine struct {
	opts  Options
	kinds map[string]Kind

	mu   sync.Mutex // in-process; lock serializes processes
	lock *os.File

	senders *window // messages per envelope sender
	perAddr *window // challenges per address
	// owed are notices of activations that a crash interrupted and Open
	// completed; the next Tick returns them.
	owed []Outgoing

	// failAt, when set (tests), is asked before each step of an
	// activation; an error stops there as a crash would.
	failAt func(step string) error
}

// Steps of an activation, in order, for failAt.
const (
	stepWriteActive   = "write-active"
	stepLog           = "log"
	stepRemovePending = "remove-pending"
)

// Open loads the state in opts.Dir, creating the directory (0700) unless
// ReadOnly, and finishes any activation a crash interrupted: one whose
// certificate file was written has its log line (if missing) and its
// request removed; one that had not got that far stays pending and
// happens at the next Tick that finds it due. Nothing becomes active
// earlier than it would have without the crash.
func Open(opts Options) (*Engine, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	e := &Engine{
		opts:    opts,
		kinds:   make(map[string]Kind),
		senders: newWindow(opts.MaxRequestsPerSenderPerDay),
		perAddr: newWindow(opts.MaxRequestsPerAddressPerDay),
	}
	for _, k := range opts.Kinds {
		e.kinds[k.Name()] = k
	}
	if !opts.ReadOnly {
		for _, d := range []string{opts.Dir, filepath.Join(opts.Dir, activeDir), filepath.Join(opts.Dir, pendingDir)} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, fmt.Errorf("enroll: %w", err)
			}
		}
	}
	flags := os.O_RDWR | os.O_CREATE
	if opts.ReadOnly {
		flags = os.O_RDONLY
	}
	lf, err := os.OpenFile(filepath.Join(opts.Dir, lockFile), flags, 0o600)
	switch {
	case err == nil:
		e.lock = lf
	case opts.ReadOnly && errors.Is(err, os.ErrNotExist):
		// Never used yet: nothing to read, nothing to lock against.
	default:
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if opts.ReadOnly {
		return e, nil
	}
	if err := matchOwner(lf, opts.Dir); err != nil {
		lf.Close()
		return nil, fmt.Errorf("enroll: %w", err)
	}
	err = e.locked(true, func(st *state) error {
		for _, d := range []string{opts.Dir, filepath.Join(opts.Dir, activeDir), filepath.Join(opts.Dir, pendingDir)} {
			if err := removeTemp(d); err != nil {
				return err
			}
		}
		return e.seedLimits(opts.Now())
	})
	if err != nil {
		lf.Close()
		return nil, err
	}
	return e, nil
}

// Close releases the lock file.
func (e *Engine) Close() error {
	if e.lock == nil {
		return nil
	}
	return e.lock.Close()
}

// ActiveDir is the directory of enrolled certificates, for the certificate
// store. Each file there is PEM (the certificate, then its issuers) after
// "Key: value" lines; its "Enrolled-Address:" line names the one address
// the certificate was confirmed for, and the store must use it for that
// address only, whatever else its subjectAltName lists.
func (e *Engine) ActiveDir() string { return filepath.Join(e.opts.Dir, activeDir) }

// locked runs fn on the state read under the lock; exclusive for changes.
// Before fn it completes interrupted activations.
func (e *Engine) locked(exclusive bool, fn func(st *state) error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lock != nil {
		if err := flock(e.lock, exclusive); err != nil {
			return err
		}
		defer funlock(e.lock)
	}
	st, err := e.load()
	if err != nil {
		return err
	}
	if exclusive {
		if err := e.recover(st); err != nil {
			return err
		}
	}
	return fn(st)
}

// recover finishes activations that a crash cut short after their
// certificate file was written (the one step that makes them take
// effect). The order of an activation — certificate file, log line,
// removal of the request — means a confirmed request whose file exists
// was due when the file was written.
func (e *Engine) recover(st *state) error {
	var logged map[string]bool
	for _, p := range slices.Clone(st.pending) {
		if p.State != stateConfirmed || st.activeFor(p.Address, p.Fingerprint) == nil {
			continue
		}
		if logged == nil {
			entries, err := readLog(filepath.Join(e.opts.Dir, logFile))
			if err != nil {
				return err
			}
			logged = make(map[string]bool)
			for _, le := range entries {
				if le.Action == ActionActivate {
					logged[le.Request] = true
				}
			}
		}
		if !logged[p.ID] {
			if err := e.appendLog(LogEntry{Time: e.opts.Now(), Address: p.Address, Action: ActionActivate,
				Fingerprint: p.Fingerprint, Requester: p.Requester, Kind: p.Kind, Request: p.ID,
				Outcome: "active (completed after an interruption)"}); err != nil {
				return err
			}
		}
		if err := e.removePending(st, p); err != nil {
			return err
		}
		if out, err := e.activationNotice(st, p, e.opts.Now()); err == nil {
			e.owed = append(e.owed, out)
		}
	}
	return nil
}

// seedLimits counts the challenges of the last day from the log, so that
// a restart does not reset the per-address and per-sender limits.
func (e *Engine) seedLimits(now time.Time) error {
	entries, err := readLog(filepath.Join(e.opts.Dir, logFile))
	if err != nil {
		return err
	}
	for _, le := range entries {
		if le.Action != ActionRequest || !le.Time.After(now.Add(-limitWindow)) || le.Time.After(now) {
			continue
		}
		e.perAddr.add(le.Address, le.Time)
		if le.Requester != "" {
			e.senders.add(strings.ToLower(le.Requester), le.Time)
		}
	}
	return nil
}

// holder is one certificate or OpenPGP key an address's mail is encrypted
// to now.
type holder struct {
	cert  *x509.Certificate
	key   *certs.Key
	fp    string
	until time.Time // zero: an OpenPGP key that does not expire
}

// holderOf is the holder of a requested or enrolled credential.
func holderOf(c *Credential, until time.Time) holder {
	return holder{cert: c.Certificate, key: c.Key, fp: c.Fingerprint, until: until}
}

// outgoing is a message to addr encrypted to exactly hs.
func outgoing(to string, hs []holder, entity []byte, purpose string) Outgoing {
	o := Outgoing{To: to, Entity: entity, Purpose: purpose}
	for _, h := range hs {
		switch {
		case h.cert != nil:
			o.EncryptTo = append(o.EncryptTo, h.cert)
		case h.key != nil:
			o.EncryptToKeys = append(o.EncryptToKeys, h.key)
		}
	}
	return o
}

// withHolder returns hs with h added unless it is there already.
func withHolder(hs []holder, h holder) []holder {
	if slices.ContainsFunc(hs, func(o holder) bool { return o.fp == h.fp }) {
		return hs
	}
	return append(hs, h)
}

// endsAfter compares two ends of use where zero means never.
func endsAfter(a, b time.Time) bool {
	switch {
	case a.IsZero():
		return !b.IsZero()
	case b.IsZero():
		return false
	}
	return a.After(b)
}

// usable returns the certificates and keys mail for addr is encrypted to
// at now: the certificate store's (Options.Current, Options.CurrentKeys)
// and the enrolled ones, without the one whose fingerprint is except.
func (e *Engine) usable(st *state, addr string, now time.Time, except string) []holder {
	var out []holder
	add := func(h holder) {
		if h.fp != except && !slices.ContainsFunc(out, func(o holder) bool { return o.fp == h.fp }) {
			out = append(out, h)
		}
	}
	if e.opts.Current != nil {
		for _, c := range e.opts.Current(addr) {
			if !now.Before(c.NotBefore) && !now.After(c.NotAfter) {
				add(holder{cert: c, fp: fingerprint(c.Raw), until: c.NotAfter})
			}
		}
	}
	if e.opts.CurrentKeys != nil {
		for _, k := range e.opts.CurrentKeys(addr) {
			if k.UsableAt(now) {
				add(holder{key: k, fp: k.Fingerprint, until: k.ValidUntil()})
			}
		}
	}
	for _, a := range st.active {
		if a.Address != addr || (a.cred.Certificate == nil && a.cred.Key == nil) {
			continue
		}
		if until, err := e.kinds[a.Kind].Usable(a.cred, now); err == nil {
			add(holderOf(a.cred, until))
		}
	}
	return out
}

func normalize(addr string) string {
	if n, ok := certs.NormalizeAddress(addr); ok {
		return n
	}
	return addr
}
