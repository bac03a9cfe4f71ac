package deliver

import (
	"context"
	"testing"
	"time"

	mailstack "github.com/smimefilter/smimefilter/internal/mailstacktest"
)

// TestDovecot runs the pool against Dovecot's real LMTP server: per-recipient
// replies, Verify, RSET on reuse, and a restart of Dovecot between two
// deliveries, which leaves a dead connection in the pool.
func TestDovecot(t *testing.T) {
	d := mailstack.StartDovecot(t, mailstack.DovecotOptions{
		Users:     []string{"alice@example.org", "bob@example.org"},
		OverQuota: []string{"bob@example.org"},
	})
	p := NewPool(PoolOptions{Network: "unix", Addr: d.LMTPSocket(), LMTP: true})
	defer p.Close()
	ctx := context.Background()
	steps := []struct {
		name  string
		rcpts []string
		want  string
	}{
		{"one recipient", []string{"alice@example.org"}, "250"},
		{"per-recipient replies", []string{"alice@example.org", "nobody@example.org", "bob@example.org"}, "250 550 452"},
		{"after refusals", []string{"alice@example.org"}, "250"},
	}
	for _, s := range steps {
		res, err := send(ctx, p, s.rcpts...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", s.name, err, d.Log())
		}
		if got := codes(res); got != s.want {
			t.Errorf("%s: got %s (%v), want %s", s.name, got, res, s.want)
		}
	}
	if err := p.Verify(ctx, "s@example.net", "nobody@example.org"); codes([]error{err}) != "550" {
		t.Errorf("Verify of an unknown user: got %v, want Dovecot's 550", err)
	}
	if err := p.Verify(ctx, "s@example.net", "alice@example.org"); err != nil {
		t.Errorf("Verify of a user: got %v, want nil", err)
	}
	if st := p.Stats(); st.Open != 1 || st.Idle != 1 {
		t.Errorf("got %+v, want every transaction on one connection", st)
	}
	d.Stop()
	d.Start()
	if res, err := send(ctx, p, "alice@example.org"); err != nil || codes(res) != "250" {
		t.Errorf("after Dovecot restarted: got %v, %v, want delivered", res, err)
	}
	d.WaitMessages("alice@example.org", 4, 10*time.Second)
}
