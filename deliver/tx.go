package deliver

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/smimefilter/smimefilter/internal/mailbox"
)

// converse runs one command group on a pooled connection: the one dialogue
// of Begin and Verify. A reused connection gets RSET in front of the group,
// in the same write where the peer pipelines: a RSET answered other than
// 250 (or not at all) means the peer dropped the connection while it sat
// idle, as Dovecot does after its own idle timeout. That says nothing about
// this mail, so the idle connections are closed and the group runs once
// more on a new connection.
//
// build makes the group for the connection's extensions; more is
// client.exchange's. On success the connection is bound to ctx and the
// replies are the group's, without the RSET's; the caller puts it back.
func (p *Pool) converse(ctx context.Context, build func(*client) []string, more func([]reply) bool) (*poolConn, []reply, error) {
	for attempt := 0; ; attempt++ {
		pc, err := p.get(ctx)
		if err != nil {
			return nil, nil, err
		}
		pc.bind(ctx)
		cmds := build(pc.c)
		skip := 0
		if pc.reused {
			cmds = append([]string{"RSET"}, cmds...)
			skip = 1
		}
		replies, err := pc.c.exchange(cmds, func(done []reply) bool {
			if len(done) == skip {
				return done[0].code == 250
			}
			return more(done[skip:])
		})
		if skip == 1 && (len(replies) == 0 || replies[0].code != 250) {
			p.discard(pc)
			if attempt == 0 && ctx.Err() == nil {
				p.dropIdle()
				continue
			}
			if err == nil {
				err = replies[0].err()
			}
			return nil, nil, fmt.Errorf("RSET on a reused connection: %w: %w", ErrConnection, err)
		}
		if err != nil {
			p.discard(pc)
			return nil, nil, fmt.Errorf("%s: %w: %w", cmds[min(len(replies), len(cmds)-1)], ErrConnection, err)
		}
		return pc, replies[skip:], nil
	}
}

// checkEnvelope refuses what would break the command lines: the last line
// of defence against command injection. A line break is refused anywhere;
// an angle bracket only outside the local part, which mailbox.Quote sends
// as a Quoted-string whenever it is not a Dot-string (RFC 5321 §4.1.2:
// `RCPT TO:<"a<b>c"@example.org>` is well-formed, and Dovecot takes it).
func checkEnvelope(env Envelope) error {
	for _, a := range append([]string{env.From}, env.Rcpts...) {
		unquoted := a
		if at := strings.LastIndexByte(a, '@'); at > 0 {
			unquoted = a[at:]
		}
		if strings.ContainsAny(a, "\r\n") || strings.ContainsAny(unquoted, "<>") {
			return fmt.Errorf("address %q: %w: %w", a, ErrAborted, errProtocol)
		}
	}
	return nil
}

func accepted(r reply) bool { return r.code == 250 || r.code == 251 }

// refusal is the error for a reply that did not accept: the peer's own
// reply, passed through, when it is a refusal (4xx or 5xx); a reply of
// another kind where a refusal or acceptance was due is a protocol error,
// and the connection is not reused after it.
func refusal(r reply) error {
	if r.code >= 400 {
		return r.err()
	}
	return fmt.Errorf("%w: %w: unexpected reply %d %s", ErrConnection, errProtocol, r.code, r.err().Message)
}

// Begin starts a transaction: MAIL FROM, one RCPT TO per recipient and DATA,
// pipelined (RFC 2920) when the peer offers it, which Dovecot and Postfix
// do. The context bounds the whole transaction, up to the end of Commit.
func (p *Pool) Begin(ctx context.Context, env Envelope) (Tx, error) {
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	n := len(env.Rcpts)
	build := func(c *client) []string {
		cmds := make([]string, 0, n+2)
		cmds = append(cmds, mailCommand(c, env))
		for _, r := range env.Rcpts {
			cmds = append(cmds, "RCPT TO:<"+mailbox.Quote(r)+">")
		}
		return append(cmds, "DATA")
	}
	// In lock step: nothing after a refused MAIL, no DATA without a
	// recipient.
	more := func(done []reply) bool {
		if done[0].code != 250 {
			return false
		}
		return len(done) <= n || anyAccepted(done[1:])
	}
	pc, replies, err := p.converse(ctx, build, more)
	if err != nil {
		return nil, err
	}
	tx := &poolTx{p: p, pc: pc, rejected: make([]error, n), clean: true}
	if len(replies) == n+2 && replies[n+1].code == 354 && (replies[0].code != 250 || !anyAccepted(replies[1:n+1])) {
		// The peer waits for a message nobody means to send (RFC 2920
		// §3.1 forbids taking DATA without a valid recipient).
		p.discard(pc)
		return nil, fmt.Errorf("DATA: %w: %w: DATA accepted with no valid recipient", ErrConnection, errProtocol)
	}
	if replies[0].code != 250 {
		// The peer's own refusal, for all recipients.
		p.put(pc, false)
		return nil, refusal(replies[0])
	}
	for i, r := range replies[1:min(len(replies), n+1)] {
		if accepted(r) {
			tx.accepted++
		} else {
			tx.rejected[i] = refusal(r)
			tx.clean = tx.clean && r.code >= 400
		}
	}
	switch {
	case tx.accepted == 0:
		// DATA, if sent, was refused as RFC 2920 requires: nothing to send.
	case replies[n+1].code == 354:
		tx.data = &dotWriter{c: pc.c, timeout: p.opts.CommandTimeout, bol: true}
	default:
		// A refused DATA is the answer for every recipient taken at RCPT.
		refused := refusal(replies[n+1])
		for i := range tx.rejected {
			if tx.rejected[i] == nil {
				tx.rejected[i] = refused
			}
		}
		tx.accepted = 0
		tx.clean = false
	}
	return tx, nil
}

func anyAccepted(rs []reply) bool {
	for _, r := range rs {
		if accepted(r) {
			return true
		}
	}
	return false
}

// mailCommand is MAIL FROM with the parameters the peer offers.
func mailCommand(c *client, env Envelope) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + mailbox.Quote(env.From) + ">")
	if c.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME") // RFC 6152
	}
	if c.has("SIZE") && env.Size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(env.Size, 10)) // RFC 1870
	}
	// Dovecot's LMTP takes UTF-8 addresses without SMTPUTF8; ask for it
	// only where offered (RFC 6531).
	if env.UTF8 && c.has("SMTPUTF8") {
		b.WriteString(" SMTPUTF8")
	}
	return b.String()
}

// Verify asks the next hop about one recipient with MAIL and RCPT, in one
// round trip where pipelining allows. No message is sent; the transaction
// left open is reset by the RSET in front of the connection's next use.
func (p *Pool) Verify(ctx context.Context, from, rcpt string) error {
	if err := checkEnvelope(Envelope{From: from, Rcpts: []string{rcpt}}); err != nil {
		return err
	}
	// The MAIL command Begin would send, so that the answer is the one the
	// delivery would get.
	env := Envelope{From: from, UTF8: !isASCII(from) || !isASCII(rcpt)}
	build := func(c *client) []string {
		return []string{mailCommand(c, env), "RCPT TO:<" + mailbox.Quote(rcpt) + ">"}
	}
	pc, replies, err := p.converse(ctx, build, func(done []reply) bool { return done[0].code == 250 })
	if err != nil {
		return err
	}
	// As in Begin, a refused MAIL ends the connection's use.
	p.put(pc, replies[0].code == 250 && (accepted(replies[1]) || replies[1].code >= 400))
	switch {
	case replies[0].code != 250:
		// A refused MAIL says nothing about the recipient: not its reply.
		return fmt.Errorf("verify: MAIL refused (%v), nothing learned about %s: %w", refusal(replies[0]), rcpt, ErrAborted)
	case !accepted(replies[1]):
		return refusal(replies[1])
	}
	return nil
}

// poolTx is one transaction on a pooled connection. The connection serves
// again only after a transaction the peer carried to its end, answering
// each recipient on its own. A refusal of the transaction as a whole (of
// MAIL, of DATA, SMTP's reply after the data), a 421, a timeout, an I/O
// error or the end of the context closes it.
type poolTx struct {
	p        *Pool
	pc       *poolConn
	rejected []error
	accepted int
	data     *dotWriter // nil when there is nothing to send
	clean    bool       // the connection may serve again if nothing else goes wrong
	err      error      // sticky
	done     bool
}

func (tx *poolTx) Rejected() []error { return tx.rejected }

func (tx *poolTx) Write(b []byte) (int, error) {
	if tx.done {
		// The connection may already serve another transaction.
		return 0, ErrAborted
	}
	if tx.err != nil {
		return 0, tx.err
	}
	if tx.data == nil {
		// Nothing to send to; swallow the bytes so the caller need not care.
		return len(b), nil
	}
	if _, err := tx.data.Write(b); err != nil {
		tx.err = fmt.Errorf("writing message data: %w: %w", ErrConnection, err)
		return 0, tx.err
	}
	return len(b), nil
}

// Commit sends the final dot and reads the outcome: for LMTP one reply per
// accepted recipient, in RCPT order (RFC 2033 §4.2); for SMTP one for the
// transaction.
func (tx *poolTx) Commit() []error {
	if tx.done {
		return allErr(len(tx.rejected), ErrAborted)
	}
	tx.done = true
	if tx.data == nil {
		tx.p.put(tx.pc, tx.clean)
		return tx.rejected
	}
	if tx.err == nil {
		if err := tx.data.end(); err != nil {
			tx.err = fmt.Errorf("ending message data: %w: %w", ErrConnection, err)
		}
	}
	if tx.err != nil {
		tx.p.discard(tx.pc)
		return tx.merge(func(int) error { return tx.err })
	}
	n := 1
	if tx.p.opts.LMTP {
		n = tx.accepted
	}
	replies := make([]error, 0, n)
	var lost error
	for range n {
		r, err := tx.pc.c.readReply(tx.p.opts.DataTimeout)
		if err != nil {
			// The fate of this and later recipients is unknown: a
			// temporary failure, so Postfix retries. The peer may have
			// delivered; a duplicate is better than a loss.
			lost = fmt.Errorf("reading replies after data: %w: %w", ErrConnection, err)
			break
		}
		if r.code == 421 {
			lost = fmt.Errorf("replies after data: %w: %w", ErrConnection, r.err())
			break
		}
		if accepted(r) {
			replies = append(replies, nil)
			continue
		}
		// An LMTP refusal here is one mailbox's answer (a full one, say);
		// SMTP's is the whole transaction's.
		tx.clean = tx.clean && tx.p.opts.LMTP && r.code >= 400
		replies = append(replies, refusal(r))
	}
	tx.p.put(tx.pc, tx.clean && lost == nil)
	return tx.merge(func(k int) error {
		if !tx.p.opts.LMTP {
			k = 0
		}
		if k < len(replies) {
			return replies[k]
		}
		return lost
	})
}

// merge builds the result: RCPT-time refusals, then each accepted
// recipient's outcome by its position among the accepted.
func (tx *poolTx) merge(outcome func(k int) error) []error {
	out := make([]error, len(tx.rejected))
	k := 0
	for i := range tx.rejected {
		if tx.rejected[i] != nil {
			out[i] = tx.rejected[i]
			continue
		}
		out[i] = outcome(k)
		k++
	}
	return out
}

// Abort abandons the transaction. Before the data there is nothing to take
// back; during it the only way is to drop the connection before the final
// dot, so the peer discards what it got.
func (tx *poolTx) Abort() {
	if tx.done {
		return
	}
	tx.done = true
	if tx.data == nil && tx.err == nil {
		tx.p.put(tx.pc, tx.clean)
		return
	}
	tx.p.discard(tx.pc)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
