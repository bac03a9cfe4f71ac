package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
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
	// lack of permission (systemd's socket is root:postfix 0660, and the
	// daemon is not in group postfix): from then on only the accept loop
	// is checked.
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

// selfCheck decides whether the daemon still serves mail, for the systemd
// watchdog: every listener's accept loop runs, a connection to it gets the
// LMTP greeting (RFC 2033 §4.1: 220) and an answer to QUIT, and the
// certificate store answers.
type selfCheck struct {
	listeners []*watchedListener
	holder    *certs.Holder // nil without [certs] dir
	log       *slog.Logger
	// dial is net.Dialer.DialContext; tests replace it.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newSelfCheck(holder *certs.Holder, log *slog.Logger, ls ...*watchedListener) *selfCheck {
	var d net.Dialer
	return &selfCheck{listeners: ls, holder: holder, log: log, dial: d.DialContext}
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
			s.log.Info("watchdog: the daemon may not connect to its own socket, so it checks only that socket's accept loop; give the socket to the daemon's user (SocketUser= in smimefilter.socket) for the full check",
				"listen", l.Addr().String(), "error", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("listener %s: %w", l.Addr(), err)
		}
	}
	if s.holder != nil && s.holder.Current() == nil {
		return errors.New("the certificate store has no current set")
	}
	return nil
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
