package server

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// batchConn holds the replies go-smtp writes until the connection is about
// to wait for the client, and sends them in one write(2). go-smtp's server
// flushes every reply line on its own: each line of the LHLO answer, then
// MAIL, RCPT, 354 and every per-recipient LMTP status. Postfix's smtpd
// batches the same way (it flushes only before a read that would block),
// which is what RFC 2920 asks of a pipelining server: replies to a group
// of commands may leave together, and the client only waits for them once
// it has sent the group.
//
// Flushing before every Read is what makes this safe: go-smtp only ever
// waits on this connection by reading it, so no reply can be held back
// while the client waits for it. Close flushes too (the 221 to QUIT, the
// 421 on an idle timeout).
//
// Reads are batched as well: go-smtp reads through a 4 KiB bufio.Reader,
// which would take 25 read(2) calls for a 100 KiB message. batchConn reads
// up to 64 KiB at a time into a pooled buffer and hands it out from there;
// the buffer goes back to the pool as soon as it is empty, so an idle
// connection (Postfix caches them) holds none; it held message text, so it
// is cleared first.
//
// At shutdown the server hangs up on connections that carry no
// transaction: the next Read (or the one waiting) sends 421 and ends the
// connection as if the client had left (see hangUp). The 421 is the last
// reply the connection writes (RFC 5321 §3.8): go-smtp may still hold
// pipelined commands in its own buffer and answer them, but those answers
// are dropped once the 421 is out.
type batchConn struct {
	net.Conn
	writeTimeout time.Duration

	closed    func(*batchConn) // tells the server, once
	closeOnce sync.Once

	hangingUp atomic.Bool

	mu  sync.Mutex // Shutdown may Close while the connection's goroutine writes
	buf []byte
	err error // the first write error; every later Write and Read returns it
	// await421: the next reply is a 421 of go-smtp's writing (a MAIL
	// refused while stopping); final: a 421 is written, so nothing else is.
	await421, final bool

	rbuf *[]byte // nil when nothing read ahead is left
	rpos int     // next unread byte in *rbuf
}

const readAhead = 64 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readAhead); return &b }}

// maxBatch bounds what one connection holds back; replies are short, so
// only a client pipelining hundreds of commands reaches it.
const maxBatch = 4096

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.final {
		// RFC 5321 §3.8: after the 421 the server closes; a reply to a
		// command the client pipelined behind the refused one would
		// contradict it. go-smtp is told the write went out, so that it
		// reads on and gets its EOF.
		return len(p), nil
	}
	c.buf = append(c.buf, p...)
	if c.await421 && bytes.HasPrefix(p, []byte("421")) {
		c.final = true
	}
	if len(c.buf) >= maxBatch {
		if err := c.flushLocked(c.writeTimeout); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *batchConn) Read(p []byte) (int, error) {
	if c.hangingUp.Load() {
		return 0, c.sayGoodbye()
	}
	if c.rbuf != nil {
		return c.readBuffered(p), nil
	}
	if err := c.flush(c.writeTimeout); err != nil {
		return 0, err
	}
	if len(p) >= readAhead/2 {
		return c.Conn.Read(p)
	}
	b := readBuffers.Get().(*[]byte)
	n, err := c.Conn.Read(*b)
	if n == 0 {
		readBuffers.Put(b)
		if c.hangingUp.Load() {
			return 0, c.sayGoodbye()
		}
		return 0, err
	}
	c.rbuf, c.rpos = b, 0
	*b = (*b)[:n]
	// An error that came with data is returned by the next Read, which
	// reads again and gets it again (a closed or timed-out socket stays so).
	return c.readBuffered(p), nil
}

func (c *batchConn) readBuffered(p []byte) int {
	b := *c.rbuf
	n := copy(p, b[c.rpos:])
	c.rpos += n
	if c.rpos == len(b) {
		clear(b)
		*c.rbuf = b[:cap(b)]
		readBuffers.Put(c.rbuf)
		c.rbuf = nil
	}
	return n
}

// replyShutdown is what a connection hung up on at shutdown is told
// (RFC 5321 §3.8: 421 before closing).
const replyShutdown = "421 4.3.2 " + shutdownText + "\r\n"

// hangUp makes the connection end at its next read, or at once if it is
// waiting for the client: 421, then EOF to go-smtp, which closes it. What
// the client had already sent (a pipelined next transaction) is not
// served: what batchConn read ahead is dropped, and go-smtp may handle what
// its own buffer holds, but a MAIL among it is refused with the 421 and
// nothing after that is answered. Replies held back still go first.
func (c *batchConn) hangUp() {
	c.hangingUp.Store(true)
	c.Conn.SetReadDeadline(time.Unix(1, 0))
}

// SetReadDeadline keeps a hang-up's deadline: go-smtp sets its own before
// every command, which would otherwise put the wait back.
func (c *batchConn) SetReadDeadline(t time.Time) error {
	if c.hangingUp.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// hangUpAfterReply is hangUp for a connection whose reply about to be
// written says 421 (a MAIL refused because the server is stopping): that
// 421 is the last reply, and no second one is added.
func (c *batchConn) hangUpAfterReply() {
	c.mu.Lock()
	c.await421 = true
	c.mu.Unlock()
	c.hangUp()
}

func (c *batchConn) sayGoodbye() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		if !c.final {
			c.buf = append(c.buf, replyShutdown...)
			c.final = true
		}
		if err := c.flushLocked(time.Second); err != nil {
			return err
		}
		c.err = io.EOF
	}
	if c.rbuf != nil {
		clear(*c.rbuf)
		readBuffers.Put(c.rbuf)
		c.rbuf = nil
	}
	return io.EOF
}

// Close sends what is held back, waiting at most a second: a client that
// does not read its last reply is not worth holding a shutdown for.
func (c *batchConn) Close() error {
	// The connection's own goroutine may be blocked writing to a client
	// that does not read, holding c.mu: a near deadline ends that write
	// first, so Close never waits for the full write timeout.
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.flush(time.Second)
	if c.closed != nil {
		c.closeOnce.Do(func() { c.closed(c) })
	}
	return c.Conn.Close()
}

func (c *batchConn) flush(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked(timeout)
}

func (c *batchConn) flushLocked(timeout time.Duration) error {
	if c.err != nil || len(c.buf) == 0 {
		return c.err
	}
	// go-smtp set a write deadline when it wrote the reply; an LMTP status
	// may have waited since then for the other recipients' deliveries, so
	// the deadline starts again now.
	if timeout > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(timeout))
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if err != nil {
		c.err = err
	}
	return err
}

// batchListener wraps every accepted connection in a batchConn, and tells
// the server about it: a connection has no session until LHLO, and
// Shutdown must end it too.
type batchListener struct {
	net.Listener
	writeTimeout time.Duration
	opened       func(*batchConn)
	closed       func(*batchConn)
}

func (l *batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	bc := &batchConn{Conn: c, writeTimeout: l.writeTimeout, closed: l.closed}
	if l.opened != nil {
		l.opened(bc)
	}
	return bc, nil
}
