package filter

import (
	"bytes"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
)

// TestRealDovecot relays through a real Dovecot 2.3 LMTP service (package
// dovecot-lmtpd) started from a temp dir: Dovecot's own per-recipient
// answers reach the client, and the pool's connection is reused.
func TestRealDovecot(t *testing.T) {
	d := mailstacktest.StartDovecot(t, mailstacktest.DovecotOptions{
		Users:     []string{"alice@example.org", "bob@example.org"},
		OverQuota: []string{"bob@example.org"},
	})
	rf := startFilter(t, d.LMTPSocket(), filterOpts{})
	cl := lmtpClient(t, rf.path)
	m := msg("real", "hello Dovecot\r\n")
	got := send(t, cl, "sender@example.net", []string{"alice@example.org", "nobody@example.org", "bob@example.org"}, m)
	if g := got["alice@example.org"]; g.code != 250 {
		t.Errorf("known user: got %v, want 250", g)
	}
	if g := got["nobody@example.org"]; g.code != 550 || g.enh[1] != 1 || g.enh[2] != 1 {
		t.Errorf("unknown user: got %v, want 550 5.1.1 from Dovecot", g)
	}
	if g := got["bob@example.org"]; g.code/100 != 4 {
		t.Errorf("user over quota: got %v, want a 4xx from Dovecot", g)
	}
	msgs := d.WaitMessages("alice@example.org", 1, 10*time.Second)
	// Dovecot stores Maildir files with LF line ends.
	if !bytes.Contains(msgs[0], bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n"))) {
		t.Errorf("stored message lacks the original:\n%s", msgs[0])
	}
	if n := len(d.Messages("bob@example.org")); n != 0 {
		t.Errorf("over-quota user got %d messages", n)
	}
	// A second message reuses the pooled connection.
	if g := send(t, cl, "sender@example.net", []string{"alice@example.org"}, msg("again", "x\r\n")); g["alice@example.org"].code != 250 {
		t.Errorf("second message: %v", g)
	}
	if st := rf.pool.Stats(); st.Open != 1 {
		t.Errorf("pool after two messages: %+v, want one connection", st)
	}
}
