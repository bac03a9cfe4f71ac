package filter

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/server"
)

// fakeLMTP is an LMTP server standing in for Dovecot: it answers each
// recipient as told and records what it was given.
type fakeLMTP struct {
	t      testing.TB
	path   string
	srv    *smtp.Server
	dials  atomic.Int64
	closed atomic.Int64            // connections the fake closed or saw closed
	answer func(rcpt string) error // at DATA; nil error = 250

	rcptAnswer func(rcpt string) error // at RCPT

	mu      sync.Mutex
	msgs    []fakeMsg
	count   int
	discard bool // count messages only (benchmarks)
}

type fakeMsg struct {
	from  string
	rcpts []string
	data  []byte
}

func startFakeLMTP(t testing.TB, configure ...func(*smtp.Server)) *fakeLMTP {
	t.Helper()
	f := &fakeLMTP{t: t, path: filepath.Join(t.TempDir(), "lmtp.sock")}
	f.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &fakeSession{f: f}, nil
	}))
	f.srv.LMTP = true
	f.srv.Domain = "fake-dovecot"
	f.srv.EnableSMTPUTF8 = true
	f.srv.ErrorLog = testLog{t}
	for _, c := range configure {
		c(f.srv)
	}
	l, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	go f.srv.Serve(&countingListener{Listener: l, n: &f.dials, closed: &f.closed})
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *fakeLMTP) messages() []fakeMsg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeMsg(nil), f.msgs...)
}

type countingListener struct {
	net.Listener
	n, closed *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.n.Add(1)
	return &closeCounter{Conn: c, n: l.closed}, nil
}

type closeCounter struct {
	net.Conn
	once sync.Once
	n    *atomic.Int64
}

func (c *closeCounter) Close() error {
	c.once.Do(func() { c.n.Add(1) })
	return c.Conn.Close()
}

type fakeSession struct {
	f     *fakeLMTP
	from  string
	rcpts []string
}

func (s *fakeSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *fakeSession) Logout() error { return nil }
func (s *fakeSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.f.rcptAnswer != nil {
		if err := s.f.rcptAnswer(to); err != nil {
			return err
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *fakeSession) Data(r io.Reader) error { return errors.New("LMTPData expected") }

func (s *fakeSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	// Record first, answer after: the client may act on the replies at once.
	errs := make([]error, len(s.rcpts))
	var delivered []string
	for i, rc := range s.rcpts {
		if s.f.answer != nil {
			errs[i] = s.f.answer(rc)
		}
		if errs[i] == nil {
			delivered = append(delivered, rc)
		}
	}
	if len(delivered) > 0 {
		s.f.mu.Lock()
		s.f.count++
		if !s.f.discard {
			s.f.msgs = append(s.f.msgs, fakeMsg{from: s.from, rcpts: delivered, data: data})
		}
		s.f.mu.Unlock()
	}
	for i, rc := range s.rcpts {
		status.SetStatus(rc, errs[i])
	}
	return nil
}

type testLog struct{ t testing.TB }

func (l testLog) Printf(format string, v ...any) { l.t.Logf(format, v...) }
func (l testLog) Println(v ...any)               { l.t.Log(v...) }

// filterOpts is what a test may change about the daemon under test.
type filterOpts struct {
	cfg    Config
	server server.Options
	pool   deliver.PoolOptions
	// wrap, if set, wraps the filter's listening socket (to watch what
	// crosses it).
	wrap func(net.Listener) net.Listener
}

type runningFilter struct {
	path string
	srv  *server.Server
	be   *Backend
	pool *deliver.Pool
	logs *lockedBuffer
	done chan struct{}
}

// startFilter runs the filter on a unix socket in a temp dir, delivering to
// lmtpPath over a pool unless o.cfg.Deliver is set.
func startFilter(t testing.TB, lmtpPath string, o filterOpts) *runningFilter {
	t.Helper()
	rf := &runningFilter{path: filepath.Join(t.TempDir(), "filter.sock"), logs: &lockedBuffer{}, done: make(chan struct{})}
	if o.cfg.Deliver == nil {
		po := o.pool
		po.Network, po.Addr, po.LMTP = "unix", lmtpPath, true
		if po.LocalName == "" {
			po.LocalName = "filter.test"
		}
		rf.pool = deliver.NewPool(po)
		o.cfg.Deliver = rf.pool
		t.Cleanup(func() { rf.pool.Close() })
	}
	if o.cfg.Policy.Default == "" {
		o.cfg.Policy.Default = Plaintext
	}
	if o.cfg.Logger == nil {
		o.cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(rf.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	rf.be = NewBackend(o.cfg)
	if o.server.Hostname == "" {
		o.server.Hostname = "filter.test"
	}
	if o.server.Logger == nil {
		o.server.Logger = o.cfg.Logger
	}
	rf.srv = server.New(rf.be, o.server)
	l, err := net.Listen("unix", rf.path)
	if err != nil {
		t.Fatal(err)
	}
	if o.wrap != nil {
		l = o.wrap(l)
	}
	go func() {
		defer close(rf.done)
		rf.srv.Serve(l)
	}()
	t.Cleanup(func() {
		rf.srv.Shutdown(time.Second)
		<-rf.done
	})
	return rf
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// lmtpClient dials the filter like Postfix's lmtp client.
func lmtpClient(t testing.TB, path string) *smtp.Client {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	cl := smtp.NewClientLMTP(c)
	cl.CommandTimeout = 10 * time.Second
	// As Postfix's lmtp_data_done_timeout: the replies after the final
	// dot wait for every copy's delivery.
	cl.SubmissionTimeout = 10 * time.Minute
	if err := cl.Hello("postfix.test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// result is one recipient's reply as Postfix would see it.
type result struct {
	code int
	enh  smtp.EnhancedCode
}

// send runs one LMTP transaction and returns each recipient's reply: the
// RCPT reply if refused there, else its reply after DATA.
func send(t testing.TB, cl *smtp.Client, from string, rcpts []string, msg []byte) map[string]result {
	t.Helper()
	out := map[string]result{}
	if err := cl.Mail(from, nil); err != nil {
		t.Fatalf("MAIL FROM: %v", err)
	}
	accepted := 0
	for _, r := range rcpts {
		if err := cl.Rcpt(r, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				t.Fatalf("RCPT TO %s: %v", r, err)
			}
			out[r] = result{se.Code, se.EnhancedCode}
			continue
		}
		accepted++
	}
	if accepted == 0 {
		cl.Reset()
		return out
	}
	w, err := cl.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write(msg); err != nil {
		t.Fatalf("writing data: %v", err)
	}
	resp, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		t.Fatalf("end of data: %v", err)
	}
	for r := range resp {
		out[r] = result{250, smtp.EnhancedCode{2, 0, 0}}
	}
	for r, se := range lerr {
		out[r] = result{se.Code, se.EnhancedCode}
	}
	return out
}

func msg(subject, body string) []byte {
	return []byte("From: sender@example.net\r\nTo: undisclosed-recipients:;\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@example.net>\r\n\r\n" + body)
}

func mustRewriter(t testing.TB, rules ...recipients.Rule) *recipients.Rewriter {
	t.Helper()
	rw, err := recipients.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	return rw
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
