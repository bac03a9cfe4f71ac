package filter

import (
	"bytes"
	"github.com/smimefilter/smimefilter/server"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// writeCounter counts the write(2) calls the filter makes on the sockets
// it accepts: every Write on a net.UnixConn is one system call.
type writeCounter struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, writes: &l.writes}, nil
}

type countedConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func startCountedFilter(t *testing.T, f *fakeLMTP, o filterOpts) (*runningFilter, *writeCounter) {
	var wc *writeCounter
	o.wrap = func(l net.Listener) net.Listener { wc = &writeCounter{Listener: l}; return wc }
	return startFilter(t, f.path, o), wc
}

// dialRaw connects to the filter and returns the connection and a function
// that makes exactly one read(2): what one read returns is what the server
// sent in one write, since a Unix stream socket does not split a small
// write.
func dialRaw(t *testing.T, path string) (net.Conn, func() string) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	buf := make([]byte, 64<<10)
	readOnce := func() string {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil && n == 0 {
			return "read error: " + err.Error()
		}
		return string(buf[:n])
	}
	return c, readOnce
}

func TestMultilineReplyLeavesInOneWrite(t *testing.T) {
	f := startFakeLMTP(t)
	rf, wc := startCountedFilter(t, f, filterOpts{})
	c, readOnce := dialRaw(t, rf.path)
	if got := readOnce(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("greeting %q", got)
	}
	before := wc.writes.Load()
	io.WriteString(c, "LHLO postfix.test\r\n")
	got := readOnce()
	lines := strings.Split(strings.TrimSuffix(got, "\r\n"), "\r\n")
	if len(lines) < 5 || !strings.HasPrefix(lines[len(lines)-1], "250 ") {
		t.Fatalf("one read returned %q, want the whole multi-line LHLO reply", got)
	}
	if n := wc.writes.Load() - before; n != 1 {
		t.Errorf("the %d-line LHLO reply took %d writes, want 1", len(lines), n)
	}
}

// RFC 2920: the replies to a pipelined group may leave together. Postfix's
// lmtp client sends MAIL, RCPT... and DATA in one go and then waits; the
// filter answers them in one write instead of one per command.
func TestPipelinedRepliesLeaveTogether(t *testing.T) {
	f := startFakeLMTP(t)
	rf, wc := startCountedFilter(t, f, filterOpts{})
	c, readOnce := dialRaw(t, rf.path)
	readOnce() // greeting
	io.WriteString(c, "LHLO postfix.test\r\n")
	readOnce()
	before := wc.writes.Load()
	io.WriteString(c, "MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
	got := readOnce()
	if n := wc.writes.Load() - before; n != 1 {
		t.Errorf("four pipelined replies took %d writes, want 1", n)
	}
	want := []string{"250 ", "250 ", "250 ", "354 "}
	lines := strings.Split(strings.TrimSuffix(got, "\r\n"), "\r\n")
	if len(lines) != len(want) {
		t.Fatalf("one read returned %q, want the four replies", got)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("reply %d = %q, want %s...", i, lines[i], w)
		}
	}
	// The body, the end of data and QUIT in one write too: both LMTP
	// statuses and the 221 must still come, and the message be stored
	// once with both recipients.
	io.WriteString(c, "Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
	var all bytes.Buffer
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(&all, c) // until the server closes after QUIT
	lines = strings.Split(strings.TrimSuffix(all.String(), "\r\n"), "\r\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "250 ") || !strings.HasPrefix(lines[1], "250 ") || !strings.HasPrefix(lines[2], "221 ") {
		t.Fatalf("after the data: %q, want two 250 statuses and 221", all.String())
	}
	if ms := f.messages(); len(ms) != 1 || len(ms[0].rcpts) != 2 {
		t.Fatalf("backend stored %+v, want one copy for two recipients", ms)
	}
}

// A reply held back must not be lost when the server closes: the 421 of an
// idle timeout comes before the close.
func TestHeldReplyFlushedOnClose(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{ReadTimeout: 200 * time.Millisecond}})
	c, readOnce := dialRaw(t, rf.path)
	readOnce() // greeting
	var all bytes.Buffer
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(&all, c)
	if !strings.HasPrefix(all.String(), "421 4.4.2") {
		t.Fatalf("after the idle timeout: %q, want 421 4.4.2 before the close", all.String())
	}
}

// A body larger than the read-ahead buffer, written in pieces of odd sizes,
// arrives intact: the read-ahead hands out every byte once, in order.
func TestReadAheadKeepsLargeBodyIntact(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	c, readOnce := dialRaw(t, rf.path)
	readOnce()
	io.WriteString(c, "LHLO postfix.test\r\n")
	readOnce()
	io.WriteString(c, "MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
	if got := readOnce(); !strings.Contains(got, "354 ") {
		t.Fatalf("got %q", got)
	}
	var body bytes.Buffer
	body.WriteString("Subject: big\r\n\r\n")
	for i := 0; body.Len() < 300<<10; i++ {
		// Lines of varying length, some starting with a dot (stuffed).
		line := strings.Repeat(string(rune('a'+i%26)), i%997)
		if i%7 == 0 {
			line = "." + line
		}
		body.WriteString(line + "\r\n")
	}
	stuffed := bytes.ReplaceAll(body.Bytes(), []byte("\r\n."), []byte("\r\n.."))
	stuffed = append(stuffed, ".\r\n"...)
	for p := stuffed; len(p) > 0; {
		n := min(len(p), 7919)
		if _, err := c.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if got := readOnce(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("status %q", got)
	}
	ms := f.messages()
	if len(ms) != 1 || !bytes.HasSuffix(ms[0].data, body.Bytes()) {
		t.Fatalf("stored copy differs from the body sent (%d messages)", len(ms))
	}
}

// CHUNKING (RFC 3030) is offered by go-smtp: BDAT chunks are counted, not
// dot-terminated, so a lone "." line inside is content. Both recipients
// get their own status after BDAT LAST, and the copy stored is the bytes
// sent.
func TestBDATChunks(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	_, cmd := rawSession(t, rf.path)
	if got := cmd("LHLO postfix.test\r\n"); !strings.Contains(got, "CHUNKING") {
		t.Fatalf("LHLO: %q", got)
	}
	cmd("MAIL FROM:<s@example.net>\r\n")
	cmd("RCPT TO:<a@example.org>\r\n")
	cmd("RCPT TO:<b@example.org>\r\n")
	part1 := "Subject: chunks\r\n\r\nfirst line\r\n.\r\n..two dots\r\n"
	part2 := "last line, no dot-stuffing here\r\n"
	if got := cmd("BDAT " + strconv.Itoa(len(part1)) + "\r\n" + part1); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("first chunk: %q", got)
	}
	got := cmd("BDAT " + strconv.Itoa(len(part2)) + " LAST\r\n" + part2)
	lines := strings.Split(strings.TrimSuffix(got, "\r\n"), "\r\n")
	// rawSession's read stops at the first complete reply; the second
	// status may come in the same read or the next.
	if len(lines) < 2 {
		got += cmd("NOOP\r\n")
		lines = strings.Split(strings.TrimSuffix(got, "\r\n"), "\r\n")
	}
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "250 ") || !strings.HasPrefix(lines[1], "250 ") {
		t.Fatalf("after BDAT LAST: %q, want two 250 statuses", got)
	}
	ms := f.messages()
	if len(ms) != 1 || len(ms[0].rcpts) != 2 {
		t.Fatalf("backend stored %+v, want one copy for two recipients", ms)
	}
	if want := part1 + part2; !bytes.HasSuffix(ms[0].data, []byte(want)) {
		t.Fatalf("stored %q, want it to end with %q", ms[0].data, want)
	}
}
