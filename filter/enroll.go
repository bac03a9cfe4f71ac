package filter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/smime"
)

// Enrollment by signed mail (package enroll). Mail to the enrollment
// address is never delivered: its recipient gets a plan of its own
// (actEnroll), the message is handed to the engine as it arrived, and the
// engine's verdict is that recipient's reply. What the engine asks to send
// (challenges, notices) is encrypted here to exactly the certificates it
// names and delivered through the normal outbound path. Other recipients
// of the same transaction get their copies as usual: the message is read
// once, and the enrollment recipient only keeps a bounded copy of it.

// Enroller is what the filter needs of an enrollment engine
// (*enroll.Engine).
type Enroller interface {
	HandleMessage(envelopeFrom string, msg io.Reader) (enroll.Result, error)
}

// EnrollConfig turns enrollment on when Address and Engine are set.
type EnrollConfig struct {
	// Address is enroll.address.
	Address string
	Engine  Enroller
	// MaxMessageSize is the engine's limit (enroll.Options.MaxMessageSize):
	// no more than that is kept of a message, and a longer one is refused
	// as too large without troubling the engine. 0 means
	// enroll.DefaultMaxMessageSize.
	MaxMessageSize int64
}

// ErrEnrollEngine: the enrollment engine failed (its state directory);
// the sender tries again later.
var ErrEnrollEngine = errors.New("enrollment engine failed")

// ErrEnrollDelivery: a challenge or notice could not be delivered. The
// request is deferred, whatever the mail store said: a permanent refusal
// of our own notice is no reason to bounce the sender's request.
var ErrEnrollDelivery = errors.New("enrollment message not delivered")

// EnrollRefusal is the engine's refusal of a message (enroll.Result.Err);
// Status makes it a 5xx, or a 4xx when it is temporary, with the engine's
// text as the reply.
type EnrollRefusal struct{ Err error }

func (r *EnrollRefusal) Error() string { return "enrollment refused: " + r.Err.Error() }
func (r *EnrollRefusal) Unwrap() error { return r.Err }

// maxEnrollReason bounds the engine's text in a reply (RFC 5321
// §4.5.3.1.5: 512 octets a reply line, code and transaction id included).
const maxEnrollReason = 400

// enrollReply builds the reply for a refusal: the engine's text, cut to
// one printable line with no room for a second reply code.
func enrollReply(code, class, subject, detail int, err error) *smtp.SMTPError {
	text := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, err.Error())
	if len(text) > maxEnrollReason {
		text = text[:maxEnrollReason]
		for !utf8ValidTail(text) {
			text = text[:len(text)-1]
		}
	}
	return reply(code, class, subject, detail, strings.TrimSpace(text))
}

// utf8ValidTail reports whether s does not end inside a multi-byte UTF-8
// sequence (a cut at a byte limit must not split a character).
func utf8ValidTail(s string) bool {
	for i := len(s) - 1; i >= 0 && i >= len(s)-4; i-- {
		c := s[i]
		if c < 0x80 {
			return true
		}
		if c >= 0xc0 {
			n := 2
			switch {
			case c >= 0xf0:
				n = 4
			case c >= 0xe0:
				n = 3
			}
			return len(s)-i == n
		}
	}
	return true
}

// enrollStatus is Status for the enrollment errors; ok false means err is
// none of them.
func enrollStatus(err error) (se *smtp.SMTPError, ok bool) {
	var ref *EnrollRefusal
	switch {
	case errors.As(err, &ref):
		switch {
		case errors.Is(ref.Err, enroll.ErrTooLarge):
			return enrollReply(552, 5, 3, 4, ref.Err), true
		case enroll.Temporary(ref.Err):
			return enrollReply(451, 4, 7, 1, ref.Err), true
		}
		return enrollReply(550, 5, 7, 1, ref.Err), true
	case errors.Is(err, ErrEnrollDelivery):
		return replyEnrollDelivery, true
	case errors.Is(err, ErrEnrollEngine):
		return replyTempFail, true
	}
	return nil, false
}

// isEnrollAddress: addr (as received, or rewritten) is the enrollment
// address. Compared case-insensitively: the address is ours, and a user
// typing Keys@ must not have the request delivered to a mailbox.
func (b *Backend) isEnrollAddress(addr string) bool {
	if b.enrollAddr == "" {
		return false
	}
	a, ok := certs.NormalizeAddress(addr)
	return ok && strings.EqualFold(a, b.enrollAddr)
}

// enrollPlan returns the plan of a recipient that is the enrollment
// address, or nil.
func (b *Backend) enrollPlan(to string) *rcpt {
	if b.enrollAddr == "" {
		return nil
	}
	rw, err := b.cfg.Rewriter.Rewrite(to)
	is := b.isEnrollAddress(to) || (err == nil && b.isEnrollAddress(rw))
	// keys+x@ is keys@ too, as the certificate lookup strips a
	// subaddress: otherwise Dovecot would file it in a "keys" mailbox.
	for _, a := range []string{to, rw} {
		if base, ok := stripDetail(a, b.cfg.RecipientDelimiter); ok && !is {
			is = b.isEnrollAddress(base)
		}
	}
	if !is {
		return nil
	}
	return &rcpt{addr: to, rewritten: to, action: actEnroll}
}

// splitEnroll separates the enrollment recipients from the others.
func splitEnroll(rcpts []*rcpt) (normal, enr []*rcpt) {
	for _, rc := range rcpts {
		if rc.action == actEnroll {
			enr = append(enr, rc)
		} else {
			normal = append(normal, rc)
		}
	}
	if len(enr) == 0 {
		return rcpts, nil
	}
	return normal, enr
}

// boundedBuffer keeps the first limit bytes written to it and counts the
// rest, without ever failing a write: it sits in a TeeReader beside the
// normal recipients' copies, which must not suffer from its limit.
type boundedBuffer struct {
	buf   bytes.Buffer
	limit int
	over  bool // more than limit bytes were written
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	room := w.limit - w.buf.Len()
	if len(p) > room {
		w.over = true
	}
	w.buf.Write(p[:min(max(room, 0), len(p))])
	return len(p), nil
}

func (b *Backend) newEnrollCapture() *boundedBuffer {
	max := b.cfg.Enroll.MaxMessageSize
	if max <= 0 {
		max = enroll.DefaultMaxMessageSize
	}
	return &boundedBuffer{limit: int(max)}
}

// failAll reports err to every recipient of rcpts.
func (s *session) failAll(rcpts []*rcpt, err error, size int64, start time.Time, report func(*rcpt, *smtp.SMTPError)) {
	se := s.reply(err)
	for _, rc := range rcpts {
		s.logOutcome(rc, se, size, start, err)
		report(rc, se)
	}
}

// handleEnroll hands the message to the engine, delivers what it asks
// for, and reports the enrollment recipients.
func (s *session) handleEnroll(enr []*rcpt, capture *boundedBuffer, size int64, start time.Time, report func(*rcpt, *smtp.SMTPError)) {
	var (
		err   error
		notes []string
		res   enroll.Result
		herr  error
	)
	msg := capture.buf.Bytes()
	if capture.over {
		// Not cut short and handed on: a truncated request would be
		// refused for a reason that is not the real one.
		res.Err = fmt.Errorf("%w (at most %d bytes)", enroll.ErrTooLarge, capture.limit)
	} else {
		res, herr = s.b.cfg.Enroll.Engine.HandleMessage(s.from, bytes.NewReader(msg))
	}
	clear(msg) // plaintext: not kept beyond the engine's look at it
	switch {
	case herr != nil:
		err = fmt.Errorf("%w: %w", ErrEnrollEngine, herr)
	case res.Err != nil:
		err = &EnrollRefusal{Err: res.Err}
	default:
		for _, o := range res.Outgoing {
			notes = append(notes, o.Purpose+":"+o.To)
		}
		var failed []enroll.Outgoing
		failed, err = s.b.DeliverEnrollment(s.ctx, res.Outgoing)
		if err != nil && !slices.ContainsFunc(failed, func(o enroll.Outgoing) bool { return o.Purpose == "challenge" }) {
			// The engine's state changed and is on disk (a code was
			// used, a change scheduled): a 4xx would make Postfix retry
			// a message that now gets a 5xx (a used code). The request
			// succeeded; the notices are the daemon's to deliver, at its
			// next Tick. Only a challenge that did not go out fails the
			// request: its retry makes a fresh code.
			s.b.oweEnrollment(failed)
			notes = append(notes, "owed")
			err = nil
		}
	}
	var se *smtp.SMTPError
	if err != nil {
		se = s.reply(err)
	}
	for _, rc := range enr {
		s.logOutcome(rc, se, size, start, err, "enroll", res.Text, "sent", notes)
		report(rc, se)
	}
}

// oweEnrollment keeps notices for the daemon's next Tick (TakeOwed).
func (b *Backend) oweEnrollment(out []enroll.Outgoing) {
	b.owedMu.Lock()
	b.owed = append(b.owed, out...)
	b.owedMu.Unlock()
}

// TakeOwed returns, and forgets, the enrollment notices that could not be
// delivered when their message was answered: the caller (the daemon's
// Tick loop) delivers them with the Tick's own.
func (b *Backend) TakeOwed() []enroll.Outgoing {
	b.owedMu.Lock()
	defer b.owedMu.Unlock()
	out := b.owed
	b.owed = nil
	return out
}

// DeliverEnrollment encrypts each message the engine returned to exactly
// its EncryptTo and EncryptToKeys (never to what the store holds for its
// address: a challenge must open only with the requested certificate or
// key) and delivers it to its To through the configured target: as S/MIME
// to the certificates, as PGP/MIME (RFC 3156 §4) to the OpenPGP keys, one
// message in each format when it names both. It tries every message and
// returns those that failed (for a caller that can try them again, as the
// daemon's Tick loop does) and their errors joined, each wrapping
// ErrEnrollDelivery.
func (b *Backend) DeliverEnrollment(ctx context.Context, out []enroll.Outgoing) (failed []enroll.Outgoing, err error) {
	if r, ok := b.cfg.Certs.(interface{ Reload() error }); ok &&
		slices.ContainsFunc(out, func(o enroll.Outgoing) bool { return o.Purpose == "activated" }) {
		// "From now on your mail is encrypted to this certificate" must be
		// true when it arrives: the store reloads on its own only after
		// the directory watch's quiet time, and mail in between would
		// still go out as before (in plaintext, under the plaintext
		// policy). A failed reload keeps the previous store and is
		// logged by the holder; the watch tries again.
		r.Reload()
	}
	var errs []error
	for _, o := range out {
		start := time.Now()
		err := b.deliverOutgoing(ctx, o)
		fps := make([]string, 0, len(o.EncryptTo)+len(o.EncryptToKeys))
		for _, c := range o.EncryptTo {
			fps = append(fps, fingerprintOf(c))
		}
		for _, k := range o.EncryptToKeys {
			fps = append(fps, k.Fingerprint)
		}
		if err != nil {
			err = fmt.Errorf("%w: %s to %s: %w", ErrEnrollDelivery, o.Purpose, o.To, err)
			b.log.Warn("enrollment message", "purpose", o.Purpose, "rcpt", o.To, "certs", fps, "error", err.Error())
			errs = append(errs, err)
			failed = append(failed, o)
			continue
		}
		b.log.Info("enrollment message", "purpose", o.Purpose, "rcpt", o.To, "certs", fps, "duration", since(start))
	}
	return failed, errors.Join(errs...)
}

func fingerprintOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func (b *Backend) deliverOutgoing(ctx context.Context, o enroll.Outgoing) error {
	if len(o.EncryptTo) == 0 && len(o.EncryptToKeys) == 0 {
		// Never sent in plaintext: it may hold a code.
		return smime.ErrNoRecipients
	}
	var keys []*packet.PublicKey
	now := time.Now()
	for _, k := range o.EncryptToKeys {
		keys = append(keys, k.EncryptionKeys(now)...)
	}
	if len(o.EncryptToKeys) > 0 && len(keys) == 0 {
		// The engine names only keys usable now; one that expired since
		// must not turn a challenge into plaintext.
		return fmt.Errorf("%w: %w", ErrEncrypt, pgpmime.ErrNoRecipients)
	}
	rw, err := b.cfg.Rewriter.Rewrite(o.To)
	if err != nil {
		return err
	}
	if len(o.EncryptTo) > 0 {
		if err := b.deliverSealed(ctx, rw, o.Entity, func(dst io.Writer, hdr *smime.Header, body io.Reader) error {
			w, err := smime.Encrypt(dst, hdr, o.EncryptTo, b.cfg.SMIME)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrEncrypt, err)
			}
			if _, err := io.Copy(w, body); err != nil {
				return copyErr(err)
			}
			if err := w.Close(); err != nil {
				return copyErr(err)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if len(keys) > 0 {
		return b.deliverSealed(ctx, rw, o.Entity, func(dst io.Writer, hdr *smime.Header, body io.Reader) error {
			return sealPGP(dst, hdr, body, keys, b.cfg.OpenPGP)
		})
	}
	return nil
}

// sealPGP writes the PGP/MIME message of hdr and body to dst, encrypted
// to keys only. The entity is a few KiB of text, so the sealed data is
// kept in memory and then copied once, the same Seal and WriteCopy the
// daemon's copies use (one session key, one key packet per key).
func sealPGP(dst io.Writer, hdr *smime.Header, body io.Reader, keys []*packet.PublicKey, opts pgpmime.Options) error {
	var sealed bytes.Buffer
	seal, err := pgpmime.NewSeal(&sealed, hdr, opts)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEncrypt, err)
	}
	defer seal.Destroy()
	if _, err := io.Copy(seal, body); err != nil {
		return copyErr(err)
	}
	if err := seal.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrEncrypt, err)
	}
	if err := seal.WriteCopy(dst, &sealed, keys); err != nil {
		return copyErr(err)
	}
	return nil
}

// deliverSealed delivers one encrypted form of entity to rw: seal writes
// the encrypted message from its header and body.
func (b *Backend) deliverSealed(ctx context.Context, rw string, entity []byte,
	seal func(dst io.Writer, hdr *smime.Header, body io.Reader) error) error {
	br := bufio.NewReader(bytes.NewReader(entity))
	hdr, err := smime.ReadHeader(br, len(entity)+1)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEncrypt, err)
	}
	// The null reverse-path, as for any automatic message (RFC 3834 §3.3):
	// nothing may answer it.
	tx, err := b.cfg.Deliver.Begin(ctx, deliver.Envelope{Rcpts: []string{rw}})
	if err != nil {
		return err
	}
	defer tx.Abort()
	if rej := tx.Rejected(); rej[0] != nil {
		return rej[0]
	}
	if err := seal(tx, hdr, br); err != nil {
		return err
	}
	return tx.Commit()[0]
}

// Delivers reports whether mail to addr is delivered here: it is not the
// enrollment address, its rewritten form is hosted here, and the mail
// store does not refuse it outright. The engine enrolls only such
// addresses (enroll.Options.Delivers). A mail store that cannot be asked
// now does not make the answer no: the challenge's delivery decides then.
func (b *Backend) Delivers(addr string) bool {
	if b.enrollPlan(addr) != nil {
		// The enrollment address in any form (case, subaddress, an
		// alias rewritten to it) is never a mailbox.
		return false
	}
	rw, err := b.cfg.Rewriter.Rewrite(addr)
	if err != nil {
		// A rule gives an invalid address: the configuration is wrong,
		// which delays mail (451 4.3.5) and must not refuse a request as
		// for an address not delivered here; the challenge's delivery
		// decides.
		return true
	}
	if recipients.Validate(rw) != nil {
		return false
	}
	if b.plan.hosted != nil && !b.plan.hosted[recipients.Domain(rw)] {
		return false
	}
	v, ok := b.cfg.Deliver.(deliver.Verifier)
	if !ok {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var se *smtp.SMTPError
	return !(errors.As(v.Verify(ctx, "", rw), &se) && se.Code >= 500)
}
