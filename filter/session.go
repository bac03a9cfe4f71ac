package filter

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/smime"
)

// action is what happens to one recipient's copy.
type action int

const (
	actEncrypt   action = iota // encrypted to the recipient's certificates
	actPlaintext               // no certificate, policy plaintext: marked, unencrypted
	actPass                    // already encrypted: delivered unchanged
	actReinject                // not hosted here: handed back unchanged
	actRefused                 // refused at RCPT
)

func (a action) String() string {
	return [...]string{"encrypt", "plaintext", "passthrough", "reinject", "refused"}[a]
}

// rcpt is the plan for one RCPT TO, decided when it arrives.
type rcpt struct {
	addr      string // as received: go-smtp's key for its status
	rewritten string
	action    action
	certs     []*certs.Cert
}

type session struct {
	b      *Backend
	id     string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	// txMu guards inTx, inData and closed: go-smtp calls Logout from the
	// goroutine that closes the connection, possibly while LMTPData runs.
	txMu   sync.Mutex
	inTx   bool // between MAIL and the end of the transaction
	inData bool
	closed bool

	// The transaction.
	seq    int
	from   string
	opts   smtp.MailOptions
	store  *certs.Store
	rcpts  []*rcpt
	copies map[string]bool // copyKey of each planned copy
	logout sync.Once
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

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.Reset()
	if !s.b.beginTx() {
		return s.reply(ErrShuttingDown)
	}
	s.txMu.Lock()
	s.inTx = true
	s.txMu.Unlock()
	s.seq++
	s.from = from
	if opts != nil {
		s.opts = *opts
	}
	if s.b.cfg.Certs != nil {
		// One snapshot for the whole transaction: a reload in between
		// cannot give two recipients plans from two stores.
		s.store = s.b.cfg.Certs.Current()
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	r, err := s.plan(to)
	if err == nil {
		err = s.countCopy(r)
	}
	if err != nil {
		se := s.reply(err)
		s.logOutcome(&rcpt{addr: to, rewritten: r.rewritten, action: actRefused}, se, 0, time.Time{}, err)
		return se
	}
	s.rcpts = append(s.rcpts, r)
	return nil
}

// countCopy enforces MaxCopies: every distinct certificate set is one more
// outbound transaction held open while the body streams. Beyond the limit,
// 452 4.5.3 makes the client send those recipients in a later transaction
// (RFC 5321 §4.5.3.1.10), which Postfix does at once.
func (s *session) countCopy(r *rcpt) error {
	key := copyKey(r.action, r.certs)
	if s.copies[key] {
		return nil
	}
	if len(s.copies) >= s.b.cfg.MaxCopies {
		return fmt.Errorf("recipient %q would be copy %d of at most %d: %w", r.addr, len(s.copies)+1, s.b.cfg.MaxCopies, ErrTooManyCopies)
	}
	if s.copies == nil {
		s.copies = map[string]bool{}
	}
	s.copies[key] = true
	return nil
}

// copyKey names the copy a recipient gets: same key, same bytes.
func copyKey(act action, cs []*certs.Cert) string {
	fps := make([]string, 0, len(cs))
	if act == actEncrypt {
		for _, c := range cs {
			fps = append(fps, c.Fingerprint)
		}
		slices.Sort(fps)
	}
	return act.String() + "|" + strings.Join(fps, ",")
}

// plan decides what happens to one recipient. Policy decisions are made
// here, at RCPT time, so that refusals never depend on the message.
func (s *session) plan(to string) (*rcpt, error) {
	r := &rcpt{addr: to}
	rw, err := s.b.cfg.Rewriter.Rewrite(to)
	if err != nil {
		// A rule produced an unusable address: the configuration is wrong,
		// not the mail, so the mail waits until it is fixed.
		r.rewritten = rw
		return r, fmt.Errorf("recipient %q: %w", to, err)
	}
	r.rewritten = rw
	if !s.b.hosted(recipients.Domain(rw)) {
		r.action = actReinject
		return r, nil
	}
	key := to
	if s.b.cfg.LookupRewritten {
		key = rw
	}
	if s.store != nil {
		r.certs = s.store.Lookup(key)
		if len(r.certs) == 0 {
			if base, ok := stripDetail(key, s.b.cfg.RecipientDelimiter); ok {
				// alice+lists@ is alice's mailbox and alice's key.
				r.certs = s.store.Lookup(base)
			}
		}
	}
	if len(r.certs) > 0 {
		r.action = actEncrypt
		return r, nil
	}
	pol := s.b.cfg.Policy.For(key)
	if pol == Plaintext {
		r.action = actPlaintext
		return r, nil
	}
	if v, ok := s.b.cfg.Deliver.(deliver.Verifier); ok {
		// Ask the mail store first: a user it does not have must bounce
		// now with its own answer, not wait days in the queue for a
		// certificate. Anything but a permanent refusal leaves the
		// decision to the policy.
		var se *smtp.SMTPError
		if err := v.Verify(s.ctx, s.from, rw); errors.As(err, &se) && se.Code >= 500 {
			return r, fmt.Errorf("recipient %q refused by the mail store: %w", rw, se)
		}
	}
	if pol == Reject {
		return r, fmt.Errorf("recipient %q: %w", key, ErrPolicyReject)
	}
	return r, fmt.Errorf("recipient %q: %w", key, ErrNoCertificate)
}

// stripDetail removes a subaddress ("+detail", with any of the delimiter
// characters, as Postfix's recipient_delimiter) from addr's local part.
func stripDetail(addr, delims string) (string, bool) {
	if delims == "" {
		return "", false
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "", false
	}
	i := strings.IndexAny(addr[:at], delims)
	if i <= 0 {
		return "", false
	}
	return addr[:i] + addr[at:], true
}

// endTx marks the transaction over for the shutdown count, once.
func (s *session) endTx() {
	if s.inTx {
		s.inTx = false
		s.b.endTx()
	}
}

func (s *session) Reset() {
	s.txMu.Lock()
	s.endTx()
	s.txMu.Unlock()
	s.from = ""
	s.opts = smtp.MailOptions{}
	s.store = nil
	s.rcpts = nil
	s.copies = nil
}

func (s *session) Logout() error {
	// Called by go-smtp from whichever goroutine closes the connection,
	// possibly while LMTPData runs: only cancel here, LMTPData cleans up.
	s.logout.Do(func() {
		s.txMu.Lock()
		s.closed = true
		if !s.inData {
			// A client gone between MAIL and DATA: go-smtp will not call
			// Reset, and shutdown must not wait for this transaction.
			s.endTx()
		}
		s.txMu.Unlock()
		s.cancel()
		s.b.Stats.Connections.Add(-1)
		s.log.Debug("connection closed")
	})
	return nil
}

// Data is the SMTP form, used only if go-smtp runs without LMTP. One reply
// must stand for every recipient, so any failure fails them all, and a
// temporary one wins over a permanent one: the client retries, the
// recipients already delivered get a duplicate, and none is lost.
func (s *session) Data(r io.Reader) error {
	var worst *smtp.SMTPError
	s.deliver(r, func(_ *rcpt, se *smtp.SMTPError) {
		if se != nil && (worst == nil || se.Code/100 < worst.Code/100) {
			worst = se
		}
	})
	if worst != nil {
		return worst
	}
	return nil
}

// LMTPData implements smtp.LMTPSession: one status per RCPT, RFC 2033 §4.2.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	s.deliver(r, func(rc *rcpt, se *smtp.SMTPError) {
		if se == nil {
			// Not se itself: a nil *SMTPError in an error interface is
			// not nil, and go-smtp would report it as a failure.
			status.SetStatus(rc.addr, nil)
		} else {
			status.SetStatus(rc.addr, se)
		}
	})
	return nil
}

// group is one outbound transaction: recipients that get the very same
// bytes (same action, same certificate set, same target).
type group struct {
	target deliver.Target
	action action
	certs  []*x509.Certificate
	fps    []string
	rcpts  []*rcpt
	addrs  []string // distinct rewritten addresses, the envelope
	index  []int    // rcpts[i] is envelope recipient index[i]

	tx      deliver.Tx
	bw      *bufio.Writer
	w       io.Writer // where body bytes go
	closer  io.Closer // ends the transformation, if any
	err     error     // sticky: this copy failed
	results []error   // per envelope recipient
}

const copyBufSize = 32 << 10

// Buffers are reused across transactions: at thousands of small messages
// a second, allocating them each time was most of the filter's garbage.
var (
	copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
	readers  = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, copyBufSize) }}
	writers  = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, copyBufSize) }}
)

// deliver runs the DATA phase: read the header, make the copies, stream the
// body once into all of them, commit each, and report every recipient.
func (s *session) deliver(r io.Reader, report func(*rcpt, *smtp.SMTPError)) {
	s.txMu.Lock()
	s.inData = true
	s.txMu.Unlock()
	defer func() {
		s.txMu.Lock()
		s.inData = false
		if s.closed {
			s.endTx()
		}
		s.txMu.Unlock()
	}()
	start := time.Now()
	cr := &countingReader{r: r}
	br := readers.Get().(*bufio.Reader)
	br.Reset(cr)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	rcpts := s.rcpts

	failAll := func(err error) {
		se := s.reply(err)
		for _, rc := range rcpts {
			s.logOutcome(rc, se, cr.n, start, err)
			report(rc, se)
		}
	}

	hdr, err := smime.ReadHeader(br, s.b.cfg.MaxHeaderBytes)
	if err != nil {
		failAll(fmt.Errorf("reading message header: %w", dataErr(err)))
		return
	}
	encrypted := smime.IsEncrypted(hdr, br)
	groups := s.group(rcpts, encrypted)

	ctx := s.ctx
	for _, g := range groups {
		s.begin(ctx, g, hdr)
	}

	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	var rerr error
	for {
		n, err := br.Read(buf)
		if n > 0 {
			for _, g := range groups {
				if g.err == nil {
					if _, werr := g.w.Write(buf[:n]); werr != nil {
						g.err = fmt.Errorf("writing copy: %w", werr)
					}
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = dataErr(err)
			break
		}
	}
	if rerr != nil {
		// The message did not arrive whole: no copy may be delivered.
		for _, g := range groups {
			if g.tx != nil {
				g.tx.Abort()
			}
		}
		failAll(fmt.Errorf("reading message: %w", rerr))
		return
	}

	// Commit the copies in parallel: each waits for its next hop's
	// delivery, and those waits should overlap, not add up.
	if len(groups) == 1 {
		s.finish(groups[0]) // the common case needs no goroutine
	} else {
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(func() { s.finish(g) })
		}
		wg.Wait()
	}

	for _, g := range groups {
		for i, rc := range g.rcpts {
			err := g.results[g.index[i]]
			var se *smtp.SMTPError
			if err != nil {
				se = s.reply(err)
			}
			s.logOutcome(rc, se, cr.n, start, err, "certs", g.fps)
			report(rc, se)
		}
	}
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

// group sorts recipients into outbound transactions.
func (s *session) group(rcpts []*rcpt, encrypted bool) []*group {
	var groups []*group
	byKey := map[string]*group{}
	for _, rc := range rcpts {
		act := rc.action
		if encrypted && (act == actEncrypt || act == actPlaintext) {
			// Already encrypted by the sender: stored as it is, readable
			// only by its intended recipients anyway.
			act = actPass
		}
		target := s.b.cfg.Deliver
		if act == actReinject {
			target = s.b.cfg.Reinject
		}
		// One envelope per distinct certificate set: a shared envelope
		// would list every recipient's certificate and so reveal Bcc.
		key := copyKey(act, rc.certs)
		g := byKey[key]
		if g == nil {
			g = &group{target: target, action: act}
			if act == actEncrypt {
				for _, c := range rc.certs {
					g.fps = append(g.fps, c.Fingerprint)
					g.certs = append(g.certs, c.Certificate)
				}
			}
			byKey[key] = g
			groups = append(groups, g)
		}
		// Two original addresses rewritten to one mailbox are one delivery.
		idx := slices.Index(g.addrs, rc.rewritten)
		if idx < 0 {
			idx = len(g.addrs)
			g.addrs = append(g.addrs, rc.rewritten)
		}
		g.rcpts = append(g.rcpts, rc)
		g.index = append(g.index, idx)
	}
	return groups
}

// begin opens the outbound transaction of g and writes what precedes the
// body. Failures are recorded in g, never returned: other copies go on.
func (s *session) begin(ctx context.Context, g *group, hdr *smime.Header) {
	env := deliver.Envelope{From: s.from, Rcpts: g.addrs, UTF8: s.opts.UTF8}
	if g.action == actPass || g.action == actReinject {
		env.Size = s.opts.Size
	}
	tx, err := g.target.Begin(ctx, env)
	if err != nil {
		g.err = err
		return
	}
	g.tx = tx
	g.bw = writers.Get().(*bufio.Writer)
	g.bw.Reset(tx)
	g.w = g.bw
	switch g.action {
	case actEncrypt:
		ew, err := smime.Encrypt(g.bw, hdr, g.certs, s.b.cfg.SMIME)
		if err != nil {
			g.err = fmt.Errorf("%w: %w", ErrEncrypt, err)
			return
		}
		g.w, g.closer = ew, ew
	case actPlaintext:
		_, err = io.WriteString(g.bw, PlaintextHeader+": plaintext; reason=no-certificate\r\n")
		if err == nil {
			_, err = hdr.WriteTo(g.bw)
		}
	default:
		_, err = hdr.WriteTo(g.bw)
	}
	if err != nil {
		g.err = fmt.Errorf("writing copy: %w", err)
	}
}

// finish ends g's copy and collects its per-recipient results.
func (s *session) finish(g *group) {
	if g.err == nil && g.closer != nil {
		if err := g.closer.Close(); err != nil {
			g.err = fmt.Errorf("%w: %w", ErrEncrypt, err)
		}
	}
	if g.err == nil && g.bw != nil {
		if err := g.bw.Flush(); err != nil {
			g.err = fmt.Errorf("writing copy: %w", err)
		}
	}
	if g.bw != nil {
		g.bw.Reset(nil)
		writers.Put(g.bw)
		g.bw = nil
	}
	switch {
	case g.tx == nil:
		g.results = deliverErrs(len(g.addrs), g.err)
	case g.err != nil:
		g.tx.Abort()
		// Refusals at RCPT stay what they were; the rest share the failure.
		g.results = g.tx.Rejected()
		for i := range g.results {
			if g.results[i] == nil {
				g.results[i] = g.err
			}
		}
	default:
		g.results = g.tx.Commit()
	}
}

func deliverErrs(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// logOutcome writes the one line per recipient outcome.
func (s *session) logOutcome(rc *rcpt, se *smtp.SMTPError, size int64, start time.Time, err error, extra ...any) {
	code, enh, level := 250, "2.0.0", slog.LevelInfo
	if se != nil {
		code = se.Code
		enh = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		level = slog.LevelWarn
		if code >= 500 || errors.Is(err, recipients.ErrInvalidAddress) {
			// A rewrite rule producing garbage is the administrator's to
			// fix, however temporary the reply.
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

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
