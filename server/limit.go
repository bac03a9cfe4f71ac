package server

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// limitListener answers 421 to connections over the limit instead of
// leaving them in the kernel's backlog, where Postfix would time out.
//
// A flood of refused connections is logged once when it starts and once,
// with its count, when a connection is accepted again: a line per refusal
// would fill the journal exactly when the host is under strain.
type limitListener struct {
	net.Listener
	sem chan struct{}
	log *slog.Logger

	refused      int // since the last accepted connection
	refusedSince time.Time
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			if l.refused > 0 {
				l.log.Warn("connection limit: connections refused", "limit", cap(l.sem), "refused", l.refused, "since", l.refusedSince.Format(time.RFC3339))
				l.refused = 0
			}
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			if l.refused == 0 {
				l.refusedSince = time.Now()
				l.log.Warn("connection limit reached, refusing connections until one closes", "limit", cap(l.sem))
			}
			l.refused++
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
