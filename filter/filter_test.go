package filter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/server"
)

func TestPerRecipientStatusFromBackend(t *testing.T) {
	f := startFakeLMTP(t)
	f.answer = func(rcpt string) error {
		switch {
		case strings.HasPrefix(rcpt, "busy@"):
			return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "Mailbox busy"}
		case strings.HasPrefix(rcpt, "gone@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
		}
		return nil
	}
	rf := startFilter(t, f.path, filterOpts{})
	cl := lmtpClient(t, rf.path)
	got := send(t, cl, "sender@example.net", []string{"ok@example.org", "busy@example.org", "gone@example.org"}, msg("s1", "hello\r\n"))
	want := map[string]result{
		"ok@example.org":   {250, smtp.EnhancedCode{2, 0, 0}},
		"busy@example.org": {450, smtp.EnhancedCode{4, 2, 0}},
		"gone@example.org": {550, smtp.EnhancedCode{5, 1, 1}},
	}
	for r, w := range want {
		if got[r] != w {
			t.Errorf("%s: got %v, want %v", r, got[r], w)
		}
	}
	ms := f.messages()
	if len(ms) != 1 || len(ms[0].rcpts) != 1 || ms[0].rcpts[0] != "ok@example.org" {
		t.Fatalf("backend stored %+v, want one copy for ok@example.org", ms)
	}
	// Policy plaintext (the test default) marks the copy and keeps the rest.
	if !bytes.HasPrefix(ms[0].data, []byte(PlaintextHeader+": plaintext")) || !bytes.HasSuffix(ms[0].data, msg("s1", "hello\r\n")) {
		t.Errorf("stored copy = %q", ms[0].data)
	}
	// One log line per recipient outcome, with the fields operators grep for.
	logs := rf.logs.String()
	for _, want := range []string{"rcpt=ok@example.org", "code=250", "rcpt=busy@example.org", "code=450", "rcpt=gone@example.org", "code=550", "size=", "duration="} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestRcptRefusedByBackend(t *testing.T) {
	f := startFakeLMTP(t)
	f.rcptAnswer = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "gone@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	rf := startFilter(t, f.path, filterOpts{})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"gone@example.org", "ok@example.org"}, msg("s", "x\r\n"))
	if got["gone@example.org"].code != 550 || got["ok@example.org"].code != 250 {
		t.Fatalf("got %v, want 550 and 250", got)
	}
}

func TestBackendDownIsTemporary(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-dovecot.sock")
	rf := startFilter(t, missing, filterOpts{pool: deliver.PoolOptions{DialTimeout: time.Second}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org", "b@example.org"}, msg("down", "x\r\n"))
	for _, r := range []string{"a@example.org", "b@example.org"} {
		if got[r].code != 451 || got[r].enh != (smtp.EnhancedCode{4, 4, 1}) {
			t.Errorf("%s: got %v, want 451 4.4.1", r, got[r])
		}
	}
}

func TestBackendHangsIsTemporary(t *testing.T) {
	// A peer that accepts the connection but never greets.
	path := filepath.Join(t.TempDir(), "hang.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	rf := startFilter(t, path, filterOpts{pool: deliver.PoolOptions{DialTimeout: 300 * time.Millisecond}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org"}, msg("hang", "x\r\n"))
	if got["a@example.org"].code/100 != 4 || got["a@example.org"].enh[1] != 4 {
		t.Errorf("got %v, want 4xx 4.4.x", got["a@example.org"])
	}
}

func TestPoolReusesConnections(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{pool: deliver.PoolOptions{MaxIdle: 2, MaxConns: 8, MaxTransactions: 1000}})
	cl := lmtpClient(t, rf.path)
	for i := range 100 {
		got := send(t, cl, "s@example.net", []string{"a@example.org"}, msg(fmt.Sprint("m", i), "x\r\n"))
		if got["a@example.org"].code != 250 {
			t.Fatalf("message %d: %v", i, got)
		}
	}
	if n := f.dials.Load(); n > 2 {
		t.Errorf("100 sequential messages used %d connections, want at most max idle (2)", n)
	}
	if len(f.messages()) != 100 {
		t.Errorf("backend got %d messages, want 100", len(f.messages()))
	}
}

func TestPoolExhaustedIsTemporary(t *testing.T) {
	f := startFakeLMTP(t)
	// The backend holds the first delivery until released.
	release := make(chan struct{})
	f.answer = func(rcpt string) error {
		if rcpt == "a@example.org" {
			<-release
		}
		return nil
	}
	// One outbound connection: a second transaction cannot get one while
	// the first is delivered, and must fail over in bounded time, not wait
	// for ever.
	rf := startFilter(t, f.path, filterOpts{pool: deliver.PoolOptions{MaxConns: 1, MaxIdle: 1, WaitTimeout: 300 * time.Millisecond}})
	first := make(chan map[string]result, 1)
	go func() {
		first <- send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org"}, msg("first", "x\r\n"))
	}()
	waitFor(t, "the first copy to hold the connection", 5*time.Second, func() bool { return rf.pool.Stats().Open == 1 && rf.pool.Stats().Idle == 0 })

	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"b@example.org"}, msg("second", "x\r\n"))
	if g := got["b@example.org"]; g.code != 451 || g.enh != (smtp.EnhancedCode{4, 4, 1}) {
		t.Errorf("no free connection: got %v, want 451 4.4.1", g)
	}
	close(release)
	if g := (<-first)["a@example.org"]; g.code != 250 {
		t.Errorf("first transaction: %v, want 250", g)
	}
}

func TestPoolMaxTransactionsPerConnection(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{pool: deliver.PoolOptions{MaxIdle: 1, MaxTransactions: 10}})
	cl := lmtpClient(t, rf.path)
	for i := range 30 {
		send(t, cl, "s@example.net", []string{"a@example.org"}, msg(fmt.Sprint("m", i), "x\r\n"))
	}
	if n := f.dials.Load(); n != 3 {
		t.Errorf("30 messages with 10 transactions per connection used %d connections, want 3", n)
	}
}

func TestBackendClosingIdleConnection(t *testing.T) {
	// Dovecot drops idle LMTP clients after its own timeout; so does this one.
	f := startFakeLMTP(t, func(s *smtp.Server) { s.ReadTimeout = 150 * time.Millisecond })
	rf := startFilter(t, f.path, filterOpts{pool: deliver.PoolOptions{MaxIdle: 1, IdleTimeout: time.Hour}})
	cl := lmtpClient(t, rf.path)
	if got := send(t, cl, "s@example.net", []string{"a@example.org"}, msg("first", "x\r\n")); got["a@example.org"].code != 250 {
		t.Fatalf("first: %v", got)
	}
	waitFor(t, "the backend to close the idle connection", 10*time.Second, func() bool { return f.closed.Load() == 1 })
	if got := send(t, cl, "s@example.net", []string{"a@example.org"}, msg("second", "x\r\n")); got["a@example.org"].code != 250 {
		t.Fatalf("after the backend closed the idle connection: %v, want 250", got)
	}
	if f.dials.Load() != 2 {
		t.Errorf("dials = %d, want 2 (one redial)", f.dials.Load())
	}
}

func TestRewriteRules(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Rewriter: mustRewriter(t,
		recipients.Rule{Match: `^(.*)@old\.example$`, Replace: `$1@example.org`},
		recipients.Rule{Match: `^broken@.*$`, Replace: `no-at-sign`},
	)}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"alice@old.example", "broken@example.org", "bob@example.org"}, msg("rw", "x\r\n"))
	if got["alice@old.example"].code != 250 || got["bob@example.org"].code != 250 {
		t.Errorf("got %v", got)
	}
	if g := got["broken@example.org"]; g.code != 451 || g.enh != (smtp.EnhancedCode{4, 3, 5}) {
		t.Errorf("invalid rewrite result: got %v, want 451 4.3.5", g)
	}
	ms := f.messages()
	if len(ms) != 1 || strings.Join(ms[0].rcpts, ",") != "alice@example.org,bob@example.org" {
		t.Fatalf("backend got %+v, want alice@example.org,bob@example.org", ms)
	}
	logs := rf.logs.String()
	if !strings.Contains(logs, "rcpt=alice@old.example rewritten=alice@example.org") {
		t.Errorf("log does not show original and rewritten address")
	}
	if !strings.Contains(logs, `level=ERROR msg=recipient`) || !strings.Contains(logs, "no-at-sign") {
		t.Errorf("invalid rewrite not logged as an error with its result")
	}
}

func TestMaildirDelivery(t *testing.T) {
	root := t.TempDir()
	md, err := deliver.NewMaildir(filepath.Join(root, "%d", "%n"))
	if err != nil {
		t.Fatal(err)
	}
	rf := startFilter(t, "", filterOpts{cfg: Config{Deliver: md}})
	body := "line one\r\n8-bit: \xc3\xa9\r\n"
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"Alice@Example.ORG", "bob@example.org"}, msg("md", body))
	if got["Alice@Example.ORG"].code != 250 || got["bob@example.org"].code != 250 {
		t.Fatalf("got %v", got)
	}
	for _, user := range []string{"alice", "bob"} {
		dir := filepath.Join(root, "example.org", user)
		news, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
		tmps, _ := filepath.Glob(filepath.Join(dir, "tmp", "*"))
		if len(news) != 1 || len(tmps) != 0 {
			t.Fatalf("%s: new=%v tmp=%v, want one file in new/ and none in tmp/", user, news, tmps)
		}
		data, _ := os.ReadFile(news[0])
		// Maildir files hold LF line ends.
		if !bytes.HasSuffix(data, bytes.ReplaceAll(msg("md", body), []byte("\r\n"), []byte("\n"))) {
			t.Errorf("%s: stored %q", user, data)
		}
		if !strings.Contains(filepath.Base(news[0]), fmt.Sprintf(",S=%d", len(data))) {
			t.Errorf("%s: name %s lacks ,S=%d", user, news[0], len(data))
		}
	}
}

func TestMaildirUnwritableIsTemporary(t *testing.T) {
	root := t.TempDir()
	// A file where the domain directory should be: creating the Maildir
	// fails the way a broken mount or permission does, even for root.
	if err := os.WriteFile(filepath.Join(root, "example.org"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	md, _ := deliver.NewMaildir(filepath.Join(root, "%d", "%n"))
	rf := startFilter(t, "", filterOpts{cfg: Config{Deliver: md}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org", "../x@example.org"}, msg("md", "x\r\n"))
	if got["a@example.org"].code != 451 {
		t.Errorf("unwritable Maildir: got %v, want 451", got["a@example.org"])
	}
	if got["../x@example.org"].code != 550 {
		t.Errorf("address escaping the Maildir root: got %v, want 550 5.1.3", got["../x@example.org"])
	}
}

func TestMessageSizeLimit(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{MaxMessageBytes: 10000}})
	cl := lmtpClient(t, rf.path)
	// Declared too big: refused at MAIL.
	err := cl.Mail("s@example.net", &smtp.MailOptions{Size: 20000})
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 552 {
		t.Errorf("MAIL SIZE=20000: got %v, want 552", err)
	}
	cl.Reset()
	// Too big in DATA: 552 5.3.4 and nothing delivered.
	got := send(t, cl, "s@example.net", []string{"a@example.org"}, msg("big", strings.Repeat("0123456789abcdef\r\n", 1000)))
	if g := got["a@example.org"]; g.code != 552 || g.enh != (smtp.EnhancedCode{5, 3, 4}) {
		t.Errorf("oversized DATA: got %v, want 552 5.3.4", g)
	}
	// The connection still serves.
	got = send(t, cl, "s@example.net", []string{"a@example.org"}, msg("small", "x\r\n"))
	if got["a@example.org"].code != 250 {
		t.Errorf("after an oversized message: got %v", got)
	}
	if n := len(f.messages()); n != 1 {
		t.Errorf("backend got %d messages, want only the small one", n)
	}
}

func TestRecipientLimit(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{MaxRecipients: 2}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org", "b@example.org", "c@example.org"}, msg("lim", "x\r\n"))
	if got["c@example.org"].code != 452 || got["c@example.org"].enh != (smtp.EnhancedCode{4, 5, 3}) {
		t.Errorf("third recipient: got %v, want 452 4.5.3", got["c@example.org"])
	}
	if got["a@example.org"].code != 250 || got["b@example.org"].code != 250 {
		t.Errorf("got %v", got)
	}
}

func TestOverlongLine(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{MaxLineLength: 1000}})
	c, cmd := rawSession(t, rf.path)
	startData(t, cmd)
	// The daemon answers as soon as the line is too long and closes, so
	// the rest of the write may fail: write in the background.
	go io.WriteString(c, "Subject: long\r\n\r\n"+strings.Repeat("x", 5000)+"\r\n.\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(reply), "500 5.6.0") {
		t.Errorf("overlong line: got %q, want 500 5.6.0", reply)
	}
	if len(f.messages()) != 0 {
		t.Errorf("a message with an overlong line was delivered")
	}
	// The daemon goes on serving new connections.
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org"}, msg("ok", "x\r\n"))
	if got["a@example.org"].code != 250 {
		t.Errorf("next connection: got %v", got)
	}
}

func TestNULAndEightBitArriveIntact(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	body := "nul:\x00:\r\nlatin1:\xe9\xff\r\n.leading dot\r\n"
	m := msg("nul", body)
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"a@example.org"}, m)
	if got["a@example.org"].code != 250 {
		t.Fatalf("got %v", got)
	}
	if ms := f.messages(); len(ms) != 1 || !bytes.HasSuffix(ms[0].data, m) {
		t.Fatalf("stored %q, want it to end with %q", ms, m)
	}
}

// rawSession speaks LMTP by hand, for what a well-behaved client never does.
func rawSession(t *testing.T, path string) (net.Conn, func(string) string) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	buf := make([]byte, 4096)
	read := func() string {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var out []byte
		for {
			n, err := c.Read(buf)
			out = append(out, buf[:n]...)
			// A reply ends with a line whose 4th character is a space.
			lines := strings.Split(strings.TrimRight(string(out), "\r\n"), "\r\n")
			last := lines[len(lines)-1]
			if strings.HasSuffix(string(out), "\r\n") && len(last) >= 4 && last[3] == ' ' {
				return string(out)
			}
			if err != nil {
				return string(out)
			}
		}
	}
	read() // greeting
	cmd := func(s string) string {
		if _, err := io.WriteString(c, s); err != nil {
			return "write error: " + err.Error()
		}
		return read()
	}
	return c, cmd
}

// startData opens a transaction for a@example.org up to the 354 reply.
func startData(t *testing.T, cmd func(string) string) {
	t.Helper()
	cmd("LHLO postfix.test\r\n")
	cmd("MAIL FROM:<s@example.net>\r\n")
	cmd("RCPT TO:<a@example.org>\r\n")
	if r := cmd("DATA\r\n"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %q", r)
	}
}

func TestClientGoneMidData(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	c, cmd := rawSession(t, rf.path)
	startData(t, cmd)
	io.WriteString(c, "Subject: cut\r\n\r\nhalf a mess")
	c.Close()
	// The daemon must deliver nothing and keep serving.
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"b@example.org"}, msg("after", "x\r\n"))
	if got["b@example.org"].code != 250 {
		t.Fatalf("after a client vanished: %v", got)
	}
	waitFor(t, "the aborted transaction to end", 5*time.Second, func() bool {
		return strings.Contains(rf.logs.String(), "rcpt=a@example.org")
	})
	for _, m := range f.messages() {
		if bytes.Contains(m.data, []byte("half a mess")) {
			t.Fatal("a truncated message was delivered")
		}
	}
}

func TestGarbageCommands(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	_, cmd := rawSession(t, rf.path)
	for _, tc := range []struct{ in, wantPrefix string }{
		{"HELO x\r\n", "500"}, // LMTP requires LHLO (RFC 2033 §4.1)
		{"LHLO postfix.test\r\n", "250"},
		{"BOGUS\r\n", "50"},
		{"\x00\x01\x02\r\n", "5"},
		{"RCPT TO:<a@example.org>\r\n", "502"},   // no MAIL yet
		{"MAIL FROM:<not an address\r\n", "501"}, // syntax
		{"DATA\r\n", "502"},
		{"MAIL FROM:<s@example.net>\r\n", "250"},
		{"RCPT TO:<a@example.org>\r\n", "250"},
		{"RSET\r\n", "250"},
		{"NOOP\r\n", "250"},
	} {
		if got := cmd(tc.in); !strings.HasPrefix(got, tc.wantPrefix) {
			t.Errorf("%q: got %q, want %s...", tc.in, got, tc.wantPrefix)
		}
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

func TestReadTimeout(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{ReadTimeout: 200 * time.Millisecond}})
	c, cmd := rawSession(t, rf.path)
	startData(t, cmd)
	io.WriteString(c, "Subject: stalled\r\n\r\nand then nothing")
	// A client that stalls mid-DATA is cut off; nothing is delivered.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if codes := replyCodes(string(b)); err != nil || slices.ContainsFunc(codes, func(c int) bool { return c < 400 }) {
		t.Errorf("stalled client got %q (%v), want the connection closed with no success reply", b, err)
	}
	// An idle connection is closed with 421.
	_, cmd2 := rawSession(t, rf.path)
	start := time.Now()
	if got := cmd2(""); !strings.HasPrefix(got, "421 4.4.2") || time.Since(start) > 5*time.Second {
		t.Errorf("idle connection: got %q after %v, want 421 4.4.2 after the read timeout", got, time.Since(start))
	}
	waitFor(t, "the stalled transaction to end", 5*time.Second, func() bool {
		return strings.Contains(rf.logs.String(), "rcpt=a@example.org")
	})
	if len(f.messages()) != 0 {
		t.Error("a stalled message was delivered")
	}
}

// replyCodes returns the code of every final reply line in a server's
// output (a multi-line reply counts once): tests assert on codes, never on
// substrings, which a connection id in a reply text could contain.
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

// TestMaxConnections: connections over the limit get 421 4.3.2; a flood of
// them is logged once when it starts and once, counted, when it is over.
func TestMaxConnections(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{MaxConnections: 2}})
	first := lmtpClient(t, rf.path)
	lmtpClient(t, rf.path)
	for i := range 10 {
		c, err := net.Dial("unix", rf.path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasPrefix(string(b), "421 4.3.2") {
			t.Errorf("connection %d over the limit got %q, want 421 4.3.2", i+1, b)
		}
	}
	first.Quit()
	// The slot frees when the server has closed the connection; until then
	// a new one may still be refused (and counted).
	waitFor(t, "a connection to be accepted again", 5*time.Second, func() bool {
		c, err := net.Dial("unix", rf.path)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 3)
		_, err = io.ReadFull(c, b)
		return err == nil && string(b) == "220"
	})
	logs := rf.logs.String()
	if n := strings.Count(logs, "connection limit reached"); n != 1 {
		t.Errorf("the flood start was logged %d times, want once", n)
	}
	m := regexp.MustCompile(`refused=(\d+)`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no summary of the refused connections in the log:\n%s", logs)
	}
	if n, _ := strconv.Atoi(m[1]); n < 10 {
		t.Errorf("summary counts %d refused connections, want at least 10", n)
	}
}

func TestShutdownFinishesTransactionInFlight(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	c, cmd := rawSession(t, rf.path)
	startData(t, cmd)
	io.WriteString(c, "Subject: inflight\r\n\r\nfirst half\r\n")

	stopped := make(chan struct{})
	go func() { rf.srv.Shutdown(10 * time.Second); close(stopped) }()
	waitFor(t, "the listener to close", 5*time.Second, func() bool {
		c, err := net.Dial("unix", rf.path)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case <-stopped:
		t.Fatal("shutdown did not wait for the transaction in flight")
	default:
	}
	io.WriteString(c, "second half\r\n.\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	// The transaction's reply, then 421 and the end of the connection: it
	// carries no transaction any more.
	if codes := replyCodes(string(b)); !slices.Equal(codes, []int{250, 421}) {
		t.Fatalf("in-flight transaction got %q, want 250 then 421", b)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after the last transaction")
	}
	if len(f.messages()) != 1 {
		t.Errorf("backend got %d messages, want 1", len(f.messages()))
	}
}

// TestShutdownHangsUpIdleConnections: connections without a transaction
// (after LHLO, between transactions: Postfix's cached ones) get 421 4.3.2
// and are closed at once, not after the grace period.
func TestShutdownHangsUpIdleConnections(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	afterLHLO, cmd := rawSession(t, rf.path)
	cmd("LHLO postfix.test\r\n")
	greeted, _ := rawSession(t, rf.path) // no command yet: no session either
	betweenTx := lmtpClient(t, rf.path)
	if got := send(t, betweenTx, "s@example.net", []string{"a@example.org"}, msg("one", "x\r\n")); got["a@example.org"].code != 250 {
		t.Fatal(got)
	}
	start := time.Now()
	stopped := make(chan struct{})
	go func() { rf.srv.Shutdown(time.Minute); close(stopped) }()
	for name, c := range map[string]net.Conn{"after LHLO": afterLHLO, "only greeted": greeted} {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		if codes := replyCodes(string(b)); err != nil || !slices.Equal(codes, []int{421}) || !strings.HasPrefix(string(b), "421 4.3.2") {
			t.Errorf("idle connection %s got %q (%v), want 421 4.3.2 and the end of the connection", name, b, err)
		}
	}
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("shutdown waited for idle connections")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown with only idle connections took %v", d)
	}
	if err := betweenTx.Noop(); err == nil {
		t.Error("a connection between transactions is still served after shutdown")
	}
}

// TestShutdownGraceExpires: when the grace period ends, a connection still
// in a transaction is closed by the server (not by the client's own
// timeout), nothing is delivered, and no success reply is sent.
func TestShutdownGraceExpires(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	c, cmd := rawSession(t, rf.path)
	startData(t, cmd)
	io.WriteString(c, "Subject: stuck\r\n\r\nnever finished\r\n")
	start := time.Now()
	rf.srv.Shutdown(200 * time.Millisecond)
	// The connection is closed by now: the read ends at once, long before
	// its own deadline.
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("reading after the grace period: %v, want the connection closed by the server", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("connection closed %v after shutdown began, want about the grace period", d)
	}
	if codes := replyCodes(string(b)); slices.ContainsFunc(codes, func(c int) bool { return c < 400 }) {
		t.Errorf("got %q after the grace period, want no success reply", b)
	}
	// Shutdown returned: every connection's goroutine is done, and the
	// transaction it cut ended as a deferral.
	if logs := rf.logs.String(); !strings.Contains(logs, "rcpt=a@example.org") || !strings.Contains(logs, "code=451") {
		t.Errorf("the cut transaction did not end deferred:\n%s", logs)
	}
}

// TestShutdownGraceEndsDuringCommit: the grace runs out while the outbound
// copy waits for the next hop's replies after its final dot (a Dovecot that
// took the data and went silent). Closing the connection cancels the
// session and with it Commit's wait, so Shutdown returns about when the
// grace ends, not when the data timeout (10 minutes here) would; the client
// never hears 250 for the recipient, and the daemon logs it deferred.
func TestShutdownGraceEndsDuringCommit(t *testing.T) {
	f := startFakeLMTP(t)
	arrived := make(chan struct{})
	hold := make(chan struct{})
	var arriveOnce, releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(hold) }) }
	// The fake has read the whole message when it asks for the answer;
	// holding the answer back is holding back the replies after the dot.
	f.answer = func(string) error {
		arriveOnce.Do(func() { close(arrived) })
		<-hold
		return nil
	}
	t.Cleanup(release)
	rf := startFilter(t, f.path, filterOpts{pool: deliver.PoolOptions{DataTimeout: 10 * time.Minute}})
	c, cmd := rawSession(t, rf.path)
	startData(t, cmd)
	io.WriteString(c, "Subject: held\r\n\r\nthe next hop never answers\r\n.\r\n")
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the message never reached the next hop")
	}

	const grace = 300 * time.Millisecond
	start := time.Now()
	stopped := make(chan struct{})
	go func() { rf.srv.Shutdown(grace); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		release() // or the cleanup's Shutdown waits as long as this one
		t.Fatalf("Shutdown still waits 10s after a grace of %v: the outbound Commit did not end with the session", grace)
	}
	if d := time.Since(start); d < grace || d > 10*grace {
		t.Errorf("Shutdown took %v with a grace of %v, want a little over the grace", d, grace)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c) // the server closed it: ends at once
	if codes := replyCodes(string(b)); slices.ContainsFunc(codes, func(c int) bool { return c < 400 || c >= 500 }) {
		t.Errorf("client got %q after the final dot, want a 4xx or nothing (the connection closed)", b)
	}
	deferred := regexp.MustCompile(`msg=recipient .*rcpt=a@example.org .*code=4\d\d `)
	waitFor(t, "the recipient to be logged deferred", 5*time.Second, func() bool {
		return deferred.MatchString(rf.logs.String())
	})
}

// TestShutdownRacesNewTransactions: clients start transactions in a loop,
// over and over, while Shutdown runs. Whether a MAIL counts as a
// transaction under way or is refused with 421 is decided under the same
// lock as the shutdown's count, so a transaction is either refused or
// counted, never started behind the count's back. What the clients see:
//   - a transaction whose MAIL got 250 is never cut: its RCPT, DATA and
//     RSET are answered, and the final reply is 250 or a deferral;
//   - a MAIL sent after any client was told 421 is refused;
//   - every connection ends with a 421 as its last reply;
//   - Shutdown returns as soon as the last transaction ends, long before
//     its grace: the count neither misses a transaction nor keeps one.
//
// This is a regression test for the race in the old beginTx (stopping read
// outside the lock that guarded the count: git show 2ee0929:filter/filter.go).
// It cannot make that interleaving happen on demand, so it does not fail
// on every run of the old code; it hammers the window from several clients
// under -race, in several rounds since each shutdown is one chance. Reading
// stopping under the lock, releasing it and calling runtime.Gosched() before
// counting the transaction in server's session.Mail made some rounds fail on
// most runs; without the Gosched (as narrow as the old code's window, an
// atomic load and then the lock) no run here caught it.
func TestShutdownRacesNewTransactions(t *testing.T) {
	for round := range 10 {
		t.Run(strconv.Itoa(round), shutdownRacingTransactions)
	}
}

func shutdownRacingTransactions(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	const clients = 8
	var hungUp atomic.Bool // some client was told 421: the server is stopping
	var began, finished atomic.Int64
	conns := make([]*textproto.Conn, clients)
	for i := range conns {
		c, err := net.Dial("unix", rf.path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = textproto.NewConn(c)
		c.SetDeadline(time.Now().Add(time.Minute))
		if _, _, err := conns[i].ReadResponse(220); err != nil {
			t.Fatal(err)
		}
		if err := conns[i].PrintfLine("LHLO postfix.test"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := conns[i].ReadResponse(250); err != nil {
			t.Fatal(err)
		}
	}
	// cmd sends one command and reads its reply. A write may fail once the
	// server has hung up; its 421 is still there to read.
	cmd := func(tp *textproto.Conn, line string) (int, error) {
		tp.PrintfLine("%s", line)
		code, _, err := tp.ReadResponse(0)
		return code, err
	}
	// ended checks that nothing follows the 421 but the end of the
	// connection (RFC 5321 §3.8).
	ended := func(k int, tp *textproto.Conn) error {
		rest, err := io.ReadAll(tp.R)
		var ne net.Error
		if len(rest) > 0 || (errors.As(err, &ne) && ne.Timeout()) {
			return fmt.Errorf("client %d: after the 421 got %q (%v), want the end of the connection", k, rest, err)
		}
		return nil
	}
	type step struct {
		line string
		ok   func(code int) bool
	}
	is := func(want int) func(int) bool { return func(code int) bool { return code == want } }
	// The end of data may be deferred, but not get the 421 of a hang-up.
	delivered := func(code int) bool { return code == 250 || code/100 == 4 && code != 421 }
	run := func(k int, tp *textproto.Conn) error {
		for i := 0; ; i++ {
			late := hungUp.Load()
			code, err := cmd(tp, "MAIL FROM:<s@example.net>")
			switch {
			case err != nil && code == 0:
				return fmt.Errorf("client %d: MAIL got no reply: %w", k, err)
			case code == 421:
				hungUp.Store(true)
				return ended(k, tp)
			case code != 250:
				return fmt.Errorf("client %d: MAIL got %d %v", k, code, err)
			case late:
				return fmt.Errorf("client %d: a MAIL sent after the server said 421 got 250", k)
			}
			began.Add(1)
			// From here the transaction is under way: the server must
			// let it end. Most end with RSET, which is quick and so
			// brings the next MAIL round sooner; every fourth is
			// delivered.
			steps := []step{{"RCPT TO:<a@example.org>", is(250)}, {"RSET", is(250)}}
			if i%4 == 3 {
				steps = []step{steps[0], {"DATA", is(354)}, {"Subject: race\r\n\r\nx\r\n.", delivered}}
			}
			for _, st := range steps {
				if code, err := cmd(tp, st.line); !st.ok(code) {
					return fmt.Errorf("client %d: transaction %d, begun with 250 to MAIL, was cut: %q got %d %v", k, i, st.line, code, err)
				}
			}
			finished.Add(1)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for k, tp := range conns {
		wg.Go(func() { errs <- run(k, tp) })
	}
	waitFor(t, "the clients to be under way", 20*time.Second, func() bool { return began.Load() >= 4*clients })

	const grace = time.Minute
	start := time.Now()
	stopped := make(chan struct{})
	go func() { rf.srv.Shutdown(grace); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown still waits 20s after it began: a transaction stayed counted after its end")
	}
	took := time.Since(start)
	wg.Wait()
	t.Logf("shutdown took %v; %d transactions begun, %d finished", took, began.Load(), finished.Load())
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if b, e := began.Load(), finished.Load(); b != e {
		t.Errorf("%d transactions got 250 to MAIL, %d of them ended", b, e)
	}
}

// TestShutdownHangsUpAfterTransaction: a connection in a transaction when
// shutdown begins may finish it; its next command is refused with 421 and
// the connection ends, and the shutdown does not wait for it.
func TestShutdownHangsUpAfterTransaction(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	c1, cmd := rawSession(t, rf.path)
	cmd("LHLO postfix.test\r\n")
	cmd("MAIL FROM:<s@example.net>\r\n") // holds the shutdown open
	stopped := make(chan struct{})
	go func() { rf.srv.Shutdown(30 * time.Second); close(stopped) }()
	waitFor(t, "the listener to close", 5*time.Second, func() bool {
		c, err := net.Dial("unix", rf.path)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	io.WriteString(c1, "RSET\r\nMAIL FROM:<s@example.net>\r\n")
	c1.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c1)
	if codes := replyCodes(string(b)); !slices.Equal(codes, []int{250, 421}) {
		t.Errorf("RSET, MAIL during shutdown: got %q, want 250 then 421 and the end", b)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown still waits after the last transaction ended")
	}
}

// TestShutdownClientGoneBeforeData: a client holding a transaction goes
// away before DATA: the shutdown does not wait for it until the grace
// period ends.
func TestShutdownClientGoneBeforeData(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	c1, cmd := rawSession(t, rf.path)
	cmd("LHLO postfix.test\r\n")
	cmd("MAIL FROM:<s@example.net>\r\n")
	stopped := make(chan struct{})
	go func() { rf.srv.Shutdown(time.Minute); close(stopped) }()
	c1.Close()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("shutdown still waits for a transaction whose client is gone")
	}
}

func TestStatusMapping(t *testing.T) {
	dovecot := &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Quota exceeded"}
	for _, tc := range []struct {
		name string
		err  error
		code int
		enh  smtp.EnhancedCode
	}{
		{"unknown", errors.New("something odd"), 451, smtp.EnhancedCode{4, 3, 0}},
		{"wrapped unknown", fmt.Errorf("x: %w", io.ErrShortWrite), 451, smtp.EnhancedCode{4, 3, 0}},
		{"dovecot reply", dovecot, 552, smtp.EnhancedCode{5, 2, 2}},
		{"wrapped dovecot reply", fmt.Errorf("rcpt: %w", dovecot), 552, smtp.EnhancedCode{5, 2, 2}},
		{"dovecot 4xx", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}}, 451, smtp.EnhancedCode{4, 3, 0}},
		{"nonsense reply code", &smtp.SMTPError{Code: 250}, 451, smtp.EnhancedCode{4, 3, 0}},
		{"unreachable", fmt.Errorf("dial: %w: %w", deliver.ErrUnreachable, syscall.ECONNREFUSED), 451, smtp.EnhancedCode{4, 4, 1}},
		{"connection", fmt.Errorf("x: %w", deliver.ErrConnection), 451, smtp.EnhancedCode{4, 4, 2}},
		{"connection with 421", fmt.Errorf("x: %w: %w", deliver.ErrConnection, &smtp.SMTPError{Code: 421}), 451, smtp.EnhancedCode{4, 4, 2}},
		{"closed", deliver.ErrClosed, 421, smtp.EnhancedCode{4, 3, 2}},
		{"bad rewrite", fmt.Errorf("r: %w", recipients.ErrInvalidAddress), 451, smtp.EnhancedCode{4, 3, 5}},
		{"no certificate", ErrNoCertificate, 451, smtp.EnhancedCode{4, 7, 0}},
		{"policy reject", ErrPolicyReject, 550, smtp.EnhancedCode{5, 7, 1}},
		{"too big", smtp.ErrDataTooLarge, 552, smtp.EnhancedCode{5, 3, 4}},
		{"line too long", fmt.Errorf("%w: %w", ErrLineTooLong, smtp.ErrTooLongLine), 500, smtp.EnhancedCode{5, 6, 0}},
		{"bad mailbox", fmt.Errorf("%w: x", deliver.ErrBadMailbox), 550, smtp.EnhancedCode{5, 1, 3}},
		{"disk full", fmt.Errorf("write: %w", syscall.ENOSPC), 452, smtp.EnhancedCode{4, 2, 2}},
		{"quota", &os.PathError{Op: "write", Path: "x", Err: syscall.EDQUOT}, 452, smtp.EnhancedCode{4, 2, 2}},
		{"permission", &os.PathError{Op: "open", Path: "x", Err: syscall.EACCES}, 451, smtp.EnhancedCode{4, 3, 0}},
		{"client gone", fmt.Errorf("%w: %w", ErrClientGone, io.ErrUnexpectedEOF), 451, smtp.EnhancedCode{4, 3, 0}},
		{"canceled", context.Canceled, 451, smtp.EnhancedCode{4, 3, 0}},
		{"encrypt", fmt.Errorf("%w: boom", ErrEncrypt), 451, smtp.EnhancedCode{4, 3, 0}},
		{"panic", fmt.Errorf("DATA: %w: boom", ErrPanic), 451, smtp.EnhancedCode{4, 3, 0}},
		{"spool", fmt.Errorf("x: %w: %w", ErrSpool, syscall.EIO), 451, smtp.EnhancedCode{4, 3, 0}},
		{"pool exhausted", fmt.Errorf("no free connection: %w", deliver.ErrUnreachable), 451, smtp.EnhancedCode{4, 4, 1}},
	} {
		se := Status(tc.err)
		if se == nil || se.Code != tc.code || se.EnhancedCode != tc.enh {
			t.Errorf("%s: Status(%v) = %+v, want %d %v", tc.name, tc.err, se, tc.code, tc.enh)
		}
	}
	if Status(nil) != nil {
		t.Error("Status(nil) != nil")
	}
}

func TestSMTPSourceDrivesFilter(t *testing.T) {
	bin, err := exec.LookPath("smtp-source")
	if err != nil {
		bin = "/usr/sbin/smtp-source"
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("smtp-source (package postfix) is missing in CI")
			}
			t.Skip("smtp-source (package postfix) not installed")
		}
	}
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{pool: deliver.PoolOptions{MaxIdle: 4}})
	// 4 sessions, 200 messages of 1 KiB, 2 recipients each, over LMTP.
	out, err := exec.Command(bin, "-L", "-s", "4", "-m", "200", "-l", "1024", "-r", "2", "-f", "sender@example.net", "-t", "rcpt@example.org", "unix:"+rf.path).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-source: %v\n%s", err, out)
	}
	var rcpts int
	for _, m := range f.messages() {
		rcpts += len(m.rcpts)
	}
	if len(f.messages()) != 200 || rcpts != 400 {
		t.Errorf("backend got %d messages for %d recipients, want 200 for 400", len(f.messages()), rcpts)
	}
	if n := f.dials.Load(); n > 8 {
		t.Errorf("%d outbound connections for 4 sessions", n)
	}
}

var _ sync.Locker = (*sync.Mutex)(nil)

func TestLHLOCapabilities(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{server: server.Options{MaxMessageBytes: 12345}})
	_, cmd := rawSession(t, rf.path)
	got := cmd("LHLO postfix.test\r\n")
	for _, want := range []string{"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE 12345", "SMTPUTF8"} {
		if !strings.Contains(got, "250-"+want+"\r\n") && !strings.Contains(got, "250 "+want+"\r\n") {
			t.Errorf("LHLO reply lacks %s:\n%s", want, got)
		}
	}
}
