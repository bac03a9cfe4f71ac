package deliver

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
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
	// WaitTimeout bounds the wait for a free connection while MaxConns are
	// in use. Default DataTimeout: as long as a transaction may hold one.
	WaitTimeout time.Duration
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
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = o.DataTimeout
		if o.WaitTimeout <= 0 {
			o.WaitTimeout = 10 * time.Minute
		}
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
// then unknown. A reused connection proves itself with RSET first (see
// converse in tx.go).
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
	reused  bool        // it has served a transaction before this one
	unwatch func() bool // stops the watch on the transaction's context
}

// bind ties the connection to the context of the transaction using it: when
// ctx ends, waits on the peer end at once (a past deadline), so that a
// daemon shutting down is not held by a next hop that is slow or hung.
func (pc *poolConn) bind(ctx context.Context) {
	pc.c.ctx = ctx
	nc := pc.c.nc
	pc.unwatch = context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
}

// unbind ends the watch and reports whether the connection is still usable:
// not when the context's end may have cut an exchange short.
func (pc *poolConn) unbind() bool {
	if pc.unwatch == nil {
		return true
	}
	ok := pc.unwatch()
	pc.unwatch = nil
	pc.c.ctx = context.Background()
	return ok
}

// NewPool returns a pool; it dials nothing until the first transaction.
func NewPool(opts PoolOptions) *Pool {
	opts.setDefaults()
	p := &Pool{opts: opts, freed: make(chan struct{}), stop: make(chan struct{})}
	p.reaped.Add(1)
	go p.reapIdle()
	return p
}

// String names the pool in logs.
func (p *Pool) String() string {
	proto := "smtp"
	if p.opts.LMTP {
		proto = "lmtp"
	}
	return proto + ":" + strings.TrimPrefix(p.opts.Network+":", "tcp:") + p.opts.Addr
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
	idle := p.takeIdleLocked(func(*poolConn) bool { return true })
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

// takeIdleLocked removes the idle connections drop selects and counts them
// as closed; the caller closes them outside the lock.
func (p *Pool) takeIdleLocked(drop func(*poolConn) bool) []*poolConn {
	var out []*poolConn
	keep := p.idle[:0]
	for _, pc := range p.idle {
		if drop(pc) {
			out = append(out, pc)
		} else {
			keep = append(keep, pc)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if len(out) > 0 {
		p.open -= len(out)
		p.wakeLocked()
	}
	return out
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
			p.mu.Lock()
			drop := p.takeIdleLocked(func(pc *poolConn) bool { return p.expired(pc, now) })
			p.mu.Unlock()
			for _, pc := range drop {
				pc.c.quit()
			}
		}
	}
}

// dropIdle closes every idle connection: one was found dead, and the others
// have sat idle at least as long (the peer restarted, or timed them out).
func (p *Pool) dropIdle() {
	p.mu.Lock()
	drop := p.takeIdleLocked(func(*poolConn) bool { return true })
	p.mu.Unlock()
	for _, pc := range drop {
		pc.c.nc.Close()
	}
}

func (p *Pool) expired(pc *poolConn, now time.Time) bool {
	return now.Sub(pc.used) >= p.opts.IdleTimeout || now.Sub(pc.created) >= p.opts.MaxLifetime
}

// get returns the most recently used idle connection (the one a previous
// copy of the same message just released, still warm at the peer) or dials
// a new one, waiting while MaxConns connections are open (unless ctx says not
// to: WithoutWaiting).
func (p *Pool) get(ctx context.Context) (*poolConn, error) {
	var timer *time.Timer
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
		if !mayWait(ctx) {
			return nil, fmt.Errorf("%d connections to %s in use: %w: %w", p.opts.MaxConns, p.opts.Addr, ErrBusy, ErrUnreachable)
		}
		if timer == nil {
			// A session holds at most one connection at a time (a message's
			// copies go out one after another), so waiting cannot deadlock;
			// a burst above MaxConns waits for a connection to come back
			// rather than deferring mail, for as long as a transaction may
			// legitimately hold one. The context ends the wait sooner.
			timer = time.NewTimer(p.opts.WaitTimeout)
			defer timer.Stop()
		}
		select {
		case <-wait:
		case <-timer.C:
			return nil, fmt.Errorf("no free connection to %s within %v (%d open): %w", p.opts.Addr, p.opts.WaitTimeout, p.opts.MaxConns, ErrUnreachable)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a free connection to %s: %w: %w", p.opts.Addr, ErrUnreachable, context.Cause(ctx))
		}
	}
}

// release counts a closed connection out.
func (p *Pool) release() {
	p.mu.Lock()
	p.open--
	p.wakeLocked()
	p.mu.Unlock()
}

// put returns a connection after a transaction: to the idle list when it
// ended cleanly and the limits allow, closed otherwise.
func (p *Pool) put(pc *poolConn, clean bool) {
	if !pc.unbind() || !clean {
		p.discard(pc)
		return
	}
	pc.used = time.Now()
	pc.uses++
	if pc.uses < p.opts.MaxTransactions {
		p.mu.Lock()
		if !p.closed && len(p.idle) < p.opts.MaxIdle && !p.expired(pc, pc.used) {
			p.idle = append(p.idle, pc)
			p.wakeLocked()
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
	pc.c.quit()
	p.release()
}

// discard closes a connection whose state is unknown: no QUIT, which could
// be read as part of an unfinished command.
func (p *Pool) discard(pc *poolConn) {
	pc.unbind()
	pc.c.nc.Close()
	p.release()
}

func (p *Pool) dial(ctx context.Context) (*poolConn, error) {
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	nc, err := d.DialContext(ctx, p.opts.Network, p.opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s: %w: %w", p.opts.Network, p.opts.Addr, ErrUnreachable, err)
	}
	pc := &poolConn{c: newClient(nc, p.opts.LMTP, p.opts.CommandTimeout)}
	pc.bind(ctx)
	err = pc.c.handshake(p.opts.LocalName, p.opts.DialTimeout)
	if !pc.unbind() && err == nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting %s: %w: %w", p.opts.Addr, ErrUnreachable, err)
	}
	pc.created = time.Now()
	pc.used = pc.created
	return pc, nil
}
