package server

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// recordingBackend is the least LMTP backend the listener can run: every
// recipient is accepted, and each message is kept as received, so a test
// sees exactly the bytes that crossed batchConn.
type recordingBackend struct {
	mu   sync.Mutex
	msgs []recordedMsg
}

type recordedMsg struct {
	rcpts []string
	data  []byte
}

func (b *recordingBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &recordingSession{b: b}, nil
}

func (b *recordingBackend) messages() []recordedMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.msgs)
}

type recordingSession struct {
	b     *recordingBackend
	rcpts []string
}

func (s *recordingSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *recordingSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *recordingSession) Reset()               { s.rcpts = nil }
func (s *recordingSession) Logout() error        { return nil }
func (s *recordingSession) Data(io.Reader) error { return errors.New("LMTPData expected") }
func (s *recordingSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, recordedMsg{rcpts: slices.Clone(s.rcpts), data: data})
	s.b.mu.Unlock()
	for _, rc := range s.rcpts {
		status.SetStatus(rc, nil)
	}
	return nil
}

type testServer struct {
	path string
	srv  *Server
	be   *recordingBackend
}

// startServer serves LMTP on a unix socket in a temp dir; wrap, if set,
// wraps the listening socket (to watch what crosses it).
func startServer(t *testing.T, opts Options, wrap func(net.Listener) net.Listener) *testServer {
	t.Helper()
	ts := &testServer{path: filepath.Join(t.TempDir(), "lmtp.sock"), be: &recordingBackend{}}
	if opts.Hostname == "" {
		opts.Hostname = "server.test"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ts.srv = New(ts.be, opts)
	var l net.Listener
	l, err := net.Listen("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		l = wrap(l)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts.srv.Serve(l)
	}()
	t.Cleanup(func() {
		ts.srv.Shutdown(time.Second)
		<-done
	})
	return ts
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// writeCounter counts the write(2) calls the server makes on the sockets
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

func startCountedServer(t *testing.T, opts Options) (*testServer, *writeCounter) {
	var wc *writeCounter
	ts := startServer(t, opts, func(l net.Listener) net.Listener { wc = &writeCounter{Listener: l}; return wc })
	return ts, wc
}

// dialRaw connects to the server and returns the connection and a function
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

// replyCodes returns the code of every final reply line (a multi-line
// reply counts once): assert on codes, never on substrings.
func replyCodes(out string) []int {
	var codes []int
	for _, line := range strings.Split(out, "\r\n") {
		if len(line) >= 4 && line[3] == ' ' {
			if n, err := strconv.Atoi(line[:3]); err == nil {
				codes = append(codes, n)
			}
		}
	}
	return codes
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMultilineReplyLeavesInOneWrite(t *testing.T) {
	ts, wc := startCountedServer(t, Options{})
	c, readOnce := dialRaw(t, ts.path)
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
// server answers them in one write instead of one per command.
func TestPipelinedRepliesLeaveTogether(t *testing.T) {
	ts, wc := startCountedServer(t, Options{})
	c, readOnce := dialRaw(t, ts.path)
	readOnce() // greeting
	io.WriteString(c, "LHLO postfix.test\r\n")
	readOnce()
	before := wc.writes.Load()
	io.WriteString(c, "MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
	got := readOnce()
	if n := wc.writes.Load() - before; n != 1 {
		t.Errorf("four pipelined replies took %d writes, want 1", n)
	}
	if codes := replyCodes(got); !slices.Equal(codes, []int{250, 250, 250, 354}) {
		t.Fatalf("one read returned %q, want the four replies 250 250 250 354", got)
	}
	// The body, the end of data and QUIT in one write too: both LMTP
	// statuses and the 221 must still come, and the message be stored
	// once with both recipients.
	io.WriteString(c, "Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
	var all bytes.Buffer
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(&all, c) // until the server closes after QUIT
	if codes := replyCodes(all.String()); !slices.Equal(codes, []int{250, 250, 221}) {
		t.Fatalf("after the data: %q, want two 250 statuses and 221", all.String())
	}
	if ms := ts.be.messages(); len(ms) != 1 || len(ms[0].rcpts) != 2 {
		t.Fatalf("backend stored %+v, want one message for two recipients", ms)
	}
}

// A reply held back must not be lost when the server closes: the 421 of an
// idle timeout comes before the close.
func TestHeldReplyFlushedOnClose(t *testing.T) {
	ts := startServer(t, Options{ReadTimeout: 200 * time.Millisecond}, nil)
	c, readOnce := dialRaw(t, ts.path)
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
	ts := startServer(t, Options{}, nil)
	c, readOnce := dialRaw(t, ts.path)
	readOnce()
	io.WriteString(c, "LHLO postfix.test\r\n")
	readOnce()
	io.WriteString(c, "MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
	if got := readOnce(); !slices.Contains(replyCodes(got), 354) {
		t.Fatalf("got %q, want 354 last", got)
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
	if got := readOnce(); !slices.Equal(replyCodes(got), []int{250}) {
		t.Fatalf("status %q, want 250", got)
	}
	// The backend gets the message as go-smtp unstuffed it, nothing added:
	// it must be the body, byte for byte.
	ms := ts.be.messages()
	if len(ms) != 1 || !bytes.Equal(ms[0].data, body.Bytes()) {
		t.Fatalf("stored message differs from the body sent (%d messages)", len(ms))
	}
}

// TestShutdown421IsTheLastReply: RFC 5321 §3.8, the server closes after a
// 421. A client whose transaction ends during shutdown, and which pipelined
// more commands behind its next MAIL, gets the replies up to that MAIL's
// 421 and then the end of the connection: the commands behind it, which
// go-smtp has already read into its own buffer and still handles, are not
// answered.
func TestShutdown421IsTheLastReply(t *testing.T) {
	ts := startServer(t, Options{}, nil)
	c, readOnce := dialRaw(t, ts.path)
	readOnce() // greeting
	io.WriteString(c, "LHLO postfix.test\r\n")
	readOnce()
	io.WriteString(c, "MAIL FROM:<s@example.net>\r\n") // holds the shutdown open
	if got := readOnce(); !slices.Equal(replyCodes(got), []int{250}) {
		t.Fatalf("MAIL: %q", got)
	}
	stopped := make(chan struct{})
	go func() { ts.srv.Shutdown(30 * time.Second); close(stopped) }()
	// The listener closes after the server is marked stopping.
	waitFor(t, "the listener to close", 5*time.Second, func() bool {
		d, err := net.Dial("unix", ts.path)
		if err == nil {
			d.Close()
		}
		return err != nil
	})
	// One write: go-smtp reads it all at once, so every command after the
	// MAIL sits in its buffer when the MAIL is refused.
	io.WriteString(c, "RSET\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nNOOP\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to the end: %v", err)
	}
	if codes := replyCodes(string(b)); !slices.Equal(codes, []int{250, 421}) {
		t.Errorf("RSET, MAIL, RCPT, DATA, NOOP during shutdown: got %q, want 250 (RSET), 421 (MAIL) and the end", b)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown still waits after the last transaction ended")
	}
}

// TestReadBufferClearedBeforeReuse: the read-ahead buffer held message text
// (plaintext from Postfix); it is cleared before it goes back to the pool,
// whether the connection read it all or hung up with part of it unread.
func TestReadBufferClearedBeforeReuse(t *testing.T) {
	for _, hangUp := range []bool{false, true} {
		client, srv := net.Pipe()
		defer client.Close()
		c := &batchConn{Conn: srv}
		secret := strings.Repeat("the secret is 42\r\n", 100)
		go func() {
			client.Write([]byte(secret))
			io.Copy(io.Discard, client) // the 421 on hang-up
		}()
		p := make([]byte, 100)
		if _, err := c.Read(p); err != nil {
			t.Fatal(err)
		}
		buf := c.rbuf
		if buf == nil {
			t.Fatal("nothing read ahead")
		}
		if hangUp {
			c.hangUp()
			if _, err := c.Read(p); err != io.EOF {
				t.Fatalf("Read after hangUp: %v, want EOF", err)
			}
		} else {
			for c.rbuf != nil {
				c.Read(p)
			}
		}
		if strings.Contains(string((*buf)[:cap(*buf)]), "secret") {
			t.Errorf("hang-up %v: the pooled read buffer still holds the message text", hangUp)
		}
	}
}

// TestHangUpEndsAWaitingRead: a connection waiting for the client's next
// command gets 421 4.3.2 and EOF at once, even if go-smtp set a later read
// deadline just before.
func TestHangUpEndsAWaitingRead(t *testing.T) {
	client, srv := net.Pipe()
	defer client.Close()
	c := &batchConn{Conn: srv}
	done := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Hour))
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- string(b)
	}()
	c.hangUp()
	c.SetReadDeadline(time.Now().Add(time.Hour)) // go-smtp's next command deadline: ignored
	select {
	case err := <-done:
		if err != io.EOF {
			t.Errorf("Read returned %v, want EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a hang-up did not end the waiting Read")
	}
	c.Close()
	if s := <-got; s != replyShutdown {
		t.Errorf("client got %q, want %q", s, replyShutdown)
	}
}
