package filter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// panicTarget delivers through next, but panics when a copy is for boom@,
// at the step named by when: a bug in the outbound path.
type panicTarget struct {
	next deliver.Target
	when string // "begin" or "commit"
}

func (p *panicTarget) Begin(ctx context.Context, env deliver.Envelope) (deliver.Tx, error) {
	boom := false
	for _, r := range env.Rcpts {
		boom = boom || strings.HasPrefix(r, "boom@")
	}
	if boom && p.when == "begin" {
		panic("injected panic in Begin")
	}
	tx, err := p.next.Begin(ctx, env)
	if err != nil || !boom {
		return tx, err
	}
	return panicTx{tx, p.when}, nil
}

func (p *panicTarget) Close() error { return p.next.Close() }

// panicTx panics in Commit, or in Write (when "write"): with a live copy,
// that is while the message is still being received.
type panicTx struct {
	deliver.Tx
	when string
}

func (p panicTx) Write(b []byte) (int, error) {
	if p.when == "write" {
		panic("injected panic in Write")
	}
	return p.Tx.Write(b)
}

func (panicTx) Commit() []error { panic("injected panic in Commit") }

// panicCerts panics when asked for the store: a bug at RCPT time.
type panicCerts struct{}

func (panicCerts) Current() *certs.Store { panic("injected panic in the certificate store") }

// TestPanicStaysInItsSession: a panic while a copy goes out is recovered
// and logged with its stack; the recipients it concerns get 451 4.3.0,
// those already delivered keep their 250, and the daemon keeps serving.
func TestPanicStaysInItsSession(t *testing.T) {
	// boom@ has a certificate, so its copy is the live one, written while
	// the message arrives: "write" panics inside the DATA read loop.
	boom := smimetest.NewRecipient(t, "boom@example.org")
	for _, when := range []string{"begin", "write", "commit"} {
		t.Run(when, func(t *testing.T) {
			f := startFakeLMTP(t)
			// One connection: a transaction a panic left open would keep it,
			// and every later message would wait for it in vain.
			pool := deliver.NewPool(deliver.PoolOptions{Network: "unix", Addr: f.path, LMTP: true, LocalName: "filter.test",
				MaxConns: 1, WaitTimeout: time.Second})
			t.Cleanup(func() { pool.Close() })
			rf := startFilter(t, f.path, filterOpts{cfg: Config{Deliver: &panicTarget{next: pool, when: when}, Certs: holder(t, certDir(t, boom))}})
			cl := lmtpClient(t, rf.path)
			got := send(t, cl, "s@example.net", []string{"ok@example.org"}, msg("before", "x\r\n"))
			if got["ok@example.org"].code != 250 {
				t.Fatalf("before the panic: %v", got)
			}
			got = send(t, cl, "s@example.net", []string{"boom@example.org"}, msg("panic", "x\r\n"))
			if g := got["boom@example.org"]; g.code != 451 || g.enh != (smtp.EnhancedCode{4, 3, 0}) {
				t.Errorf("recipient whose copy panicked: got %v, want 451 4.3.0", g)
			}
			logs := rf.logs.String()
			if !strings.Contains(logs, "injected panic") || !strings.Contains(logs, "goroutine") {
				t.Errorf("the panic was not logged with its stack:\n%s", logs)
			}
			// The same connection, and a new one, are still served.
			for _, c := range []*smtp.Client{cl, lmtpClient(t, rf.path)} {
				if got := send(t, c, "s@example.net", []string{"ok@example.org"}, msg("after", "x\r\n")); got["ok@example.org"].code != 250 {
					t.Errorf("after the panic: %v", got)
				}
			}
		})
	}
}

// TestPanicAtMail: a panic while a transaction starts (the certificate
// store is asked for its snapshot) defers it; the connection goes on.
func TestPanicAtMail(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: panicCerts{}}})
	cl := lmtpClient(t, rf.path)
	err := cl.Mail("s@example.net", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
		t.Fatalf("got %v, want 451 4.3.0", err)
	}
	cl.Reset()
	if err := cl.Noop(); err != nil {
		t.Errorf("connection unusable after the panic: %v", err)
	}
}

// TestBDATResetDuringData: with BDAT, go-smtp runs the DATA phase in a
// goroutine of its own and takes RSET and the next MAIL while it still
// runs; the transaction the DATA phase works on must not change under it
// (go test -race finds it when it does), and nothing is delivered.
func TestBDATResetDuringData(t *testing.T) {
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{})
	_, cmd := rawSession(t, rf.path)
	cmd("LHLO postfix.test\r\n")
	for range 20 {
		cmd("MAIL FROM:<s@example.net>\r\n")
		cmd("RCPT TO:<a@example.org>\r\n")
		part := "Subject: chunks\r\n\r\nfirst line\r\n"
		cmd("BDAT " + strconv.Itoa(len(part)) + "\r\n" + part)
		cmd("RSET\r\n")
	}
	if got := cmd("MAIL FROM:<s@example.net>\r\n"); !strings.HasPrefix(got, "250") {
		t.Errorf("MAIL after the resets: %q", got)
	}
	if n := len(f.messages()); n != 0 {
		t.Errorf("%d messages delivered from transactions reset mid-BDAT, want 0", n)
	}
}

// TestPanicWhileReceivingSparesEnrollment: a message to a recipient and to
// the enrollment address, whose receipt panics halfway (the live copy to
// boom@ is written while the message arrives): both recipients are
// deferred with 451 4.3.0, and the engine never sees the half message
// (which it would refuse with a 5xx and count against the sender).
func TestPanicWhileReceivingSparesEnrollment(t *testing.T) {
	boom := smimetest.NewRecipient(t, "boom@example.org")
	f := startFakeLMTP(t)
	pool := deliver.NewPool(deliver.PoolOptions{Network: "unix", Addr: f.path, LMTP: true, LocalName: "filter.test"})
	t.Cleanup(func() { pool.Close() })
	rig := newEnrollRig(t, Config{Deliver: &panicTarget{next: pool, when: "write"}})
	// boom@'s certificate in the store the rig reads.
	if err := os.WriteFile(filepath.Join(rig.dir, "boom.pem"), boom.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := rig.holder.Reload(); err != nil {
		t.Fatal(err)
	}
	alice := smimetest.NewRecipient(t, "alice@example.test")
	got := send(t, lmtpClient(t, rig.rf.path), alice.Addr, []string{"boom@example.org", testEnrollAddr}, signRequest(t, alice))
	for _, a := range []string{"boom@example.org", testEnrollAddr} {
		if g := got[a]; g.code != 451 || g.enh != (smtp.EnhancedCode{4, 3, 0}) {
			t.Errorf("%s: got %v, want 451 4.3.0", a, g)
		}
	}
	if strings.Contains(rig.rf.logs.String(), "enrollment message") {
		t.Errorf("the engine handled a message that did not arrive whole:\n%s", rig.rf.logs.String())
	}
}
