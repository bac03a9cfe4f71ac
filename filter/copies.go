package filter

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/encrypted"
	"github.com/smimefilter/smimefilter/internal/mediatype"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
)

// The DATA phase. The message is read once and encrypted once per output
// format its copies need (seals.go), into a spool of ciphertext (package
// spool), while a checker decides
// whether it was already encrypted as a whole (package encrypted). Then the
// copies go out one after another over the pool, each a separate
// transaction: encrypted copies differ only in their RecipientInfos, and
// unencrypted ones (plaintext policy, verified pass-through, re-injection)
// are decrypted back from the spool with the key held in memory. So any
// number of certificate sets fits in one transaction, the CPU cost of a
// message hardly grows with its copies, memory is bounded by the spool's
// memory limit whatever the size, and plaintext never touches the disk.

// message is one received message, ready to make copies from.
type message struct {
	hdr *smime.Header
	// smime and pgp are the seals that run (nil: no copy needs that
	// format); at least one does, so that unencrypted copies can be
	// decrypted back from it.
	smime, pgp *sealing
	// pass: the body was verified to be encrypted as a whole, so it is
	// stored as it came.
	pass bool
	// live is the copy that streamed while the message arrived, if one
	// did; partial: its seal's spool does not hold the whole message (the
	// live copy was the only one).
	live    *liveCopy
	partial bool
	// plan is the copies when the message is not passed through.
	plan []*outCopy
}

func (m *message) close() {
	if m.live != nil {
		m.live.tx.Abort() // a no-op once committed
	}
	m.smime.close()
	m.pgp.close()
}

// sealingFor returns the seal that makes c's encrypted bytes.
func (m *message) sealingFor(c *outCopy) *sealing {
	if c.action == actEncryptPGP {
		return m.pgp
	}
	return m.smime
}

// primary is the seal unencrypted copies are decrypted back from.
func (m *message) primary() *sealing {
	if m.smime != nil {
		return m.smime
	}
	return m.pgp
}

// outCopy is one outbound transaction: recipients that get the very same
// bytes (same action, same certificate set, same target).
type outCopy struct {
	target deliver.Target
	action action
	certs  []*x509.Certificate // S/MIME recipients
	keys   []*packet.PublicKey // OpenPGP recipients: the encryption keys
	fps    []string            // of certs or of keys, for the log
	rcpts  []*rcpt
	addrs  []string // distinct rewritten addresses: the envelope
	index  []int    // rcpts[i] is envelope recipient index[i]
}

const copyBufSize = 32 << 10

// Read buffers are reused across messages and cleared before they go back:
// they held plaintext.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// deliver runs the DATA phase and reports every recipient.
func (s *session) deliver(r io.Reader, report func(*rcpt, *smtp.SMTPError)) {
	start := time.Now()
	cr := &countingReader{r: r}
	rcpts, enr := splitEnroll(s.rcpts)
	var in io.Reader = cr
	var capture *boundedBuffer
	if enr != nil {
		// The message is read once: the enrollment recipients get a
		// bounded copy of the bytes as they pass (enroll.go), and are
		// answered after the others.
		capture = s.b.newEnrollCapture()
		in = io.TeeReader(cr, capture)
		if len(rcpts) == 0 {
			if _, err := io.Copy(io.Discard, in); err != nil {
				s.failAll(enr, fmt.Errorf("reading message: %w", dataErr(err)), cr.n, start, report)
				return
			}
			s.handleEnroll(enr, capture, cr.n, start, report)
			return
		}
	}
	msg, err := s.receive(in, rcpts)
	if enr != nil && err == nil {
		// After the other copies, and also when sending them panics;
		// not when the message did not arrive whole (below), nor while a
		// panic in receive unwinds (LMTPData then defers everyone).
		defer s.handleEnroll(enr, capture, cr.n, start, report)
	}
	if err != nil {
		// The message did not arrive whole: every recipient, the
		// enrollment address's too, gets the error; the engine must not
		// see half of it.
		rcpts = s.rcpts
		se := s.reply(err)
		for _, rc := range rcpts {
			s.logOutcome(rc, se, cr.n, start, err)
			report(rc, se)
		}
		return
	}
	defer msg.close()
	plan := msg.plan
	if msg.pass {
		plan = s.copies(rcpts, true)
	}
	if msg.live != nil {
		// The live copy first: it holds a connection, and a session must
		// never wait for a second one while holding one.
		plan = append([]*outCopy{msg.live.c}, slices.DeleteFunc(slices.Clone(plan), func(c *outCopy) bool { return c == msg.live.c })...)
	}
	for _, c := range plan {
		var results []error
		if msg.live != nil && c == msg.live.c {
			results = s.finishLive(msg.live, msg)
		} else {
			results = s.send(c, msg)
		}
		for i, rc := range c.rcpts {
			err := results[c.index[i]]
			var se *smtp.SMTPError
			if err != nil {
				se = s.reply(err)
			}
			if c.action != rc.action {
				rc.action = c.action // logged as what happened
			}
			s.logOutcome(rc, se, cr.n, start, err, "certs", c.fps)
			report(rc, se)
		}
	}
}

// receive reads the whole message: the header, then the body into the seal
// and the checker. Nothing is delivered if it does not arrive whole.
func (s *session) receive(r io.Reader, rcpts []*rcpt) (*message, error) {
	// A small reader of its own per message, not pooled: it holds
	// plaintext, and large reads pass through it unbuffered anyway.
	br := bufio.NewReaderSize(r, 4096)
	hdr, err := smime.ReadHeader(br, s.b.cfg.MaxHeaderBytes)
	if err != nil {
		drain(br)
		return nil, fmt.Errorf("reading message header: %w", dataErr(err))
	}
	msg := &message{hdr: hdr, plan: s.copies(rcpts, false)}
	received := false
	defer func() {
		// On every way out but success, a panic included: the keys are
		// forgotten, the spools closed, a live copy's transaction aborted
		// and its connection given back.
		if !received {
			msg.close()
		}
	}()
	if err := s.startSeals(msg); err != nil {
		drain(br)
		return nil, fmt.Errorf("%w: %w", ErrEncrypt, err)
	}
	var ws []io.Writer
	for _, g := range []*sealing{msg.smime, msg.pgp} {
		if g != nil {
			ws = append(ws, g.seal)
		}
	}
	chk := encrypted.NewChecker(hdr.Get("Content-Type"), hdr.Get("Content-Transfer-Encoding"))
	if chk != nil {
		chk.Write(hdr.Lead())
		ws = append(ws, chk)
	}
	w := ws[0]
	if len(ws) > 1 {
		w = io.MultiWriter(ws...)
	}
	// The first encrypted copy streams as the message arrives (live.go).
	var cand *outCopy
	for _, c := range msg.plan {
		if c.action.encrypts() {
			cand = c
			break
		}
	}
	tryLive := func() {
		if cand != nil && msg.live == nil && chk.Refused() {
			msg.live = s.startLive(cand, msg, len(msg.plan) == 1)
			cand = nil // one attempt
		}
	}
	tryLive()

	bufp := copyBufs.Get().(*[]byte)
	buf := *bufp
	defer func() {
		clear(buf)
		copyBufs.Put(bufp)
	}()
	var werr, rerr error
	for {
		n, err := br.Read(buf)
		if n > 0 && werr == nil {
			// After a failed write the rest is still read, so that the
			// client's next command is found where it should be.
			_, werr = w.Write(buf[:n])
			tryLive()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = dataErr(err)
			break
		}
	}
	for _, g := range []*sealing{msg.smime, msg.pgp} {
		if g != nil && werr == nil {
			werr = g.seal.Close()
		}
	}
	switch {
	case rerr != nil:
		// The message did not arrive whole: no copy may be delivered.
		err = fmt.Errorf("reading message: %w", rerr)
	case werr != nil:
		err = fmt.Errorf("%w: %w", ErrSpool, werr)
	}
	if err != nil {
		return nil, err
	}
	if chk != nil {
		var why string
		msg.pass, why = chk.Result()
		if !msg.pass && claimsEncryption(hdr) {
			s.log.Info("message claims to be encrypted but is not as a whole: encrypting it", "tx", s.txID(), "reason", why)
		}
	}
	received = true
	return msg, nil
}

// startSeals starts the seals msg's copies need: S/MIME when a copy is for
// certificates, OpenPGP when one is for keys, and S/MIME alone when none is
// encrypted (plaintext policy, re-injection, or a pass-through that still
// has to be verified), to hold the message for the copies read back from
// it.
func (s *session) startSeals(msg *message) error {
	var needSMIME, needPGP bool
	for _, c := range msg.plan {
		needSMIME = needSMIME || c.action == actEncrypt
		needPGP = needPGP || c.action == actEncryptPGP
	}
	dir, mem := s.b.cfg.SpoolDir, int(s.b.cfg.SpoolMemory)
	if needSMIME || !needPGP {
		g := newSealing(dir, mem)
		msg.smime = g
		seal, err := smime.NewSeal(g.out, msg.hdr, s.b.cfg.SMIME)
		if err != nil {
			return err
		}
		g.seal = smimeSeal{seal}
	}
	if needPGP {
		g := newSealing(dir, mem)
		msg.pgp = g
		seal, err := pgpmime.NewSeal(g.out, msg.hdr, s.b.cfg.OpenPGP)
		if err != nil {
			return err
		}
		g.seal = pgpSeal{seal}
	}
	return nil
}

// claimsEncryption: the header labels the message as encrypted, so a
// failed check is worth a log line (plain text bodies are checked too, for
// inline PGP, and fail silently).
func claimsEncryption(h *smime.Header) bool {
	mt, _ := mediatype.Parse(h.Get("Content-Type"))
	return mt == "application/pkcs7-mime" || mt == "application/x-pkcs7-mime" || mt == "multipart/encrypted"
}

// drain reads what is left of a message that will not be delivered.
func drain(r io.Reader) {
	io.Copy(io.Discard, r)
}

// copies sorts recipients into outbound transactions, in the order they
// first appear.
func (s *session) copies(rcpts []*rcpt, pass bool) []*outCopy {
	var out []*outCopy
	byKey := map[string]*outCopy{}
	for _, rc := range rcpts {
		act := rc.action
		if pass && (act.encrypts() || act == actPlaintext) {
			// Already encrypted by the sender, verified as a whole: stored
			// as it is, readable only by its intended recipients anyway.
			act = actPass
		}
		key := copyKey(act, rc.certs, rc.keys)
		c := byKey[key]
		if c == nil {
			c = &outCopy{target: s.b.cfg.Deliver, action: act}
			if act == actReinject {
				c.target = s.b.cfg.Reinject
			}
			switch act {
			case actEncrypt:
				for _, cert := range rc.certs {
					c.fps = append(c.fps, cert.Fingerprint)
					c.certs = append(c.certs, cert.Certificate)
				}
			case actEncryptPGP:
				for _, k := range rc.keys {
					c.fps = append(c.fps, k.Fingerprint)
					c.keys = append(c.keys, k.EncryptionKeys(time.Now())...)
				}
			}
			byKey[key] = c
			out = append(out, c)
		}
		// Two original addresses rewritten to one mailbox are one delivery.
		idx := slices.Index(c.addrs, rc.rewritten)
		if idx < 0 {
			idx = len(c.addrs)
			c.addrs = append(c.addrs, rc.rewritten)
		}
		c.rcpts = append(c.rcpts, rc)
		c.index = append(c.index, idx)
	}
	return out
}

// send delivers one copy and returns each envelope recipient's outcome.
func (s *session) send(c *outCopy, msg *message) []error {
	ctx := s.ctx
	if err := ctx.Err(); err != nil {
		// The connection is gone or the daemon is stopping: nothing more
		// goes out for this message.
		return deliverErrs(len(c.addrs), fmt.Errorf("before delivery: %w", err))
	}
	tx, err := c.target.Begin(ctx, s.envelope(c))
	if err != nil {
		return deliverErrs(len(c.addrs), err)
	}
	// Whatever happens below, a panic included, the transaction ends and
	// its connection goes back or is closed; after Commit it is a no-op.
	defer tx.Abort()
	if !slices.Contains(tx.Rejected(), nil) {
		return tx.Rejected() // every recipient refused at RCPT: nothing to send
	}
	if err := writeCopy(tx, c, msg); err != nil {
		tx.Abort()
		// Refusals at RCPT stay what they were; the rest share the failure.
		results := slices.Clone(tx.Rejected())
		for i := range results {
			if results[i] == nil {
				results[i] = err
			}
		}
		return results
	}
	return tx.Commit()
}

// writeCopy writes c's bytes to tx.
func writeCopy(tx deliver.Tx, c *outCopy, msg *message) error {
	if c.action.encrypts() {
		g := msg.sealingFor(c)
		if err := g.seal.writeCopy(tx, g.sp.Reader(), c); err != nil {
			return copyErr(err)
		}
		return nil
	}
	if c.action == actPlaintext {
		if _, err := io.WriteString(tx, PlaintextHeader+": plaintext; reason=no-certificate\r\n"); err != nil {
			return copyErr(err)
		}
	}
	if _, err := msg.hdr.WriteTo(tx); err != nil {
		return copyErr(err)
	}
	g := msg.primary()
	body, err := g.seal.OpenBody(g.sp.Reader())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEncrypt, err)
	}
	bufp := copyBufs.Get().(*[]byte)
	defer func() {
		clear(*bufp)
		copyBufs.Put(bufp)
	}()
	if _, err := io.CopyBuffer(tx, body, *bufp); err != nil {
		return copyErr(err)
	}
	return nil
}

func copyErr(err error) error { return fmt.Errorf("writing copy: %w", err) }

func deliverErrs(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// dataErr names the ways reading DATA can fail.
func dataErr(err error) error {
	switch {
	case errors.Is(err, smtp.ErrTooLongLine):
		return fmt.Errorf("%w: %w", ErrLineTooLong, err)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return fmt.Errorf("%w: %w", ErrClientGone, err)
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
