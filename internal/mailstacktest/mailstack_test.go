package mailstacktest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func message(to, subject string) []byte {
	return []byte(fmt.Sprintf("From: sender@example.com\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@example.com>\r\n\r\nhello %s\r\n",
		to, subject, strings.ReplaceAll(subject, " ", "."), subject))
}

// lmtpSend sends one LMTP transaction and returns Dovecot's reply for each
// recipient (nil for 250) in order; RCPT refusals are returned the same way.
func lmtpSend(t *testing.T, socket string, rcpts []string, msg []byte) []*smtp.SMTPError {
	t.Helper()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("test.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.com", nil); err != nil {
		t.Fatal(err)
	}
	replies := make([]*smtp.SMTPError, len(rcpts))
	var accepted []int
	for i, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				t.Fatalf("RCPT %s: %v", r, err)
			}
			replies[i] = se
			continue
		}
		accepted = append(accepted, i)
	}
	if len(accepted) == 0 {
		return replies
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	_, err = w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		t.Fatalf("DATA: %v", err)
	}
	for _, i := range accepted {
		replies[i] = lerr[rcpts[i]]
	}
	return replies
}

func code(e *smtp.SMTPError) string {
	if e == nil {
		return "250"
	}
	return fmt.Sprintf("%d %d.%d.%d", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2])
}

func TestDovecotLMTP(t *testing.T) {
	d := StartDovecot(t, DovecotOptions{
		Users:     []string{"alice@example.org", "Bob@example.org", "carol@example.org"},
		OverQuota: []string{"carol@example.org"},
	})
	if fi, err := os.Stat(d.LMTPSocket()); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket %s: %v %v, want mode 0666", d.LMTPSocket(), fi.Mode(), err)
	}

	rcpts := []string{"alice@example.org", "bob@example.org", "nobody@example.org", "carol@example.org"}
	got := lmtpSend(t, d.LMTPSocket(), rcpts, message("alice@example.org", "first"))
	want := []string{"250", "250", "550 5.1.1", "452 4.2.2"}
	for i := range rcpts {
		if code(got[i]) != want[i] {
			t.Errorf("%s: got %q (%v), want %s", rcpts[i], code(got[i]), got[i], want[i])
		}
	}
	for _, u := range []string{"alice@example.org", "bob@example.org"} {
		msgs := d.WaitMessages(u, 1, 5*time.Second)
		if len(msgs) != 1 || !strings.Contains(string(msgs[0]), "hello first") {
			t.Errorf("%s: got %d messages %q, want the one sent", u, len(msgs), msgs)
		}
	}
	if n := len(d.Messages("carol@example.org")); n != 0 {
		t.Errorf("carol (over quota): got %d messages, want 0", n)
	}

	// Lifting the quota lets carol's mail in.
	d.SetOverQuota("carol@example.org", false)
	if got := lmtpSend(t, d.LMTPSocket(), []string{"carol@example.org"}, message("carol@example.org", "second")); got[0] != nil {
		t.Fatalf("carol after lifting the quota: got %v, want 250", got[0])
	}
	d.WaitMessages("carol@example.org", 1, 5*time.Second)
	d.SetOverQuota("carol@example.org", true)
	if got := lmtpSend(t, d.LMTPSocket(), []string{"carol@example.org"}, message("carol@example.org", "third")); code(got[0]) != "452 4.2.2" {
		t.Fatalf("carol over quota again: got %s, want 452 4.2.2", code(got[0]))
	}

	// Stopped Dovecot refuses connections; started again it delivers.
	d.Stop()
	if c, err := net.Dial("unix", d.LMTPSocket()); err == nil {
		c.Close()
		t.Fatal("connected to a stopped Dovecot")
	}
	d.Start()
	if got := lmtpSend(t, d.LMTPSocket(), []string{"alice@example.org"}, message("alice@example.org", "after restart")); got[0] != nil {
		t.Fatalf("after restart: got %v, want 250", got[0])
	}
	if msgs := d.WaitMessages("alice@example.org", 2, 5*time.Second); !strings.Contains(string(msgs[1]), "after restart") {
		t.Errorf("second message: %q", msgs[1])
	}
}

func TestDovecotDetailMailbox(t *testing.T) {
	d := StartDovecot(t, DovecotOptions{
		Users:               []string{"alice@example.org"},
		RecipientDelimiter:  "+",
		SaveToDetailMailbox: true,
	})
	if got := lmtpSend(t, d.LMTPSocket(), []string{"alice+work@example.org"}, message("alice+work@example.org", "detail")); got[0] != nil {
		t.Fatalf("got %v, want 250", got[0])
	}
	d.WaitMessagesIn("alice@example.org", "work", 1, 5*time.Second)
	if n := len(d.Messages("alice@example.org")); n != 0 {
		t.Errorf("INBOX: got %d messages, want 0", n)
	}
}

func TestPostfixToDovecot(t *testing.T) {
	d := StartDovecot(t, DovecotOptions{Users: []string{"alice@example.org", "bob@example.org"}})
	p := StartPostfix(t, PostfixOptions{
		HostedDomains:    []string{"example.org"},
		VirtualTransport: "lmtp:unix:" + d.LMTPSocket(),
	})
	if err := p.Send("sender@example.com", []string{"alice@example.org", "bob@example.org", "nobody@example.org"},
		message("alice@example.org", "via postfix")); err != nil {
		t.Fatal(err)
	}
	p.WaitQueueEmpty(30 * time.Second)
	for _, u := range []string{"alice@example.org", "bob@example.org"} {
		msgs := d.WaitMessages(u, 1, 5*time.Second)
		if !strings.Contains(string(msgs[0]), "hello via postfix") {
			t.Errorf("%s: %q", u, msgs[0])
		}
		if c := p.Count(u); c != (Counts{Sent: 1}) {
			t.Errorf("%s: got %v, want sent=1 only", u, c)
		}
	}
	b := p.WaitStatus("nobody@example.org", "bounced", 10*time.Second)
	if b.DSN != "5.1.1" {
		t.Errorf("nobody: got dsn=%s, want 5.1.1 (%s)", b.DSN, b.Text)
	}
	// Mail outside the hosted domains has no route in the harness's config:
	// smtpd refuses it at RCPT.
	var se *smtp.SMTPError
	err := p.Send("sender@example.com", []string{"x@elsewhere.example"}, message("x@elsewhere.example", "elsewhere"))
	if !errors.As(err, &se) || se.Code != 550 {
		t.Errorf("elsewhere: got %v, want 550", err)
	}
}

func TestPostfixDeferThenFlush(t *testing.T) {
	d := StartDovecot(t, DovecotOptions{Users: []string{"alice@example.org"}})
	d.Stop()
	p := StartPostfix(t, PostfixOptions{
		HostedDomains:    []string{"example.org"},
		VirtualTransport: "lmtp:unix:" + d.LMTPSocket(),
	})
	if err := p.Send("sender@example.com", []string{"alice@example.org"}, message("alice@example.org", "deferred")); err != nil {
		t.Fatal(err)
	}
	p.WaitStatus("alice@example.org", "deferred", 10*time.Second)
	if p.QueueEmpty() {
		t.Fatal("queue empty after a deferral")
	}
	d.Start()
	p.Flush()
	p.WaitQueueEmpty(30 * time.Second)
	d.WaitMessages("alice@example.org", 1, 5*time.Second)
	if c := p.Count("alice@example.org"); c.Sent != 1 || c.Bounced != 0 || c.Deferred < 1 {
		t.Errorf("got %v, want sent=1 bounced=0 deferred>=1", c)
	}
}

func TestPostfixOptionsReplace(t *testing.T) {
	d := StartDovecot(t, DovecotOptions{Users: []string{"alice@example.org"}})
	// A snippet written for /run paths, mapped to the test's paths.
	p := StartPostfix(t, PostfixOptions{
		HostedDomains: []string{"example.org"},
		MainCF:        "virtual_transport = dovecot-lmtp:unix:/run/dovecot/lmtp\n",
		MasterCF:      "dovecot-lmtp unix - - n - - lmtp\n",
		Replace:       map[string]string{"/run/dovecot/lmtp": d.LMTPSocket()},
	})
	if got := strings.TrimSpace(p.Postconf("-h", "virtual_transport")); got != "dovecot-lmtp:unix:"+d.LMTPSocket() {
		t.Fatalf("virtual_transport = %q", got)
	}
	if err := p.Send("sender@example.com", []string{"alice@example.org"}, message("alice@example.org", "replaced")); err != nil {
		t.Fatal(err)
	}
	p.WaitQueueEmpty(30 * time.Second)
	d.WaitMessages("alice@example.org", 1, 5*time.Second)
}

// fatalT records the first Fatalf and stops the goroutine, as testing.T
// does, so a test can check what a failing start reports. A skip (a
// daemon missing on a laptop) is recorded apart and becomes the test's.
type fatalT struct {
	*testing.T
	msg, skip string
}

func (f *fatalT) Skipf(format string, args ...any) {
	f.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalT) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func startFails(t *testing.T, start func(testing.TB)) string {
	t.Helper()
	ft := &fatalT{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		start(ft)
	}()
	<-done
	if ft.skip != "" {
		t.Skip(ft.skip)
	}
	if ft.msg == "" {
		t.Fatal("start succeeded, want a failure")
	}
	return ft.msg
}

func TestStartFailuresShowTheLog(t *testing.T) {
	msg := startFails(t, func(tb testing.TB) {
		StartDovecot(tb, DovecotOptions{ExtraConfig: "no_such_setting = 1"})
	})
	if !strings.Contains(msg, "no_such_setting") {
		t.Errorf("Dovecot failure does not show Dovecot's error:\n%s", msg)
	}
	msg = startFails(t, func(tb testing.TB) {
		StartPostfix(tb, PostfixOptions{MainCF: "inet_interfaces = 192.0.2.1"})
	})
	if !strings.Contains(msg, "192.0.2.1") {
		t.Errorf("Postfix failure does not show Postfix's error:\n%s", msg)
	}
}

func TestPostfixStopStart(t *testing.T) {
	d := StartDovecot(t, DovecotOptions{Users: []string{"alice@example.org"}})
	d.Stop()
	p := StartPostfix(t, PostfixOptions{HostedDomains: []string{"example.org"}, VirtualTransport: "lmtp:unix:" + d.LMTPSocket()})
	if err := p.Send("sender@example.com", []string{"alice@example.org"}, message("alice@example.org", "queued")); err != nil {
		t.Fatal(err)
	}
	p.WaitStatus("alice@example.org", "deferred", 10*time.Second)
	p.Stop()
	if err := p.Send("sender@example.com", []string{"alice@example.org"}, message("alice@example.org", "refused")); err == nil {
		t.Fatal("a stopped Postfix accepted mail")
	}
	d.Start()
	p.Start()
	p.Flush()
	p.WaitQueueEmpty(30 * time.Second)
	if msgs := d.WaitMessages("alice@example.org", 1, 5*time.Second); !strings.Contains(string(msgs[0]), "hello queued") {
		t.Errorf("got %q", msgs[0])
	}
}
