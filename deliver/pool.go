package deliver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// PoolOptions configure a Pool. Zero values take the defaults shown.
type PoolOptions struct {
	// Network is "unix" or "tcp"; Addr is a socket path or host:port.
	Network, Addr string
	// LMTP selects LMTP (Dovecot); false speaks SMTP (re-injection into
	// Postfix).
	LMTP bool
	// LocalName is sent in LHLO/EHLO. Default: os.Hostname.
	LocalName string
	// MaxConns bounds connections open at once, idle ones included. Default 16.
	MaxConns int
	// MaxIdle bounds connections kept open between transactions. Default 4.
	MaxIdle int
	// IdleTimeout closes a connection idle for longer. Default 30s.
	IdleTimeout time.Duration
	// MaxTransactions per connection before it is closed. Default 100.
	MaxTransactions int
	// MaxLifetime of a connection. Default 10m.
	MaxLifetime time.Duration
	// DialTimeout bounds connecting and the greeting. Default 10s.
	DialTimeout time.Duration
	// CommandTimeout bounds each command's reply and each write of message
	// data. Default 2m.
	CommandTimeout time.Duration
	// DataTimeout bounds the wait for the replies after the final dot, when
	// the next hop does its delivery work. Default 10m.
	DataTimeout time.Duration
}

func (o *PoolOptions) setDefaults() {
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	if o.MaxIdle < 0 {
		o.MaxIdle = 0
	} else if o.MaxIdle == 0 {
		o.MaxIdle = 4
	}
	if o.MaxIdle > o.MaxConns {
		o.MaxIdle = o.MaxConns
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 30 * time.Second
	}
	if o.MaxTransactions <= 0 {
		o.MaxTransactions = 100
	}
	if o.MaxLifetime <= 0 {
		o.MaxLifetime = 10 * time.Minute
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 2 * time.Minute
	}
	if o.DataTimeout <= 0 {
		o.DataTimeout = 10 * time.Minute
	}
	if o.LocalName == "" {
		o.LocalName, _ = os.Hostname()
		if o.LocalName == "" {
			o.LocalName = "localhost"
		}
	}
}

// Pool delivers over LMTP or SMTP and keeps connections for reuse. A
// connection goes back to the pool only after a transaction that ended
// cleanly; after any error it is closed, because the state of the peer is
// then unknown.
type Pool struct {
	opts PoolOptions

	mu     sync.Mutex
	open   int           // connections open, idle ones included
	idle   []*poolConn   // most recently used last
	freed  chan struct{} // closed and replaced whenever open drops or idle grows
	closed bool
	stop   chan struct{}
	reaped sync.WaitGroup
}

type poolConn struct {
	c       *client
	created time.Time
	used    time.Time
	uses    int
	reused  bool // it has served a transaction before this one
}

// NewPool returns a pool; it dials nothing until the first transaction.
func NewPool(opts PoolOptions) *Pool {
	opts.setDefaults()
	p := &Pool{opts: opts, freed: make(chan struct{}), stop: make(chan struct{})}
	p.reaped.Add(1)
	go p.reapIdle()
	return p
}

// Stats is a snapshot for logs and tests.
type Stats struct{ Open, Idle int }

// Stats reports the connections open and idle now.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Open: p.open, Idle: len(p.idle)}
}

// Close closes idle connections at once; connections in use are closed when
// their transaction ends.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.wakeLocked()
	close(p.stop)
	p.mu.Unlock()
	for _, pc := range idle {
		pc.c.quit()
	}
	p.reaped.Wait()
	return nil
}

func (p *Pool) wakeLocked() {
	close(p.freed)
	p.freed = make(chan struct{})
}

// reapIdle closes connections that sat idle too long, so that the peer does
// not keep a process per idle connection and we do not find them half-dead.
func (p *Pool) reapIdle() {
	defer p.reaped.Done()
	t := time.NewTicker(max(p.opts.IdleTimeout/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			var drop []*poolConn
			p.mu.Lock()
			keep := p.idle[:0]
			for _, pc := range p.idle {
				if p.expired(pc, now) {
					drop = append(drop, pc)
				} else {
					keep = append(keep, pc)
				}
			}
			clear(p.idle[len(keep):])
			p.idle = keep
			if len(drop) > 0 {
				p.open -= len(drop)
				p.wakeLocked()
			}
			p.mu.Unlock()
			for _, pc := range drop {
				pc.c.quit()
			}
		}
	}
}

func (p *Pool) expired(pc *poolConn, now time.Time) bool {
	return now.Sub(pc.used) >= p.opts.IdleTimeout || now.Sub(pc.created) >= p.opts.MaxLifetime
}

// get returns an idle connection or dials a new one, waiting while MaxConns
// connections are open.
func (p *Pool) get(ctx context.Context) (*poolConn, error) {
	var (
		waitUntil time.Time
		timer     *time.Timer
	)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		now := time.Now()
		for len(p.idle) > 0 {
			pc := p.idle[len(p.idle)-1]
			p.idle[len(p.idle)-1] = nil
			p.idle = p.idle[:len(p.idle)-1]
			if p.expired(pc, now) {
				p.open--
				p.wakeLocked()
				pc.c.nc.Close()
				continue
			}
			p.mu.Unlock()
			pc.reused = true
			return pc, nil
		}
		if p.open < p.opts.MaxConns {
			p.open++
			p.mu.Unlock()
			pc, err := p.dial(ctx)
			if err != nil {
				p.release()
				return nil, err
			}
			return pc, nil
		}
		wait := p.freed
		p.mu.Unlock()
		if waitUntil.IsZero() {
			// Transactions hold their connections until they end, and one
			// may need several (one per copy): waiting without a bound could
			// deadlock two transactions that each hold what the other needs.
			// A bounded wait turns that into a temporary failure instead.
			waitUntil = time.Now().Add(p.opts.DialTimeout)
			timer = time.NewTimer(p.opts.DialTimeout)
			defer timer.Stop()
		}
		select {
		case <-wait:
		case <-timer.C:
			return nil, fmt.Errorf("no free connection to %s within %v (%d open): %w", p.opts.Addr, p.opts.DialTimeout, p.opts.MaxConns, ErrUnreachable)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a free connection to %s: %w: %w", p.opts.Addr, ErrUnreachable, ctx.Err())
		}
	}
}

// release forgets a connection that was closed.
func (p *Pool) release() {
	p.mu.Lock()
	p.open--
	p.wakeLocked()
	p.mu.Unlock()
}

// put returns a connection after a clean transaction, or closes it.
func (p *Pool) put(pc *poolConn, clean bool) {
	pc.used = time.Now()
	pc.uses++
	if clean && pc.uses < p.opts.MaxTransactions {
		p.mu.Lock()
		if !p.closed && len(p.idle) < p.opts.MaxIdle && !p.expired(pc, pc.used) {
			p.idle = append(p.idle, pc)
			p.wakeLocked()
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		pc.c.quit()
		p.release()
		return
	}
	pc.c.nc.Close()
	p.release()
}

func (p *Pool) discard(pc *poolConn) {
	pc.c.nc.Close()
	p.release()
}

func (p *Pool) dial(ctx context.Context) (*poolConn, error) {
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	nc, err := d.DialContext(ctx, p.opts.Network, p.opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s: %w: %w", p.opts.Network, p.opts.Addr, ErrUnreachable, err)
	}
	c := newClient(nc, p.opts.LMTP, p.opts.CommandTimeout)
	if err := c.handshake(p.opts.LocalName, p.opts.DialTimeout); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting %s: %w: %w", p.opts.Addr, ErrUnreachable, err)
	}
	now := time.Now()
	return &poolConn{c: c, created: now, used: now}, nil
}

// Begin starts a transaction: MAIL FROM, one RCPT TO per recipient and DATA,
// pipelined (RFC 2920) when the peer offers it, which Dovecot and Postfix do.
func (p *Pool) Begin(ctx context.Context, env Envelope) (Tx, error) {
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		pc, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		tx, err := p.start(pc, env)
		if err == nil {
			return tx, nil
		}
		p.discard(pc)
		// A reused connection may have been closed by the peer while it
		// sat idle (Dovecot answers 421 and hangs up after its own idle
		// timeout): that says nothing about this message, so dial anew
		// once instead of failing the delivery.
		if pc.reused && attempt == 0 && peerGone(err) {
			continue
		}
		return nil, outboundError("MAIL FROM", err)
	}
}

// checkEnvelope refuses what would break the command lines. go-smtp's
// parser and recipients.Validate already keep such addresses out; this is
// the last line of defence against command injection.
func checkEnvelope(env Envelope) error {
	for _, a := range append([]string{env.From}, env.Rcpts...) {
		if strings.ContainsAny(a, "\r\n<>") {
			return fmt.Errorf("address %q: %w", a, errProtocol)
		}
	}
	return nil
}

func (p *Pool) start(pc *poolConn, env Envelope) (*poolTx, error) {
	c := pc.c
	var mail strings.Builder
	mail.WriteString("MAIL FROM:<" + env.From + ">")
	if c.has("8BITMIME") {
		mail.WriteString(" BODY=8BITMIME")
	}
	if c.has("SIZE") && env.Size > 0 {
		mail.WriteString(" SIZE=" + strconv.FormatInt(env.Size, 10))
	}
	// Dovecot's LMTP takes UTF-8 addresses without SMTPUTF8; ask for it
	// only where offered.
	if env.UTF8 && c.has("SMTPUTF8") {
		mail.WriteString(" SMTPUTF8")
	}
	tx := &poolTx{p: p, pc: pc, rcpts: env.Rcpts, rejected: make([]error, len(env.Rcpts))}
	if !c.has("PIPELINING") {
		return tx, p.startLockstep(tx, mail.String())
	}
	c.bw.WriteString(mail.String() + "\r\n")
	for _, r := range env.Rcpts {
		c.bw.WriteString("RCPT TO:<" + r + ">\r\n")
	}
	c.bw.WriteString("DATA\r\n")
	if err := c.flush(); err != nil {
		return nil, err
	}
	r, err := c.readReply(p.opts.CommandTimeout)
	if err != nil {
		return nil, err
	}
	if r.code == 421 {
		return nil, r.err()
	}
	mailErr := error(nil)
	if r.code != 250 {
		mailErr = r.err()
	}
	for i := range env.Rcpts {
		r, err := c.readReply(p.opts.CommandTimeout)
		if err != nil {
			return nil, err
		}
		if r.code != 250 && r.code != 251 {
			tx.rejected[i] = r.err()
			continue
		}
		tx.accepted++
	}
	r, err = c.readReply(p.opts.CommandTimeout)
	if err != nil {
		return nil, err
	}
	if mailErr != nil {
		return nil, mailErr
	}
	switch {
	case r.code == 354 && tx.accepted > 0:
		tx.data = &dotWriter{c: c, timeout: p.opts.CommandTimeout, bol: true}
	case r.code == 354:
		// DATA accepted without a recipient: a peer breaking RFC 2920.
		return nil, fmt.Errorf("%w: DATA accepted with no recipient", errProtocol)
	case tx.accepted > 0:
		tx.dataRefused(r.err())
	}
	return tx, nil
}

// dataRefused records a refused DATA: the recipients taken at RCPT all
// share that answer, and no message follows.
func (tx *poolTx) dataRefused(err error) {
	for i := range tx.rejected {
		if tx.rejected[i] == nil {
			tx.rejected[i] = err
		}
	}
	tx.accepted = 0
}

// startLockstep is the same dialogue one command at a time, for peers
// without PIPELINING.
func (p *Pool) startLockstep(tx *poolTx, mail string) error {
	c := tx.pc.c
	r, err := c.command(mail)
	if err != nil {
		return err
	}
	if r.code != 250 {
		return r.err()
	}
	for i, rcpt := range tx.rcpts {
		r, err := c.command("RCPT TO:<" + rcpt + ">")
		if err != nil {
			return err
		}
		if r.code != 250 && r.code != 251 {
			tx.rejected[i] = r.err()
			continue
		}
		tx.accepted++
	}
	if tx.accepted == 0 {
		return nil
	}
	r, err = c.command("DATA")
	if err != nil {
		return err
	}
	if r.code != 354 {
		tx.dataRefused(r.err())
		return nil
	}
	tx.data = &dotWriter{c: c, timeout: p.opts.CommandTimeout, bol: true}
	return nil
}

// peerGone reports whether err looks like a connection the peer had already
// dropped, as opposed to an answer about this transaction.
func peerGone(err error) bool {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	return true
}

// outboundError classifies an error met on the way out: replies pass
// through as they are, anything else is a connection failure.
func outboundError(stage string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code == 421 {
			return fmt.Errorf("%s: %w: %w", stage, ErrConnection, se)
		}
		return se
	}
	return fmt.Errorf("%s: %w: %w", stage, ErrConnection, err)
}

type poolTx struct {
	p        *Pool
	pc       *poolConn
	rcpts    []string
	rejected []error
	accepted int
	data     *dotWriter // nil when no recipient was accepted
	err      error      // sticky
	done     bool
}

func (tx *poolTx) Rejected() []error { return tx.rejected }

func (tx *poolTx) Write(b []byte) (int, error) {
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

func (tx *poolTx) Commit() []error {
	if tx.done {
		return allErr(len(tx.rcpts), ErrAborted)
	}
	tx.done = true
	if tx.data == nil {
		tx.resetAndPut()
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
	// LMTP: one reply per accepted recipient, in RCPT order (RFC 2033
	// §4.2); SMTP: one for the transaction.
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
		if r.code == 250 || r.code == 251 {
			replies = append(replies, nil)
		} else {
			replies = append(replies, r.err())
		}
	}
	if lost != nil {
		tx.p.discard(tx.pc)
	} else {
		tx.p.put(tx.pc, true)
	}
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
	out := make([]error, len(tx.rcpts))
	k := 0
	for i := range tx.rcpts {
		if tx.rejected[i] != nil {
			out[i] = tx.rejected[i]
			continue
		}
		out[i] = outcome(k)
		k++
	}
	return out
}

func (tx *poolTx) resetAndPut() {
	// No message went out: RSET puts the session back in a known state.
	r, err := tx.pc.c.command("RSET")
	tx.p.put(tx.pc, err == nil && r.code == 250)
}

func (tx *poolTx) Abort() {
	if tx.done {
		return
	}
	tx.done = true
	if tx.data == nil && tx.err == nil {
		tx.resetAndPut()
		return
	}
	// Mid-DATA there is no way to take the message back except dropping the
	// connection before the final dot: the peer then discards it.
	tx.p.discard(tx.pc)
}

// String names the pool in logs.
func (p *Pool) String() string {
	proto := "smtp"
	if p.opts.LMTP {
		proto = "lmtp"
	}
	return proto + ":" + strings.TrimPrefix(p.opts.Network+":", "tcp:") + p.opts.Addr
}

// Verify asks the next hop about one recipient: MAIL, RCPT and RSET, in one
// round trip where pipelining allows. No message is sent.
func (p *Pool) Verify(ctx context.Context, from, rcpt string) error {
	if err := checkEnvelope(Envelope{From: from, Rcpts: []string{rcpt}}); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		pc, err := p.get(ctx)
		if err != nil {
			return err
		}
		rej, clean, err := p.verify(pc, from, rcpt)
		if err == nil {
			p.put(pc, clean)
			return rej
		}
		p.discard(pc)
		if pc.reused && attempt == 0 && peerGone(err) {
			continue
		}
		return outboundError("verify", err)
	}
}

func (p *Pool) verify(pc *poolConn, from, rcpt string) (rej error, clean bool, err error) {
	c := pc.c
	cmds := []string{"MAIL FROM:<" + from + ">", "RCPT TO:<" + rcpt + ">", "RSET"}
	replies := make([]reply, 0, len(cmds))
	if c.has("PIPELINING") {
		for _, cmd := range cmds {
			c.bw.WriteString(cmd + "\r\n")
		}
		if err := c.flush(); err != nil {
			return nil, false, err
		}
		for range cmds {
			r, err := c.readReply(p.opts.CommandTimeout)
			if err != nil {
				return nil, false, err
			}
			replies = append(replies, r)
		}
	} else {
		for _, cmd := range cmds {
			r, err := c.command(cmd)
			if err != nil {
				return nil, false, err
			}
			replies = append(replies, r)
		}
	}
	if replies[0].code == 421 {
		return nil, false, replies[0].err()
	}
	switch {
	case replies[0].code != 250:
		rej = replies[0].err()
	case replies[1].code != 250 && replies[1].code != 251:
		rej = replies[1].err()
	}
	return rej, replies[2].code == 250, nil
}
