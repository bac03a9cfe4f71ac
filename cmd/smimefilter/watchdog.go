package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// watchedListener records whether the server's accept loop is alive: it
// either waits in Accept or came back from it a moment ago. A loop stuck
// anywhere else no longer takes connections, whatever the kernel's backlog
// says.
type watchedListener struct {
	net.Listener
	waiting  atomic.Int32 // goroutines inside Accept
	returned atomic.Int64 // time.Now().UnixNano() of the last return from Accept

	// noDial is set once connecting to our own socket was refused for
	// lack of permission: from then on only the accept loop is checked.
	// The packaged smimefilter.socket belongs to the daemon's user for
	// this check's sake; a drop-in that gives it to root:postfix 0660, say,
	// shuts the daemon out (it is not in group postfix), and restarting
	// it for that would only make things worse.
	noDial atomic.Bool
}

func (l *watchedListener) Accept() (net.Conn, error) {
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	c, err := l.Listener.Accept()
	l.returned.Store(time.Now().UnixNano())
	return c, err
}

// acceptAlive reports whether the accept loop was in Accept within the
// last d.
func (l *watchedListener) acceptAlive(d time.Duration) bool {
	return l.waiting.Load() > 0 || time.Since(time.Unix(0, l.returned.Load())) < d
}

// storeProbe is the address the self-check looks up. .invalid is never a
// real domain (RFC 2606 §2), so the lookup takes a recipient's path
// (normalizing, the exact and the case-folded index) and finds nothing.
const storeProbe = "watchdog-probe@smimefilter.invalid"

// selfCheck decides whether the daemon still serves mail, for the systemd
// watchdog: every listener's accept loop runs, a connection to it gets the
// LMTP greeting (RFC 2033 §4.1: 220) and an answer to QUIT, and a lookup in
// the current certificate store, as every recipient needs one, returns
// within the check's time without panicking.
type selfCheck struct {
	listeners []*watchedListener
	holder    *certs.Holder // nil without [certs] dir
	log       *slog.Logger
	// dial is net.Dialer.DialContext; tests replace it.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// lookup asks store for addr as a transaction does; tests replace it.
	lookup func(store *certs.Store, addr string)

	// lookingUp is set while a lookup runs. One that never returns is
	// not started again: a goroutine per check would pile up.
	lookingUp atomic.Bool
}

func newSelfCheck(holder *certs.Holder, log *slog.Logger, ls ...*watchedListener) *selfCheck {
	var d net.Dialer
	return &selfCheck{
		listeners: ls, holder: holder, log: log, dial: d.DialContext,
		lookup: func(s *certs.Store, addr string) { s.Lookup(addr) },
	}
}

// run performs the check within timeout and returns why it failed.
func (s *selfCheck) run(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, l := range s.listeners {
		if !l.acceptAlive(timeout) {
			return fmt.Errorf("listener %s: the accept loop has not called Accept for %v", l.Addr(), timeout)
		}
		if l.noDial.Load() {
			continue
		}
		err := s.greet(ctx, l.Addr())
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			l.noDial.Store(true)
			s.log.Info("watchdog: the daemon may not connect to its own socket, so it checks only that socket's accept loop; give the socket to the daemon's user (SocketUser= in smimefilter.socket, as packaged) for the full check",
				"listen", l.Addr().String(), "error", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("listener %s: %w", l.Addr(), err)
		}
	}
	if s.holder != nil {
		if err := s.lookupStore(ctx); err != nil {
			return fmt.Errorf("certificate store: %w", err)
		}
	}
	return nil
}

// lookupStore looks storeProbe up in the current store, in a goroutine of
// its own so that a lookup that hangs fails the check instead of holding
// up the watchdog, and a panic (which would cost every recipient a 451)
// fails it instead of ending the daemon.
func (s *selfCheck) lookupStore(ctx context.Context) error {
	store := s.holder.Current()
	if store == nil {
		return errors.New("no current set of certificates")
	}
	if !s.lookingUp.CompareAndSwap(false, true) {
		return errors.New("an earlier lookup has not returned")
	}
	done := make(chan error, 1)
	go func() {
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("lookup panicked: %v\n%s", p, debug.Stack())
				}
			}()
			s.lookup(store, storeProbe)
			return nil
		}()
		s.lookingUp.Store(false)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("lookup: no answer: %w", ctx.Err())
	}
}

// greet connects to addr as a client would, reads the greeting and says
// QUIT. 421 (RFC 5321 §3.8) is the connection limit answering from inside
// the accept loop: busy, but serving.
func (s *selfCheck) greet(ctx context.Context, addr net.Addr) error {
	c, err := s.dial(ctx, addr.Network(), addr.String())
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	tp := textproto.NewReader(bufio.NewReader(c))
	code, msg, err := tp.ReadResponse(0)
	switch {
	case err != nil && code == 0:
		return fmt.Errorf("reading the greeting: %w", err)
	case code == 421:
		return nil
	case code != 220:
		return fmt.Errorf("greeting: got %d %s, want 220", code, msg)
	}
	if _, err := c.Write([]byte("QUIT\r\n")); err != nil {
		return fmt.Errorf("sending QUIT: %w", err)
	}
	if code, msg, err := tp.ReadResponse(0); code != 221 {
		return fmt.Errorf("QUIT: got %d %s (%v), want 221", code, msg, err)
	}
	return nil
}
