package filter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/recipients"
)

// session is one LMTP connection: the transaction's envelope and plans,
// from MAIL to the last recipient's reply.
type session struct {
	b      *Backend
	id     string
	log    *slog.Logger
	ctx    context.Context // cancelled when the connection closes
	cancel context.CancelFunc

	// The transaction. mu guards it: with BDAT, go-smtp runs LMTPData in a
	// goroutine of its own and may call Reset (RSET) and Mail while it still
	// runs, so LMTPData works on a copy taken when it starts (transaction).
	mu    sync.Mutex
	seq   int
	from  string
	opts  smtp.MailOptions
	store *certs.Store
	rcpts []*rcpt
}

func (s *session) txID() string { return s.id + "." + itoa(uint64(s.seq)) }

// withID copies a reply of ours and appends the transaction id, so an
// administrator can find the log lines behind a bounce or deferral.
func (s *session) withID(se *smtp.SMTPError) *smtp.SMTPError {
	c := *se
	c.Message = se.Message + " (" + s.txID() + ")"
	return &c
}

// reply turns err into the *smtp.SMTPError go-smtp receives.
func (s *session) reply(err error) *smtp.SMTPError {
	se := Status(err)
	var peer *smtp.SMTPError
	if errors.As(err, &peer) && peer == se {
		// The next hop's own answer: pass it on untouched.
		return se
	}
	return s.withID(se)
}

// recovered turns a panic into an error for the recipients concerned, and
// logs it with its stack: one bug must not take the daemon, and every other
// connection's mail, down with it.
func (s *session) recovered(where string, v any) error {
	s.log.Error("panic", "where", where, "tx", s.txID(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	return fmt.Errorf("%s: %w: %v", where, ErrPanic, v)
}

func (s *session) Mail(from string, opts *smtp.MailOptions) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = s.reply(s.recovered("MAIL", v))
		}
	}()
	var store *certs.Store
	if s.b.cfg.Certs != nil {
		// One snapshot for the whole transaction: a reload in between
		// cannot give two recipients plans from two stores.
		store = s.b.cfg.Certs.Current()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetLocked()
	s.seq++
	s.from = from
	if opts != nil {
		s.opts = *opts
	}
	s.store = store
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = s.refuse(&rcpt{addr: to, action: actRefused}, s.recovered("RCPT", v))
		}
	}()
	t := s.transaction()
	if r := s.b.enrollPlan(to); r != nil {
		// Never planned for delivery: the engine takes it at DATA.
		s.mu.Lock()
		s.rcpts = append(s.rcpts, r)
		s.mu.Unlock()
		return nil
	}
	r, missing, err := s.b.plan.plan(to, t.store)
	if err == nil && missing != nil {
		err = t.verifyMissing(r, missing)
	}
	if err != nil {
		return t.refuse(r, err)
	}
	s.mu.Lock()
	s.rcpts = append(s.rcpts, r)
	s.mu.Unlock()
	return nil
}

// transaction returns a copy of the session with the transaction as it is
// now, for work that must not see later commands.
func (s *session) transaction() *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &session{b: s.b, id: s.id, log: s.log, ctx: s.ctx, cancel: s.cancel,
		seq: s.seq, from: s.from, opts: s.opts, store: s.store, rcpts: s.rcpts}
}

// refuse logs a recipient refused at RCPT and returns its reply.
func (s *session) refuse(r *rcpt, err error) *smtp.SMTPError {
	se := s.reply(err)
	s.logOutcome(&rcpt{addr: r.addr, rewritten: r.rewritten, action: actRefused}, se, 0, time.Time{}, err)
	return se
}

// verifyMissing decides about a recipient with no usable certificate whose
// policy refuses it: the mail store is asked first, so that a user it does
// not have bounces now with its own answer instead of waiting days in the
// queue for a certificate. Anything but a permanent refusal leaves the
// decision to the policy (missing).
func (s *session) verifyMissing(r *rcpt, missing error) error {
	v, ok := s.b.cfg.Deliver.(deliver.Verifier)
	if !ok {
		return missing
	}
	var se *smtp.SMTPError
	if err := v.Verify(s.ctx, s.from, r.rewritten); errors.As(err, &se) && se.Code >= 500 {
		return fmt.Errorf("recipient %q refused by the mail store: %w", r.rewritten, se)
	}
	return missing
}

func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetLocked()
}

func (s *session) resetLocked() {
	s.from = ""
	s.opts = smtp.MailOptions{}
	s.store = nil
	s.rcpts = nil
}

// Logout is called by go-smtp from whichever goroutine closes the
// connection, possibly while LMTPData runs (a shutdown closing connections
// whose grace ran out): cancelling the context ends the transaction's
// outbound waits, and LMTPData cleans up.
func (s *session) Logout() error {
	s.cancel()
	s.b.Stats.Connections.Add(-1)
	s.log.Debug("connection closed")
	return nil
}

// Data is a stub: go-smtp's smtp.Session interface requires it, and
// smtp.LMTPSession embeds that interface, but the server runs in LMTP mode
// only, where go-smtp calls LMTPData instead (one reply per recipient is
// what makes per-copy outcomes reportable). Should it ever be called, the
// answer is 502 5.5.1, not a silent success.
func (s *session) Data(io.Reader) error { return s.withID(replyLMTPOnly) }

// LMTPData implements smtp.LMTPSession: one status per RCPT, RFC 2033 §4.2.
//
// It returns a temporary failure, which go-smtp gives only to recipients
// that have no status yet: should a path ever leave one out, that recipient
// is deferred, not told 250.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	s = s.transaction()
	reported := make(map[*rcpt]bool, len(s.rcpts))
	report := func(rc *rcpt, se *smtp.SMTPError) {
		reported[rc] = true
		if se == nil {
			// Not se itself: a nil *SMTPError in an error interface is
			// not nil, and go-smtp would report it as a failure.
			status.SetStatus(rc.addr, nil)
		} else {
			status.SetStatus(rc.addr, se)
		}
	}
	defer func() {
		// go-smtp runs LMTPData in a goroutine of its own, where a panic
		// would end the process: recover, and defer whoever has no answer.
		if v := recover(); v != nil {
			err := s.recovered("DATA", v)
			se := s.reply(err)
			for _, rc := range s.rcpts {
				if !reported[rc] {
					s.logOutcome(rc, se, 0, time.Time{}, err)
					report(rc, se)
				}
			}
		}
	}()
	s.deliver(r, report)
	return s.withID(replyTempFail)
}

// logOutcome writes the one line per recipient outcome.
func (s *session) logOutcome(rc *rcpt, se *smtp.SMTPError, size int64, start time.Time, err error, extra ...any) {
	code, enh, level := 250, "2.0.0", slog.LevelInfo
	if se != nil {
		code = se.Code
		enh = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		level = slog.LevelWarn
		if code >= 500 || errors.Is(err, recipients.ErrInvalidAddress) || errors.Is(err, ErrPanic) {
			// A rewrite rule producing garbage is the administrator's to
			// fix, however temporary the reply; a panic is a bug.
			level = slog.LevelError
		}
	}
	switch {
	case code < 300:
		s.b.Stats.Delivered.Add(1)
	case code < 500:
		s.b.Stats.Deferred.Add(1)
	default:
		s.b.Stats.Rejected.Add(1)
	}
	if !s.log.Enabled(context.Background(), level) {
		return
	}
	attrs := []any{"tx", s.txID(), "from", s.from, "rcpt", rc.addr, "rewritten", rc.rewritten,
		"action", rc.action.String(), "code", code, "status", enh}
	if !start.IsZero() {
		attrs = append(attrs, "size", size, "duration", since(start))
	}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	attrs = append(attrs, extra...)
	s.log.Log(context.Background(), level, "recipient", attrs...)
}
