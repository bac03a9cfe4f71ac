package filter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// ServerOptions are the listener-side limits.
type ServerOptions struct {
	Hostname        string
	MaxMessageBytes int64
	MaxRecipients   int
	MaxLineLength   int
	MaxConnections  int
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
}

// Server is the LMTP listener around a Backend, with a connection limit and
// a shutdown that does not hang on Postfix's cached connections.
type Server struct {
	be   *Backend
	srv  *smtp.Server
	opts ServerOptions
	log  *slog.Logger

	serving sync.WaitGroup
}

// NewServer returns a Server; call Serve with one or more listeners.
func NewServer(be *Backend, opts ServerOptions) *Server {
	srv := smtp.NewServer(be)
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
	srv.ErrorLog = slogPrinter{be.log}
	return &Server{be: be, srv: srv, opts: opts, log: be.log}
}

// Serve accepts on l until Shutdown. It returns nil after a shutdown.
func (s *Server) Serve(l net.Listener) error {
	if s.opts.MaxConnections > 0 {
		l = &limitListener{Listener: l, sem: make(chan struct{}, s.opts.MaxConnections), log: s.log}
	}
	l = &batchListener{Listener: l, writeTimeout: s.opts.WriteTimeout}
	s.serving.Add(1)
	defer s.serving.Done()
	err := s.srv.Serve(l)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets transactions under way finish for at most
// grace, then closes every connection. Postfix caches idle LMTP
// connections, so waiting for connections to close by themselves
// (smtp.Server.Shutdown) could take for ever; an idle cached connection
// carries no transaction and can be dropped at once.
func (s *Server) Shutdown(grace time.Duration) {
	idle := s.be.StartShutdown()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.srv.Shutdown(ctx) // closes the listeners; its wait is cut short below
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
		s.log.Warn("shutdown grace period over, closing connections with transactions under way", "grace", grace)
	}
	s.srv.Close()
	s.serving.Wait()
}

// limitListener answers 421 to connections over the limit instead of
// leaving them in the kernel's backlog, where Postfix would time out.
type limitListener struct {
	net.Listener
	sem chan struct{}
	log *slog.Logger
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			l.log.Warn("connection limit reached, refusing connection", "limit", cap(l.sem))
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write([]byte("421 4.3.2 Too many connections, try again later\r\n"))
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// slogPrinter routes go-smtp's own error log into slog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) { p.print(sprintf(format, v...)) }
func (p slogPrinter) Println(v ...any)               { p.print(sprintln(v...)) }

// print logs go-smtp's message at a level that fits: a client that hung up
// (a monitoring probe, Postfix closing a cached connection) is routine; a
// panic is not.
func (p slogPrinter) print(msg string) {
	switch {
	case strings.Contains(msg, "panic"):
		p.log.Error("smtp server", "error", msg)
	case strings.Contains(msg, "connection reset by peer"), strings.Contains(msg, "broken pipe"),
		strings.Contains(msg, "use of closed network connection"):
		p.log.Debug("smtp server", "error", msg)
	default:
		p.log.Warn("smtp server", "error", msg)
	}
}

func sprintf(format string, v ...any) string { return fmt.Sprintf(format, v...) }
func sprintln(v ...any) string               { return strings.TrimSuffix(fmt.Sprintln(v...), "\n") }
