package enroll

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// HandleMessage takes one message sent to the enrollment address. A
// message whose Subject carries a code is a confirmation or a
// cancellation (no signature needed: the code proves it); any other is a
// request, which must be signed. Mail that is automatic (a bounce, with
// the null envelope sender, or Auto-Submitted, RFC 3834) is taken and
// ignored, so that no loop can start.
//
// The error is for failures of the engine itself (the disk): the caller
// answers 4xx. Refusals of the message are in Result.Err.
func (e *Engine) HandleMessage(envelopeFrom string, msg io.Reader) (Result, error) {
	res, err := e.handle(envelopeFrom, msg)
	if res.Err != nil {
		res.Err = bounded{res.Err}
	}
	return res, err
}

// maxReason bounds the text of a refusal: it goes into an SMTP reply
// (RFC 5321 §4.5.3.1.5: 512 octets a line with the code) and names
// addresses and subjects out of an untrusted certificate.
const maxReason = 400

// bounded is a refusal with its text cut to one safe line; errors.Is still
// sees every error it wraps.
type bounded struct{ err error }

func (b bounded) Error() string { return clean(b.err.Error(), maxReason) }
func (b bounded) Unwrap() error { return b.err }

func (e *Engine) handle(envelopeFrom string, msg io.Reader) (Result, error) {
	if e.opts.ReadOnly {
		return Result{}, ErrReadOnly
	}
	now := e.opts.Now()
	from := clean(envelopeFrom, maxLogField)
	raw, err := io.ReadAll(io.LimitReader(msg, e.opts.MaxMessageSize+1))
	if err != nil {
		return Result{}, fmt.Errorf("enroll: reading the message: %w", err)
	}
	if int64(len(raw)) > e.opts.MaxMessageSize {
		return Result{Err: fmt.Errorf("%w (at most %d bytes)", ErrTooLarge, e.opts.MaxMessageSize)}, nil
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return Result{Err: fmt.Errorf("%w: %w", ErrMalformed, err)}, nil
	}
	body, err := io.ReadAll(m.Body)
	if err != nil {
		return Result{}, fmt.Errorf("enroll: %w", err)
	}
	if from == "" || isAutomatic(m.Header) {
		return Result{Text: "automatic message ignored"}, nil
	}

	sender := strings.ToLower(from)
	e.mu.Lock()
	ok := e.senders.allow(sender, now)
	if ok {
		e.senders.add(sender, now)
	}
	e.mu.Unlock()
	if !ok {
		return Result{Err: fmt.Errorf("%w: more than %d messages from %s in a day", ErrOverLimit, e.opts.MaxRequestsPerSenderPerDay, from)}, nil
	}

	if codes := codesIn(decodeHeader(m.Header.Get("Subject"))); len(codes) > 0 {
		return e.useCode(from, codes, now)
	}
	return e.request(from, &Request{Header: m.Header, Body: body}, now)
}

func isAutomatic(h mail.Header) bool {
	v := strings.ToLower(strings.TrimSpace(h.Get("Auto-Submitted")))
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	return v != "" && v != "no"
}

func decodeHeader(v string) string {
	d := mime.WordDecoder{}
	if s, err := d.DecodeHeader(v); err == nil {
		return s
	}
	return v
}

// request handles a signed request: one challenge per address of the
// certificate that is delivered here.
func (e *Engine) request(from string, r *Request, now time.Time) (Result, error) {
	var (
		cred     *Credential
		kind     Kind
		refusal  error
		unsigned []string // what each kind would have wanted
	)
	for _, k := range e.opts.Kinds {
		c, err := k.VerifyRequest(r, now)
		if err == nil {
			cred, kind = c, k
			break
		}
		if !errors.Is(err, ErrUnsigned) {
			refusal = err
			break
		}
		unsigned = append(unsigned, strings.TrimPrefix(err.Error(), ErrUnsigned.Error()+": "))
	}
	if cred == nil {
		if refusal == nil {
			// Of no kind at all: say what each kind takes.
			refusal = fmt.Errorf("%w: %s", ErrUnsigned, strings.Join(unsigned, "; or "))
		}
		return Result{Err: refusal}, nil
	}
	if n := len(kind.Encode(cred)); n == 0 {
		return Result{Err: fmt.Errorf("%w: the key cannot be stored", ErrUnusableCertificate)}, nil
	} else if n > maxCredential {
		// Every pending request holds its certificate: a huge one,
		// MaxPendingTotal times, would fill the disk.
		return Result{Err: fmt.Errorf("%w: %d bytes of certificates, at most %d", ErrUnusableCertificate, n, maxCredential)}, nil
	}
	var here, elsewhere []string
	// Delivers may ask Dovecot: a certificate with a thousand names must
	// not cause a thousand lookups.
	for i, a := range cred.Addresses {
		if len(here) == maxAddresses || i == 4*maxAddresses {
			break
		}
		if e.opts.Delivers(a) {
			here = append(here, a)
		} else {
			elsewhere = append(elsewhere, a)
		}
	}
	if len(here) == 0 {
		return Result{Err: fmt.Errorf("%w: %s", ErrNotDelivered, strings.Join(elsewhere, ", "))}, nil
	}

	var (
		res             Result
		notes           []string
		sent, overLimit bool
	)
	err := e.locked(true, func(st *state) error {
		for _, addr := range here {
			note, out, temp, err := e.requestFor(st, kind, cred, addr, from, now)
			if err != nil {
				return err
			}
			notes = append(notes, note)
			res.Outgoing = append(res.Outgoing, out...)
			sent = sent || len(out) > 0
			overLimit = overLimit || temp
		}
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	if len(elsewhere) > 0 {
		notes = append(notes, "not delivered here: "+strings.Join(elsewhere, ", "))
	}
	text := strings.Join(notes, "; ")
	if !sent && overLimit {
		return Result{Err: fmt.Errorf("%w: %s", ErrOverLimit, text)}, nil
	}
	res.Text = text
	return res, nil
}

const (
	// maxCredential bounds the stored form of one requested key (a
	// certificate and its issuers are a few KiB).
	maxCredential = 32 << 10
	// maxAddresses bounds the challenges one request sends.
	maxAddresses = 8
)

// requestFor creates or extends the request of one address and returns
// what to send: the challenge, and a notice to the address's current
// certificates when it has any.
func (e *Engine) requestFor(st *state, k Kind, cred *Credential, addr, from string, now time.Time) (note string, out []Outgoing, temp bool, err error) {
	if st.activeFor(addr, cred.Fingerprint) != nil {
		return "already active for " + addr, nil, false, nil
	}
	if cred.Certificate != nil && e.opts.Current != nil && slices.ContainsFunc(e.opts.Current(addr), cred.Certificate.Equal) {
		return "already in use for " + addr, nil, false, nil
	}
	if cred.Key != nil && e.opts.CurrentKeys != nil &&
		slices.ContainsFunc(e.opts.CurrentKeys(addr), func(k *certs.Key) bool { return k.Fingerprint == cred.Fingerprint }) {
		return "already in use for " + addr, nil, false, nil
	}
	id := pendingID(k.Name(), addr, cred.Fingerprint)
	p := st.pendingByID(id)
	if p != nil && p.State == stateConfirmed {
		return fmt.Sprintf("already confirmed for %s, active from %s", addr, p.ActivateAt.UTC().Format(time.RFC3339)), nil, false, nil
	}
	if !e.perAddr.allow(addr, now) {
		return fmt.Sprintf("more than %d requests for %s in a day", e.opts.MaxRequestsPerAddressPerDay, addr), nil, true, nil
	}
	if p == nil {
		if st.pendingFor(addr) >= e.opts.MaxPendingPerAddress {
			return fmt.Sprintf("%d requests for %s are already waiting", e.opts.MaxPendingPerAddress, addr), nil, true, nil
		}
		if len(st.pending) >= e.opts.MaxPendingTotal {
			return "too many requests are waiting", nil, true, nil
		}
		p = &pendingRecord{
			ID: id, Kind: k.Name(), Address: addr, Fingerprint: cred.Fingerprint,
			Credential: string(k.Encode(cred)), Created: now, State: stateChallenged, cred: cred,
		}
	}
	p.Requester = from

	code, hash, err := newCode(e.opts.Rand)
	if err != nil {
		return "", nil, false, err
	}
	expires := now.Add(e.opts.CodeLifetime)
	p.Codes = append(p.Codes, codeRecord{Hash: hash, Expires: expires})
	if len(p.Codes) > maxCodes {
		p.Codes = p.Codes[len(p.Codes)-maxCodes:]
	}
	holders := e.usable(st, addr, now, cred.Fingerprint)
	var cancel string
	if len(holders) > 0 {
		var ch string
		if cancel, ch, err = newCode(e.opts.Rand); err != nil {
			return "", nil, false, err
		}
		p.Cancels = appendCapped(p.Cancels, codeRecord{Hash: ch}, maxCancels)
	}

	challenge, err := e.entity(addr, "Confirm your "+noun(cred)+" for encrypted mail", now,
		e.challengeText(addr, cred, from, code, expires, len(holders) > 0, now))
	if err != nil {
		return "", nil, false, err
	}
	// The requested key alone: only its holder may read the code.
	out = append(out, outgoing(addr, []holder{holderOf(cred, cred.NotAfter)}, challenge, "challenge"))
	outcome := "challenge sent"
	if len(holders) > 0 {
		notice, err := e.entity(addr, "A new "+noun(cred)+" was requested for your address", now,
			e.changeNoticeText(addr, cred, from, holders, cancel, expires, now))
		if err != nil {
			return "", nil, false, err
		}
		out = append(out, outgoing(addr, holders, notice, "change-notice"))
		outcome = fmt.Sprintf("challenge sent; current holder told (%d certificates or keys)", len(holders))
	}

	if err := e.savePending(p); err != nil {
		return "", nil, false, err
	}
	if st.pendingByID(p.ID) == nil {
		st.pending = append(st.pending, p)
	}
	e.perAddr.add(addr, now)
	if err := e.appendLog(LogEntry{Time: now, Address: addr, Action: ActionRequest, Fingerprint: cred.Fingerprint,
		Requester: from, Outcome: outcome, Kind: k.Name(), Request: p.ID}); err != nil {
		return "", nil, false, err
	}
	return "challenge sent to " + addr, out, false, nil
}

func appendCapped(s []codeRecord, c codeRecord, max int) []codeRecord {
	s = append(s, c)
	if len(s) > max {
		s = s[len(s)-max:]
	}
	return s
}

// useCode handles a Subject with code-shaped words.
func (e *Engine) useCode(from string, codes []string, now time.Time) (Result, error) {
	hashes := make([]string, len(codes))
	for i, c := range codes {
		hashes[i] = hashCode(c)
	}
	var res Result
	err := e.locked(true, func(st *state) error {
		var confirm, cancel *pendingRecord
		// Every request is compared, so that the time taken does not
		// depend on which one matched.
		for _, p := range st.pending {
			if matches(p.Codes, hashes, now) && p.State == stateChallenged {
				confirm = p
			}
			if matches(p.Cancels, hashes, now) {
				cancel = p
			}
		}
		var err error
		switch {
		case cancel != nil:
			// A cancellation wins over anything else in the Subject.
			res, err = e.cancel(st, cancel, from, "by a message from "+from, now)
		case confirm != nil:
			confirm.Codes = without(confirm.Codes, hashes)
			res, err = e.confirm(st, confirm, from, now)
		default:
			res = Result{Err: fmt.Errorf("%w; nothing was changed", ErrBadCode)}
		}
		return err
	})
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// confirm uses a confirmation code: activation now when the address has
// no usable certificate, else after ChangeDelay.
func (e *Engine) confirm(st *state, p *pendingRecord, from string, now time.Time) (Result, error) {
	k := e.kinds[p.Kind]
	if _, err := k.Usable(p.cred, now); err != nil {
		if rerr := e.removePending(st, p); rerr != nil {
			return Result{}, rerr
		}
		if lerr := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionDrop, Fingerprint: p.Fingerprint,
			Requester: from, Kind: p.Kind, Request: p.ID, Outcome: "not usable any more: " + err.Error()}); lerr != nil {
			return Result{}, lerr
		}
		return Result{Err: fmt.Errorf("%w: %w", ErrUnusableCertificate, err)}, nil
	}
	holders := e.usable(st, p.Address, now, p.Fingerprint)
	p.State, p.ConfirmedBy, p.Codes = stateConfirmed, from, nil

	if len(holders) == 0 {
		// Recorded as confirmed and due before the certificate file is
		// written: a crash from here on completes the activation at the
		// next Open or Tick, and never loses the confirmation.
		p.ActivateAt = now
		if err := e.savePending(p); err != nil {
			return Result{}, err
		}
		if err := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionConfirm, Fingerprint: p.Fingerprint,
			Requester: from, Kind: p.Kind, Request: p.ID, Outcome: "confirmed; no current certificate, active now"}); err != nil {
			return Result{}, err
		}
		out, err := e.activate(st, p, now)
		if err != nil {
			return Result{}, err
		}
		return Result{Text: fmt.Sprintf("%s %s active for %s", noun(p.cred), p.Fingerprint, p.Address), Outgoing: []Outgoing{out}}, nil
	}

	p.ActivateAt = now.Add(e.opts.ChangeDelay)
	cancel, ch, err := newCode(e.opts.Rand)
	if err != nil {
		return Result{}, err
	}
	p.Cancels = appendCapped(p.Cancels, codeRecord{Hash: ch}, maxCancels)
	notice, err := e.entity(p.Address, "The change of your "+noun(p.cred)+" was confirmed", now,
		e.scheduledText(p.Address, p.cred, from, p.ActivateAt, holders, cancel))
	if err != nil {
		return Result{}, err
	}
	confirmed, err := e.entity(p.Address, "Your confirmation arrived", now, e.confirmedText(p.Address, p.cred, p.ActivateAt))
	if err != nil {
		return Result{}, err
	}
	if err := e.savePending(p); err != nil {
		return Result{}, err
	}
	if err := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionConfirm, Fingerprint: p.Fingerprint,
		Requester: from, Kind: p.Kind, Request: p.ID,
		Outcome: "confirmed; active from " + p.ActivateAt.UTC().Format(time.RFC3339) + " unless cancelled"}); err != nil {
		return Result{}, err
	}
	return Result{
		Text: fmt.Sprintf("confirmed; %s %s active for %s from %s", noun(p.cred), p.Fingerprint, p.Address, p.ActivateAt.UTC().Format(time.RFC3339)),
		Outgoing: []Outgoing{
			outgoing(p.Address, holders, notice, "change-notice"),
			outgoing(p.Address, []holder{holderOf(p.cred, p.cred.NotAfter)}, confirmed, "confirmed"),
		},
	}, nil
}

// activate makes a confirmed, due request take effect. The order is what
// recovery relies on: the certificate file (from then on the store uses
// it), the log line, the removal of the request.
func (e *Engine) activate(st *state, p *pendingRecord, now time.Time) (Outgoing, error) {
	a := &activeRecord{Address: p.Address, Kind: p.Kind, Fingerprint: p.Fingerprint,
		EnrolledAt: now, RequestedBy: p.Requester, Request: p.ID, cred: p.cred}
	if err := e.step(stepWriteActive); err != nil {
		return Outgoing{}, err
	}
	if err := e.writeActive(st, a); err != nil {
		return Outgoing{}, err
	}
	if err := e.step(stepLog); err != nil {
		return Outgoing{}, err
	}
	if err := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionActivate, Fingerprint: p.Fingerprint,
		Requester: p.Requester, Kind: p.Kind, Request: p.ID, Outcome: "active"}); err != nil {
		return Outgoing{}, err
	}
	if err := e.step(stepRemovePending); err != nil {
		return Outgoing{}, err
	}
	if err := e.removePending(st, p); err != nil {
		return Outgoing{}, err
	}
	return e.activationNotice(st, p, now)
}

func (e *Engine) step(name string) error {
	if e.failAt == nil {
		return nil
	}
	return e.failAt(name)
}

// activationNotice tells every certificate now active for the address
// (the new one among them) what changed.
func (e *Engine) activationNotice(st *state, p *pendingRecord, now time.Time) (Outgoing, error) {
	all := withHolder(e.usable(st, p.Address, now, ""), holderOf(p.cred, p.cred.NotAfter))
	ent, err := e.entity(p.Address, "Your mail is now encrypted to a new "+noun(p.cred), now,
		e.activatedText(p.Address, p.cred, p.Requester, all))
	if err != nil {
		return Outgoing{}, err
	}
	return outgoing(p.Address, all, ent, "activated"), nil
}

// cancel stops a request, and tells the address (its current certificates
// and the requested one).
func (e *Engine) cancel(st *state, p *pendingRecord, requester, how string, now time.Time) (Result, error) {
	if err := e.removePending(st, p); err != nil {
		return Result{}, err
	}
	if err := e.appendLog(LogEntry{Time: now, Address: p.Address, Action: ActionCancel, Fingerprint: p.Fingerprint,
		Requester: requester, Kind: p.Kind, Request: p.ID, Outcome: "cancelled " + how}); err != nil {
		return Result{}, err
	}
	to := withHolder(e.usable(st, p.Address, now, p.Fingerprint), holderOf(p.cred, p.cred.NotAfter))
	ent, err := e.entity(p.Address, "The "+noun(p.cred)+" change was cancelled", now, e.cancelledText(p.Address, p.cred, how))
	if err != nil {
		return Result{}, err
	}
	return Result{
		Text:     fmt.Sprintf("request for %s (%s %s) cancelled", p.Address, noun(p.cred), p.Fingerprint),
		Outgoing: []Outgoing{outgoing(p.Address, to, ent, "cancelled")},
	}, nil
}
