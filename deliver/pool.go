package deliver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
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
	c       *smtp.Client
	nc      net.Conn
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
		pc.nc.Close()
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
				pc.c.Quit() // polite; the deadline below bounds it
				pc.nc.Close()
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
				pc.nc.Close()
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
		select {
		case <-wait:
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
		pc.c.Quit()
	}
	pc.nc.Close()
	p.release()
}

func (p *Pool) discard(pc *poolConn) {
	pc.nc.Close()
	p.release()
}

func (p *Pool) dial(ctx context.Context) (*poolConn, error) {
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	nc, err := d.DialContext(ctx, p.opts.Network, p.opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s: %w: %w", p.opts.Network, p.opts.Addr, ErrUnreachable, err)
	}
	// The greeting and LHLO fall under the dial timeout.
	nc.SetDeadline(time.Now().Add(p.opts.DialTimeout))
	var c *smtp.Client
	if p.opts.LMTP {
		c = smtp.NewClientLMTP(nc)
	} else {
		c = smtp.NewClient(nc)
	}
	// go-smtp sets its own deadline per command: during the greeting and
	// LHLO that must be the dial timeout.
	c.CommandTimeout = p.opts.DialTimeout
	c.SubmissionTimeout = p.opts.DataTimeout
	if err := c.Hello(p.opts.LocalName); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting %s: %w: %w", p.opts.Addr, ErrUnreachable, err)
	}
	// go-smtp reads the greeting and sends LHLO lazily; a NOOP forces both
	// here, so that a peer refusing service fails the dial, not a command.
	if err := c.Noop(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting %s: %w: %w", p.opts.Addr, ErrUnreachable, err)
	}
	nc.SetDeadline(time.Time{})
	c.CommandTimeout = p.opts.CommandTimeout
	now := time.Now()
	return &poolConn{c: c, nc: nc, created: now, used: now}, nil
}

// Begin starts a transaction: MAIL FROM and one RCPT TO per recipient.
func (p *Pool) Begin(ctx context.Context, env Envelope) (Tx, error) {
	for attempt := 0; ; attempt++ {
		pc, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		err = pc.c.Mail(env.From, p.mailOptions(pc, env))
		if err != nil {
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
		tx := &poolTx{p: p, pc: pc, rcpts: env.Rcpts, rejected: make([]error, len(env.Rcpts))}
		for i, rcpt := range env.Rcpts {
			if err := pc.c.Rcpt(rcpt, nil); err != nil {
				var se *smtp.SMTPError
				if !errors.As(err, &se) {
					// Not a reply: the connection itself failed.
					p.discard(pc)
					return nil, outboundError("RCPT TO", err)
				}
				tx.rejected[i] = se
				continue
			}
			tx.accepted++
		}
		return tx, nil
	}
}

func (p *Pool) mailOptions(pc *poolConn, env Envelope) *smtp.MailOptions {
	opts := &smtp.MailOptions{Size: env.Size}
	if env.UTF8 {
		// Ask for SMTPUTF8 only where offered: Dovecot's LMTP takes UTF-8
		// addresses without it, and go-smtp refuses to send the parameter to
		// a server that does not list it.
		if ok, _ := pc.c.Extension("SMTPUTF8"); ok {
			opts.UTF8 = true
		}
	}
	return opts
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

// outboundError classifies an error from the SMTP client: replies pass
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
	data     *smtp.DataCommand
	err      error // sticky
	done     bool
}

func (tx *poolTx) Rejected() []error { return tx.rejected }

func (tx *poolTx) Write(b []byte) (int, error) {
	if tx.err != nil {
		return 0, tx.err
	}
	if tx.accepted == 0 {
		// Nothing to send to; swallow the bytes so the caller need not care.
		return len(b), nil
	}
	if tx.data == nil {
		d, err := tx.pc.c.Data()
		if err != nil {
			tx.err = outboundError("DATA", err)
			return 0, tx.err
		}
		tx.data = d
	}
	// A peer that stops reading must not hold the session for ever.
	tx.pc.nc.SetWriteDeadline(time.Now().Add(tx.p.opts.CommandTimeout))
	n, err := tx.data.Write(b)
	if err != nil {
		tx.err = fmt.Errorf("writing message data: %w: %w", ErrConnection, err)
	}
	return n, tx.err
}

func (tx *poolTx) Commit() []error {
	if tx.done {
		return allErr(len(tx.rcpts), ErrAborted)
	}
	tx.done = true
	if tx.accepted == 0 {
		tx.resetAndPut()
		return tx.rejected
	}
	if tx.err == nil && tx.data == nil {
		// An empty message still needs its DATA command.
		tx.Write(nil)
	}
	if tx.err != nil {
		tx.p.discard(tx.pc)
		return tx.merge(func(string) error { return tx.err })
	}
	tx.pc.nc.SetWriteDeadline(time.Now().Add(tx.p.opts.CommandTimeout))
	if !tx.p.opts.LMTP {
		_, err := tx.data.CloseWithResponse()
		if err != nil {
			// SMTP gives one answer for the whole transaction.
			err = outboundError("end of data", err)
			tx.p.discard(tx.pc)
			return tx.merge(func(string) error { return err })
		}
		tx.p.put(tx.pc, true)
		return tx.merge(func(string) error { return nil })
	}
	resp, err := tx.data.CloseWithLMTPResponse()
	if err == nil {
		tx.p.put(tx.pc, true)
		return tx.merge(func(string) error { return nil })
	}
	var lerr smtp.LMTPDataError
	if errors.As(err, &lerr) && !isJoined(err) {
		// Every recipient got its own reply: the connection is in a clean
		// state and the per-recipient answers are the outcome.
		tx.p.put(tx.pc, true)
		return tx.merge(func(rcpt string) error {
			if se, ok := lerr[rcpt]; ok {
				return se
			}
			return nil
		})
	}
	// Some replies were lost: a recipient without a 250 has an unknown fate,
	// which is a temporary failure (Postfix retries; Dovecot may deliver
	// twice, never zero times).
	tx.p.discard(tx.pc)
	cerr := fmt.Errorf("reading replies after data: %w: %w", ErrConnection, err)
	return tx.merge(func(rcpt string) error {
		if _, ok := resp[rcpt]; ok {
			return nil
		}
		if se, ok := lerr[rcpt]; ok {
			return se
		}
		return cerr
	})
}

func isJoined(err error) bool {
	_, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return false
	}
	_, plain := err.(smtp.LMTPDataError)
	return !plain
}

// merge builds the result: RCPT-time refusals, then each accepted
// recipient's outcome.
func (tx *poolTx) merge(outcome func(rcpt string) error) []error {
	out := make([]error, len(tx.rcpts))
	for i, r := range tx.rcpts {
		if tx.rejected[i] != nil {
			out[i] = tx.rejected[i]
			continue
		}
		out[i] = outcome(r)
	}
	return out
}

func (tx *poolTx) resetAndPut() {
	// No DATA was sent: RSET puts the session back in a known state.
	tx.pc.nc.SetDeadline(time.Now().Add(tx.p.opts.CommandTimeout))
	err := tx.pc.c.Reset()
	tx.pc.nc.SetDeadline(time.Time{})
	tx.p.put(tx.pc, err == nil)
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
