package deliver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// client is the outbound side of one LMTP (RFC 2033) or SMTP (RFC 5321)
// connection. It is written here rather than taken from go-smtp's Client for
// two measured reasons (BENCHMARKS.md): go-smtp's client sends MAIL, each
// RCPT and DATA one round trip at a time, where PIPELINING (RFC 2920) sends
// them in one; and its dot-stuffing writer handles the body a byte at a
// time, which doubled the cost of relaying large messages.
type client struct {
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	lmtp bool
	ext  map[string]string

	cmdTimeout time.Duration
	// ctx is the context of the transaction using the connection. When it
	// ends, an AfterFunc (poolConn.bind) sets a past deadline that cuts the
	// wait short; every deadline set here checks ctx afterwards, because it
	// may just have replaced that past deadline.
	ctx context.Context
}

// errProtocol marks a reply that makes no sense at that point of the
// dialogue: the connection cannot be trusted afterwards.
var errProtocol = errors.New("protocol error")

func newClient(nc net.Conn, lmtp bool, cmdTimeout time.Duration) *client {
	return &client{
		nc:         nc,
		br:         bufio.NewReaderSize(nc, 4096),
		bw:         bufio.NewWriterSize(nc, 32<<10),
		lmtp:       lmtp,
		cmdTimeout: cmdTimeout,
		ctx:        context.Background(),
	}
}

// arm sets a read or write deadline timeout from now, and fails if the
// transaction's context has ended.
func (c *client) arm(set func(time.Time) error, timeout time.Duration) error {
	set(time.Now().Add(timeout))
	if err := c.ctx.Err(); err != nil {
		return context.Cause(c.ctx)
	}
	return nil
}

// cut names the ended context as the cause of an I/O error it provoked
// (which is otherwise a bare "i/o timeout").
func (c *client) cut(err error) error {
	if c.ctx.Err() != nil {
		return fmt.Errorf("%w: %w", context.Cause(c.ctx), err)
	}
	return err
}

// reply is one server reply, possibly multi-line.
type reply struct {
	code  int
	enh   smtp.EnhancedCode
	lines []string
}

func (r reply) err() *smtp.SMTPError {
	return &smtp.SMTPError{Code: r.code, EnhancedCode: r.enh, Message: strings.Join(r.lines, " ")}
}

// readReply reads one reply (RFC 5321 §4.2) within the deadline.
func (c *client) readReply(timeout time.Duration) (reply, error) {
	var r reply
	if err := c.arm(c.nc.SetReadDeadline, timeout); err != nil {
		return r, err
	}
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return r, fmt.Errorf("%w: reply line too long", errProtocol)
			}
			return r, c.cut(err)
		}
		s := strings.TrimRight(string(line), "\r\n")
		if len(s) < 3 {
			return r, fmt.Errorf("%w: short reply %q", errProtocol, s)
		}
		code, err := strconv.Atoi(s[:3])
		if err != nil || code < 200 || code > 599 || (r.code != 0 && code != r.code) {
			return r, fmt.Errorf("%w: bad reply %q", errProtocol, s)
		}
		r.code = code
		text := ""
		more := false
		if len(s) > 3 {
			more = s[3] == '-'
			text = s[4:]
		}
		r.lines = append(r.lines, text)
		if !more {
			break
		}
	}
	// RFC 2034: the enhanced code starts the text of the last line.
	last := r.lines[len(r.lines)-1]
	if sp := strings.IndexByte(last, ' '); sp > 0 || len(last) >= 5 {
		word := last
		if sp > 0 {
			word = last[:sp]
		}
		if enh, ok := parseEnhanced(word); ok && enh[0] == r.code/100 {
			r.enh = enh
			r.lines[len(r.lines)-1] = strings.TrimPrefix(strings.TrimPrefix(last, word), " ")
		}
	}
	if r.enh == (smtp.EnhancedCode{}) {
		r.enh = smtp.EnhancedCode{r.code / 100, 0, 0}
	}
	return r, nil
}

func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, false
	}
	var e smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return smtp.EnhancedCode{}, false
		}
		e[i] = n
	}
	return e, true
}

func (c *client) flush() error {
	if err := c.arm(c.nc.SetWriteDeadline, c.cmdTimeout); err != nil {
		return err
	}
	return c.cut(c.bw.Flush())
}

// handshake reads the greeting and says LHLO (or EHLO).
func (c *client) handshake(localName string, timeout time.Duration) error {
	r, err := c.readReply(timeout)
	if err != nil {
		return err
	}
	if r.code != 220 {
		return r.err()
	}
	verb := "EHLO"
	if c.lmtp {
		verb = "LHLO"
	}
	fmt.Fprintf(c.bw, "%s %s\r\n", verb, localName)
	if err := c.flush(); err != nil {
		return err
	}
	r, err = c.readReply(timeout)
	if err != nil {
		return err
	}
	if r.code != 250 {
		return r.err()
	}
	c.ext = map[string]string{}
	for _, l := range r.lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// exchange sends a group of commands and returns their replies in order.
// When the peer offers PIPELINING the group goes out in one write and the
// replies are read after it (RFC 2920 §3.1: DATA, if present, must be
// last). Otherwise each command waits for the previous reply, and before
// each command after the first, more(replies so far) decides whether the
// rest is worth sending: the replies are then fewer than the commands.
//
// An error means the connection is unusable; a 421 (the peer is closing,
// RFC 5321 §3.8) is returned as that error, with the replies before it.
func (c *client) exchange(cmds []string, more func(done []reply) bool) ([]reply, error) {
	pipelined := c.has("PIPELINING")
	if pipelined {
		for _, cmd := range cmds {
			c.bw.WriteString(cmd)
			c.bw.WriteString("\r\n")
		}
		if err := c.flush(); err != nil {
			return nil, err
		}
	}
	replies := make([]reply, 0, len(cmds))
	for i, cmd := range cmds {
		if !pipelined {
			if i > 0 && !more(replies) {
				break
			}
			c.bw.WriteString(cmd)
			c.bw.WriteString("\r\n")
			if err := c.flush(); err != nil {
				return replies, err
			}
		}
		r, err := c.readReply(c.cmdTimeout)
		if err != nil {
			return replies, err
		}
		replies = append(replies, r)
		if r.code == 421 {
			return replies, r.err()
		}
	}
	return replies, nil
}

// dotWriter does the transparency of RFC 5321 §4.5.2 in bulk: it scans for
// "\n." instead of looking at every byte.
type dotWriter struct {
	c       *client
	timeout time.Duration
	bol     bool // the next byte starts a line (after LF: a lenient peer sees a line there too)
	any     bool // something was written
	crlf    bool // what was written ends in CRLF
	lastCR  bool // what was written ends in CR
}

var nlDot = []byte("\n.")

func (w *dotWriter) Write(p []byte) (int, error) {
	n := len(p)
	if n == 0 {
		return 0, nil
	}
	// A peer that stops reading must not hold the transaction for ever.
	if err := w.c.arm(w.c.nc.SetWriteDeadline, w.timeout); err != nil {
		return 0, err
	}
	w.any = true
	if w.bol && p[0] == '.' {
		w.c.bw.WriteByte('.')
	}
	w.bol = p[n-1] == '\n'
	w.crlf = (n >= 2 && p[n-2] == '\r' && p[n-1] == '\n') || (n == 1 && w.lastCR && p[0] == '\n')
	w.lastCR = p[n-1] == '\r'
	for {
		i := bytes.Index(p, nlDot)
		if i < 0 {
			break
		}
		w.c.bw.Write(p[:i+1])
		w.c.bw.WriteByte('.')
		p = p[i+1:]
	}
	// bufio.Writer errors are sticky: one that occurred above shows here.
	if _, err := w.c.bw.Write(p); err != nil {
		return 0, w.c.cut(err)
	}
	return n, nil
}

// end writes the end-of-data line, with the CRLF a message needs before it.
func (w *dotWriter) end() error {
	// The terminator is CRLF.CRLF (RFC 5321 §4.1.1.4); a message not ending
	// in CRLF gets one, or the peer would take the dot as content.
	if w.any && !w.crlf {
		w.c.bw.WriteString("\r\n")
	}
	w.c.bw.WriteString(".\r\n")
	if err := w.c.flush(); err != nil {
		return err
	}
	// The buffer goes back to the pool with the connection: clear the last
	// bytes of the message it held (plaintext, for an unencrypted copy).
	// After a flush the whole buffer is available.
	b := w.c.bw.AvailableBuffer()
	clear(b[:cap(b)])
	return nil
}

// quit ends a healthy connection politely, without waiting long for it.
func (c *client) quit() {
	c.nc.SetDeadline(time.Now().Add(time.Second))
	c.bw.WriteString("QUIT\r\n")
	if c.bw.Flush() == nil {
		c.br.ReadSlice('\n')
	}
	c.nc.Close()
}
