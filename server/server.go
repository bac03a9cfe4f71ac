// Package server is smimefilter's LMTP listener (RFC 2033) around a go-smtp
// backend: the socket side that the backend need not know about. It sets up
// go-smtp's server, refuses connections over a limit with 421, batches
// replies per RFC 2920 (batchconn.go), and stops cleanly.
//
// Stopping: new connections are refused (the listeners close), connections
// that carry no transaction (after LHLO, between transactions: Postfix
// keeps its LMTP connections cached) get 421 4.3.2 and are closed at once,
// transactions under way may finish within a grace period, each connection
// being closed as its transaction ends; when the grace runs out the rest
// are closed, which cancels their sessions (go-smtp calls Logout) so that
// outbound waits end too, and their clients (Postfix) defer the mail.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Options are the listener-side limits.
type Options struct {
	Hostname        string
	MaxMessageBytes int64
	MaxRecipients   int
	MaxLineLength   int
	MaxConnections  int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	Logger          *slog.Logger
}

// Server serves LMTP on any number of listeners.
type Server struct {
	srv  *smtp.Server
	be   smtp.Backend
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	// conns are the open connections and their sessions (nil before LHLO).
	conns    map[*batchConn]*session
	stopping bool
	active   int           // transactions between MAIL and their end
	idle     chan struct{} // closed when active drops to 0 while stopping

	serving sync.WaitGroup
}

// New returns a Server for be, whose sessions must implement
// smtp.LMTPSession.
func New(be smtp.Backend, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{be: be, opts: opts, log: opts.Logger, conns: map[*batchConn]*session{}, idle: make(chan struct{})}
	srv := smtp.NewServer(s)
	srv.LMTP = true
	srv.Domain = opts.Hostname
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.MaxRecipients = opts.MaxRecipients
	if opts.MaxLineLength > 0 {
		srv.MaxLineLength = opts.MaxLineLength
	}
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	// The next hop decides about UTF-8 addresses; deliver passes SMTPUTF8
	// on where Dovecot offers it.
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogPrinter{opts.Logger}
	s.srv = srv
	return s
}

// Serve accepts on l until Shutdown. It returns nil after a shutdown.
func (s *Server) Serve(l net.Listener) error {
	if s.opts.MaxConnections > 0 {
		l = &limitListener{Listener: l, sem: make(chan struct{}, s.opts.MaxConnections), log: s.log}
	}
	l = &batchListener{Listener: l, writeTimeout: s.opts.WriteTimeout, opened: s.opened, closed: s.closed}
	s.serving.Add(1)
	defer s.serving.Done()
	err := s.srv.Serve(l)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, hangs up on connections without a transaction,
// lets transactions under way finish for at most grace, then closes every
// connection left. It returns when no connection is left.
func (s *Server) Shutdown(grace time.Duration) {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		s.serving.Wait()
		return
	}
	s.stopping = true
	var idle []*batchConn
	for bc, t := range s.conns {
		if t == nil || !t.inTx {
			idle = append(idle, bc)
		}
	}
	if s.active == 0 {
		close(s.idle)
	}
	s.mu.Unlock()
	for _, bc := range idle {
		bc.hangUp()
	}

	// go-smtp's Shutdown closes the listeners and then waits for its
	// connection goroutines; the connections themselves end here.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.srv.Shutdown(ctx)
	}()

	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-s.idle:
	case <-t.C:
		s.mu.Lock()
		left := make(map[*batchConn]*session, len(s.conns))
		maps.Copy(left, s.conns)
		s.mu.Unlock()
		s.log.Warn("shutdown grace period over, closing connections with transactions under way", "grace", grace, "connections", len(left))
		for bc, t := range left {
			if t == nil {
				bc.Close()
				continue
			}
			// Closes the socket and calls Logout, which cancels the
			// session's context: its outbound waits end, it stores nothing
			// more, and its client defers the mail.
			t.conn.Close()
		}
	}
	<-done
	s.serving.Wait()
}

// NewSession implements smtp.Backend: it wraps the backend's session to
// know when a transaction is under way.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	inner, err := s.be.NewSession(c)
	if err != nil {
		return nil, err
	}
	lmtp, ok := inner.(smtp.LMTPSession)
	if !ok {
		inner.Logout()
		return nil, fmt.Errorf("server: backend session %T does not implement LMTPSession", inner)
	}
	t := &session{LMTPSession: lmtp, srv: s, conn: c}
	t.bc, _ = c.Conn().(*batchConn)
	if t.bc != nil {
		s.mu.Lock()
		if _, open := s.conns[t.bc]; open {
			s.conns[t.bc] = t
		}
		s.mu.Unlock()
	}
	return t, nil
}

// opened registers an accepted connection; one accepted just before the
// listener closed is hung up at once.
func (s *Server) opened(bc *batchConn) {
	s.mu.Lock()
	s.conns[bc] = nil
	stopping := s.stopping
	s.mu.Unlock()
	if stopping {
		bc.hangUp()
	}
}

func (s *Server) closed(bc *batchConn) {
	s.mu.Lock()
	delete(s.conns, bc)
	s.mu.Unlock()
}

// session tracks one connection's transaction for Shutdown.
type session struct {
	smtp.LMTPSession
	srv  *Server
	conn *smtp.Conn
	bc   *batchConn
	inTx bool // guarded by srv.mu
}

// shutdownText is the text of both 421s of a shutdown: the refusal of a
// MAIL (errShutdown) and the line a hung-up connection gets (replyShutdown).
const shutdownText = "Service shutting down, try again later"

// errShutdown refuses a MAIL while stopping. It is the listener's own reply,
// not an error of the backend's, so it does not go through the backend's
// error-to-status mapping (filter.Status): package server knows nothing of
// its backend, and filter's tests import server.
var errShutdown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: shutdownText}

func (t *session) Mail(from string, opts *smtp.MailOptions) error {
	s := t.srv
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		// RFC 5321 §3.8: the 421 is the last reply; the connection ends.
		if t.bc != nil {
			t.bc.hangUpAfterReply()
		}
		return errShutdown
	}
	if !t.inTx {
		t.inTx = true
		s.active++
	}
	s.mu.Unlock()
	if err := t.LMTPSession.Mail(from, opts); err != nil {
		t.endTx()
		return err
	}
	return nil
}

// Reset ends a transaction: go-smtp calls it after DATA/BDAT, on RSET and
// on a new MAIL.
func (t *session) Reset() {
	t.LMTPSession.Reset()
	t.endTx()
}

func (t *session) Logout() error {
	err := t.LMTPSession.Logout()
	t.endTx()
	return err
}

// endTx counts the transaction as over and, when stopping, ends the
// connection now that it carries none.
func (t *session) endTx() {
	s := t.srv
	s.mu.Lock()
	if t.inTx {
		t.inTx = false
		s.active--
		if s.active == 0 && s.stopping {
			close(s.idle)
		}
	}
	stopping := s.stopping
	s.mu.Unlock()
	if stopping {
		t.hangUp()
	}
}

func (t *session) hangUp() {
	if t.bc != nil {
		t.bc.hangUp()
		return
	}
	t.conn.Close()
}

// slogPrinter routes go-smtp's own error log into slog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) { p.print(fmt.Sprintf(format, v...)) }
func (p slogPrinter) Println(v ...any)               { p.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

// print logs go-smtp's message at a level that fits: a client that hung up
// (a monitoring probe, Postfix closing a cached connection) is routine; a
// panic is not.
func (p slogPrinter) print(msg string) {
	switch {
	case strings.Contains(msg, "panic"):
		p.log.Error("smtp server", "error", msg)
	case strings.Contains(msg, "connection reset by peer"), strings.Contains(msg, "broken pipe"),
		strings.Contains(msg, "use of closed network connection"), strings.Contains(msg, io.EOF.Error()):
		p.log.Debug("smtp server", "error", msg)
	default:
		p.log.Warn("smtp server", "error", msg)
	}
}
