package deliver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

const testMsg = "Subject: x\r\n\r\nbody\r\n"

// send delivers testMsg to rcpts: Begin's error, or Commit's results.
func send(ctx context.Context, p *Pool, rcpts ...string) ([]error, error) {
	tx, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: rcpts})
	if err != nil {
		return nil, err
	}
	if _, err := tx.Write([]byte(testMsg)); err != nil {
		tx.Abort()
		return nil, err
	}
	return tx.Commit(), nil
}

// codes renders results as reply codes: 250 for nil, the code of a reply
// passed through, "conn" for ErrConnection, "err" for anything else.
func codes(res []error) string {
	out := make([]string, len(res))
	for i, e := range res {
		var se *smtp.SMTPError
		switch {
		case e == nil:
			out[i] = "250"
		case errors.Is(e, ErrConnection):
			out[i] = "conn"
		case errors.As(e, &se):
			out[i] = fmt.Sprint(se.Code)
		default:
			out[i] = "err"
		}
	}
	return strings.Join(out, " ")
}

func newPool(t *testing.T, peer *fakePeer, o PoolOptions) *Pool {
	o.Network, o.Addr, o.LMTP = "unix", peer.path, !peer.smtp
	p := NewPool(o)
	t.Cleanup(func() { p.Close() })
	return p
}

var extensions = []struct {
	name string
	ext  []string
}{{"pipelining", pipelining}, {"lockstep", []string{"8BITMIME"}}}

// TestPerRecipientReplies: refusals at RCPT and after the data reach the
// right recipient, each with the peer's own reply (RFC 2033 §4.2).
func TestPerRecipientReplies(t *testing.T) {
	for _, ex := range extensions {
		t.Run(ex.name, func(t *testing.T) {
			peer := startPeer(t, &fakePeer{ext: ex.ext, script: func(_ int, line string) (string, then) {
				switch line {
				case "RCPT TO:<bad@example.org>":
					return "550 5.1.1 no such user\r\n", carryOn
				case ".":
					return "250 2.0.0 ok 1\r\n452 4.2.2 full\r\n", carryOn
				}
				return "", carryOn
			}})
			p := newPool(t, peer, PoolOptions{})
			res, err := send(context.Background(), p, "ok@example.org", "bad@example.org", "full@example.org")
			if err != nil {
				t.Fatal(err)
			}
			if got, want := codes(res), "250 550 452"; got != want {
				t.Errorf("got %s (%v), want %s", got, res, want)
			}
			var se *smtp.SMTPError
			if errors.As(res[2], &se); se == nil || se.EnhancedCode != (smtp.EnhancedCode{4, 2, 2}) || se.Message != "full" {
				t.Errorf("got %#v, want the peer's 452 4.2.2 full", res[2])
			}
			// One mailbox's refusal ends the transaction normally.
			if st := p.Stats(); st.Idle != 1 {
				t.Errorf("got %+v after a transaction answered per recipient, want the connection idle", st)
			}
		})
	}
}

// TestReuseAfterCleanTransaction: copies sent one after another share one
// connection, and each reuse starts with RSET.
func TestReuseAfterCleanTransaction(t *testing.T) {
	for _, ex := range extensions {
		t.Run(ex.name, func(t *testing.T) {
			peer := startPeer(t, &fakePeer{ext: ex.ext})
			p := newPool(t, peer, PoolOptions{})
			ctx := context.Background()
			for range 2 {
				if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
					t.Fatalf("got %v, %v, want delivered", res, err)
				}
			}
			if err := p.Verify(ctx, "s@example.net", "b@example.org"); err != nil {
				t.Fatal(err)
			}
			if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
				t.Fatalf("got %v, %v, want delivered", res, err)
			}
			if got := peer.dials(); got != 1 {
				t.Errorf("got %d connections, want 1", got)
			}
			want := "LHLO MAIL RCPT DATA . RSET MAIL RCPT DATA . RSET MAIL RCPT RSET MAIL RCPT DATA ."
			if got := verbs(peer.commands(0)); got != want {
				t.Errorf("got commands %s, want %s", got, want)
			}
		})
	}
}

// TestNextCopyTakesLastReleased: of several idle connections, the next
// copy takes the one the previous copy released.
func TestNextCopyTakesLastReleased(t *testing.T) {
	peer := startPeer(t, &fakePeer{ext: pipelining})
	p := newPool(t, peer, PoolOptions{})
	ctx := context.Background()
	a, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"b@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	a.Commit()
	b.Commit() // b's connection (the second) is now the last released
	for range 3 {
		if res, err := send(ctx, p, "c@example.org"); err != nil || codes(res) != "250" {
			t.Fatalf("got %v, %v, want delivered", res, err)
		}
	}
	if got, want := strings.Count(verbs(peer.commands(1)), "MAIL"), 4; got != want {
		t.Errorf("got %d transactions on the last released connection, want %d", got, want)
	}
	if got, want := strings.Count(verbs(peer.commands(0)), "MAIL"), 1; got != want {
		t.Errorf("got %d transactions on the other connection, want %d", got, want)
	}
}

// TestNoReuseAfterFailure: after a transaction that failed as a whole, the
// connection is closed and the next transaction dials a new one.
func TestNoReuseAfterFailure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		smtp   bool
		fail   string // command line prefix to fail
		reply  string
		next   then
		want   string // codes of the failed transaction; "begin:..." for Begin's error
		rcptOK bool
	}{
		{name: "4xx to DATA", fail: "DATA", reply: "451 4.3.0 later\r\n", want: "451 451"},
		{name: "5xx to DATA", fail: "DATA", reply: "554 5.3.0 no\r\n", want: "554 554"},
		{name: "5xx to MAIL", fail: "MAIL", reply: "553 5.1.7 bad sender\r\n", want: "begin:553"},
		{name: "421 to MAIL", fail: "MAIL", reply: "421 4.3.2 shutting down\r\n", want: "begin:conn"},
		{name: "421 to RCPT", fail: "RCPT TO:<b@", reply: "421 4.3.2 shutting down\r\n", want: "begin:conn"},
		{name: "421 to DATA", fail: "DATA", reply: "421 4.3.2 shutting down\r\n", want: "begin:conn"},
		{name: "421 after the data", fail: ".", reply: "250 2.0.0 ok\r\n421 4.3.2 shutting down\r\n", want: "250 conn"},
		{name: "SMTP 5xx after the data", smtp: true, fail: ".", reply: "554 5.6.0 content refused\r\n", want: "554 554"},
		{name: "SMTP 4xx after the data", smtp: true, fail: ".", reply: "451 4.3.0 later\r\n", want: "451 451"},
		{name: "timeout at RCPT", fail: "RCPT TO:<b@", next: goSilent, want: "begin:conn"},
		{name: "timeout after the data", fail: ".", next: goSilent, want: "conn conn"},
		{name: "hang-up after the data", fail: ".", next: hangUp, want: "conn conn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := startPeer(t, &fakePeer{ext: pipelining, smtp: tc.smtp, script: func(n int, line string) (string, then) {
				if n == 0 && strings.HasPrefix(line, tc.fail) {
					return tc.reply, tc.next
				}
				return "", carryOn
			}})
			var o PoolOptions
			if tc.next == goSilent {
				// Long enough for the clean transaction that follows on
				// a loaded machine.
				o.CommandTimeout, o.DataTimeout = time.Second, time.Second
			}
			p := newPool(t, peer, o)
			ctx := context.Background()
			res, err := send(ctx, p, "a@example.org", "b@example.org")
			got := codes(res)
			if err != nil {
				got = "begin:" + codes([]error{err})
			}
			if got != tc.want {
				t.Errorf("failed transaction: got %s (%v %v), want %s", got, res, err, tc.want)
			}
			if st := p.Stats(); st.Open != 0 {
				t.Errorf("got %+v after the failure, want the connection closed", st)
			}
			if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
				t.Fatalf("next transaction: got %v, %v, want delivered", res, err)
			}
			if got := peer.dials(); got != 2 {
				t.Errorf("got %d connections, want 2 (a new one after the failure)", got)
			}
			if got := verbs(peer.commands(1)[1:]); got != "MAIL RCPT DATA ." {
				t.Errorf("new connection got %s after the greeting, want MAIL RCPT DATA .", got)
			}
		})
	}
}

// TestNoReuseAfterWriteError: the peer hangs up while the message streams;
// the transaction fails as a connection error, never as delivered.
func TestNoReuseAfterWriteError(t *testing.T) {
	peer := startPeer(t, &fakePeer{ext: pipelining, script: func(n int, line string) (string, then) {
		if n == 0 && line == "DATA" {
			return "354 go\r\n", hangUp
		}
		return "", carryOn
	}})
	p := newPool(t, peer, PoolOptions{CommandTimeout: 5 * time.Second})
	ctx := context.Background()
	tx, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"), 1024)
	var werr error
	for range 64 { // 4 MiB: more than the socket buffers hold
		if _, werr = tx.Write(chunk); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrConnection) {
		t.Errorf("Write: got %v, want ErrConnection", werr)
	}
	if res := tx.Commit(); codes(res) != "conn" {
		t.Errorf("Commit: got %v, want ErrConnection", res)
	}
	if st := p.Stats(); st.Open != 0 {
		t.Errorf("got %+v, want the broken connection closed", st)
	}
	if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
		t.Fatalf("next transaction: got %v, %v, want delivered", res, err)
	}
	if got := peer.dials(); got != 2 {
		t.Errorf("got %d connections, want 2", got)
	}
}

// TestStaleIdleConnection: a pooled connection the peer closed while it sat
// idle costs no delivery: the RSET in front of the transaction finds it
// dead and the transaction goes out on a new connection.
func TestStaleIdleConnection(t *testing.T) {
	for _, ex := range extensions {
		for _, tc := range []struct {
			name, bye string
			rset      string // reply to RSET on the first connection, "" for the peer's default
		}{
			{name: "closed silently"},
			{name: "421 then closed", bye: "421 4.4.2 fake Disconnected client for inactivity\r\n"},
			{name: "RSET refused", rset: "503 5.5.1 confused\r\n"},
		} {
			t.Run(ex.name+"/"+tc.name, func(t *testing.T) {
				peer := startPeer(t, &fakePeer{ext: ex.ext, script: func(n int, line string) (string, then) {
					if n == 0 && line == "RSET" {
						return tc.rset, carryOn
					}
					return "", carryOn
				}})
				p := newPool(t, peer, PoolOptions{})
				ctx := context.Background()
				if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
					t.Fatalf("got %v, %v, want delivered", res, err)
				}
				if tc.rset == "" {
					peer.drop(0, tc.bye)
				}
				if res, err := send(ctx, p, "a@example.org", "b@example.org"); err != nil || codes(res) != "250 250" {
					t.Fatalf("after the peer dropped the idle connection: got %v, %v, want delivered", res, err)
				}
				if got := peer.dials(); got != 2 {
					t.Errorf("got %d connections, want 2", got)
				}
				if st := p.Stats(); st.Open != 1 || st.Idle != 1 {
					t.Errorf("got %+v, want the new connection idle", st)
				}
			})
		}
	}
}

// TestVerify: the peer's refusal passes through; the connection serves on.
func TestVerify(t *testing.T) {
	for _, ex := range extensions {
		t.Run(ex.name, func(t *testing.T) {
			peer := startPeer(t, &fakePeer{ext: ex.ext, script: func(_ int, line string) (string, then) {
				if line == "RCPT TO:<nobody@example.org>" {
					return "550 5.1.1 <nobody@example.org> User doesn't exist\r\n", carryOn
				}
				return "", carryOn
			}})
			p := newPool(t, peer, PoolOptions{})
			ctx := context.Background()
			var se *smtp.SMTPError
			if err := p.Verify(ctx, "s@example.net", "nobody@example.org"); !errors.As(err, &se) || se.Code != 550 || errors.Is(err, ErrConnection) {
				t.Errorf("got %v, want the peer's 550", err)
			}
			if err := p.Verify(ctx, "s@example.net", "a@example.org"); err != nil {
				t.Errorf("got %v, want nil", err)
			}
			if got := peer.dials(); got != 1 {
				t.Errorf("got %d connections, want 1", got)
			}
		})
	}
}

// TestContextEndsWaits: when the transaction's context ends (the daemon
// shuts down), a wait on a hung peer ends at once with ErrConnection, and
// the connection is closed.
func TestContextEndsWaits(t *testing.T) {
	long := PoolOptions{CommandTimeout: time.Minute, DataTimeout: time.Minute}
	t.Run("Commit", func(t *testing.T) {
		peer := startPeer(t, &fakePeer{ext: pipelining, script: func(_ int, line string) (string, then) {
			if line == "." {
				return "", goSilent
			}
			return "", carryOn
		}})
		p := newPool(t, peer, long)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tx, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org", "b@example.org"}})
		if err != nil {
			t.Fatal(err)
		}
		tx.Write([]byte(testMsg))
		done := make(chan []error)
		go func() { done <- tx.Commit() }()
		peer.saw(t, 0, ".")
		cancel()
		select {
		case res := <-done:
			for i, e := range res {
				if !errors.Is(e, ErrConnection) || !errors.Is(e, context.Canceled) {
					t.Errorf("recipient %d: got %v, want ErrConnection caused by the cancellation", i, e)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Commit still waiting 10s after the context ended")
		}
		if st := p.Stats(); st.Open != 0 {
			t.Errorf("got %+v, want the connection closed", st)
		}
	})
	t.Run("Write", func(t *testing.T) {
		// The peer takes DATA and stops reading: writes block once the
		// socket buffers are full.
		peer := startPeer(t, &fakePeer{ext: pipelining, script: func(_ int, line string) (string, then) {
			if line == "DATA" {
				return "354 go\r\n", goSilent
			}
			return "", carryOn
		}})
		p := newPool(t, peer, long)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tx, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
		if err != nil {
			t.Fatal(err)
		}
		// More than the socket buffers hold, in one call: it blocks.
		big := bytes.Repeat([]byte("x"), 4<<20)
		done := make(chan error)
		go func() {
			_, err := tx.Write(big)
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("Write returned %v while the peer was not reading", err)
		case <-time.After(50 * time.Millisecond):
			// Blocked in the write, or about to be: either way the
			// cancellation must end it.
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, ErrConnection) || !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want ErrConnection caused by the cancellation", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Write still blocked 10s after the context ended")
		}
		if res := tx.Commit(); codes(res) != "conn" {
			t.Errorf("Commit: got %v, want ErrConnection", res)
		}
		if st := p.Stats(); st.Open != 0 {
			t.Errorf("got %+v, want the connection closed", st)
		}
	})
	for _, call := range []string{"Begin", "Verify"} {
		t.Run(call, func(t *testing.T) {
			peer := startPeer(t, &fakePeer{ext: pipelining, script: func(_ int, line string) (string, then) {
				if strings.HasPrefix(line, "RCPT") {
					return "", goSilent
				}
				return "", carryOn
			}})
			p := newPool(t, peer, long)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() {
				if call == "Begin" {
					_, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
					done <- err
				} else {
					done <- p.Verify(ctx, "s@example.net", "a@example.org")
				}
			}()
			peer.saw(t, 0, "RCPT")
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, ErrConnection) || !errors.Is(err, context.Canceled) {
					t.Errorf("got %v, want ErrConnection caused by the cancellation", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s still waiting 10s after the context ended", call)
			}
			if st := p.Stats(); st.Open != 0 {
				t.Errorf("got %+v, want the connection closed", st)
			}
		})
	}
}

// TestMailParameters: MAIL carries BODY, SIZE and SMTPUTF8 where offered.
func TestMailParameters(t *testing.T) {
	for _, tc := range []struct {
		ext  []string
		env  Envelope
		want string
	}{
		{[]string{"8BITMIME", "SMTPUTF8"}, Envelope{UTF8: true, Size: 42}, "MAIL FROM:<s@example.net> BODY=8BITMIME SIZE=42 SMTPUTF8"},
		{[]string{"8BITMIME"}, Envelope{UTF8: true}, "MAIL FROM:<s@example.net> BODY=8BITMIME"},
		{nil, Envelope{Size: 7}, "MAIL FROM:<s@example.net> SIZE=7"},
	} {
		peer := startPeer(t, &fakePeer{ext: tc.ext})
		p := newPool(t, peer, PoolOptions{})
		tc.env.From, tc.env.Rcpts = "s@example.net", []string{"a@example.org"}
		tx, err := p.Begin(context.Background(), tc.env)
		if err != nil {
			t.Fatal(err)
		}
		tx.Abort()
		if got := peer.commands(0)[1]; got != tc.want {
			t.Errorf("offered %v: got %q, want %q", tc.ext, got, tc.want)
		}
	}
}

// TestNoRecipientAccepted: with every recipient refused there is no data to
// send; the refusals come back, and the connection serves again.
func TestNoRecipientAccepted(t *testing.T) {
	for _, ex := range extensions {
		t.Run(ex.name, func(t *testing.T) {
			peer := startPeer(t, &fakePeer{ext: ex.ext, script: func(_ int, line string) (string, then) {
				if line == "RCPT TO:<bad@example.org>" {
					return "550 5.1.1 no such user\r\n", carryOn
				}
				return "", carryOn
			}})
			p := newPool(t, peer, PoolOptions{})
			res, err := send(context.Background(), p, "bad@example.org")
			if err != nil || codes(res) != "550" {
				t.Fatalf("got %v, %v, want 550", res, err)
			}
			if st := p.Stats(); st.Idle != 1 {
				t.Errorf("got %+v, want the connection idle", st)
			}
			if got := verbs(peer.commands(0)); strings.Contains(got, ".") {
				t.Errorf("got %s, want no message sent", got)
			}
		})
	}
}

// TestDataWithoutRecipient: a peer that takes DATA with no recipient
// breaks RFC 2920 §3.1; the connection cannot be trusted.
func TestDataWithoutRecipient(t *testing.T) {
	peer := startPeer(t, &fakePeer{ext: pipelining, script: func(_ int, line string) (string, then) {
		switch {
		case strings.HasPrefix(line, "RCPT"):
			return "550 5.1.1 no\r\n", carryOn
		case line == "DATA":
			return "354 go\r\n", carryOn
		}
		return "", carryOn
	}})
	p := newPool(t, peer, PoolOptions{})
	if _, err := send(context.Background(), p, "a@example.org"); !errors.Is(err, ErrConnection) || !errors.Is(err, errProtocol) {
		t.Errorf("got %v, want a protocol error as ErrConnection", err)
	}
	if st := p.Stats(); st.Open != 0 {
		t.Errorf("got %+v, want the connection closed", st)
	}
}

// TestAbort: before the data the connection serves again; during it, it
// is dropped so the peer discards the partial message.
func TestAbort(t *testing.T) {
	peer := startPeer(t, &fakePeer{ext: pipelining, script: func(_ int, line string) (string, then) {
		if line == "RCPT TO:<bad@example.org>" {
			return "550 5.1.1 no\r\n", carryOn
		}
		return "", carryOn
	}})
	p := newPool(t, peer, PoolOptions{})
	ctx := context.Background()
	tx, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"bad@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	tx.Abort()
	if st := p.Stats(); st.Idle != 1 {
		t.Errorf("aborted before the data: got %+v, want the connection idle", st)
	}
	tx, err = p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	tx.Write([]byte("partial"))
	tx.Abort()
	if st := p.Stats(); st.Open != 0 {
		t.Errorf("aborted mid-data: got %+v, want the connection closed", st)
	}
	if res := tx.Commit(); codes(res) != "err" || !errors.Is(res[0], ErrAborted) {
		t.Errorf("Commit after Abort: got %v, want ErrAborted", res)
	}
	if _, err := tx.Write([]byte("more")); !errors.Is(err, ErrAborted) {
		t.Errorf("Write after Abort: got %v, want ErrAborted", err)
	}
}

// TestLimits: MaxTransactions and MaxConns (a bounded wait) hold; idle
// connections are reaped with a QUIT.
func TestLimits(t *testing.T) {
	ctx := context.Background()
	t.Run("MaxTransactions", func(t *testing.T) {
		peer := startPeer(t, &fakePeer{ext: pipelining})
		p := newPool(t, peer, PoolOptions{MaxTransactions: 2})
		for range 3 {
			if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
				t.Fatalf("got %v, %v, want delivered", res, err)
			}
		}
		if got := verbs(peer.commands(0)); got != "LHLO MAIL RCPT DATA . RSET MAIL RCPT DATA . QUIT" {
			t.Errorf("first connection got %s, want two transactions and QUIT", got)
		}
		if got := peer.dials(); got != 2 {
			t.Errorf("got %d connections, want 2", got)
		}
	})
	t.Run("MaxLifetime", func(t *testing.T) {
		peer := startPeer(t, &fakePeer{ext: pipelining})
		p := newPool(t, peer, PoolOptions{MaxLifetime: time.Nanosecond})
		for range 2 {
			if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
				t.Fatalf("got %v, %v, want delivered", res, err)
			}
		}
		if got := verbs(peer.commands(0)); got != "LHLO MAIL RCPT DATA . QUIT" {
			t.Errorf("first connection got %s, want one transaction and QUIT", got)
		}
		if got := peer.dials(); got != 2 {
			t.Errorf("got %d connections, want 2", got)
		}
	})
	t.Run("MaxConns", func(t *testing.T) {
		peer := startPeer(t, &fakePeer{ext: pipelining})
		p := newPool(t, peer, PoolOptions{MaxConns: 1, WaitTimeout: time.Second})
		held, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := send(ctx, p, "b@example.org"); !errors.Is(err, ErrUnreachable) {
			t.Errorf("with the only connection held: got %v, want ErrUnreachable", err)
		}
		held.Commit()
		if res, err := send(ctx, p, "b@example.org"); err != nil || codes(res) != "250" {
			t.Errorf("after release: got %v, %v, want delivered", res, err)
		}
	})
	t.Run("WithoutWaiting", func(t *testing.T) {
		// A wait the caller ruled out fails at once, not after WaitTimeout,
		// and leaves the pool as it was.
		peer := startPeer(t, &fakePeer{ext: pipelining})
		p := newPool(t, peer, PoolOptions{MaxConns: 1, WaitTimeout: time.Hour})
		held, err := p.Begin(ctx, Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := p.Begin(WithoutWaiting(ctx), Envelope{From: "s@example.net", Rcpts: []string{"b@example.org"}})
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrBusy) || !errors.Is(err, ErrUnreachable) {
				t.Errorf("got %v, want ErrBusy (an ErrUnreachable)", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Begin WithoutWaiting waited for the held connection")
		}
		held.Commit()
		if st := p.Stats(); st.Open != 1 {
			t.Errorf("got %+v, want the one connection, idle", st)
		}
		tx, err := p.Begin(WithoutWaiting(ctx), Envelope{From: "s@example.net", Rcpts: []string{"b@example.org"}})
		if err != nil {
			t.Fatalf("with the connection free: %v", err)
		}
		tx.Write([]byte(testMsg))
		if res := tx.Commit(); res[0] != nil {
			t.Errorf("got %v, want delivered", res)
		}
	})
	t.Run("IdleTimeout", func(t *testing.T) {
		peer := startPeer(t, &fakePeer{ext: pipelining})
		p := newPool(t, peer, PoolOptions{IdleTimeout: 20 * time.Millisecond})
		if res, err := send(ctx, p, "a@example.org"); err != nil || codes(res) != "250" {
			t.Fatalf("got %v, %v, want delivered", res, err)
		}
		peer.saw(t, 0, "QUIT")
		waitFor(t, "the pool to count the reaped connection out", func() bool { return p.Stats().Open == 0 })
	})
	t.Run("Closed", func(t *testing.T) {
		peer := startPeer(t, &fakePeer{ext: pipelining})
		p := newPool(t, peer, PoolOptions{})
		p.Close()
		if _, err := send(ctx, p, "a@example.org"); !errors.Is(err, ErrClosed) {
			t.Errorf("got %v, want ErrClosed", err)
		}
	})
	t.Run("Unreachable", func(t *testing.T) {
		p := NewPool(PoolOptions{Network: "unix", Addr: t.TempDir() + "/none.sock"})
		defer p.Close()
		if _, err := send(ctx, p, "a@example.org"); !errors.Is(err, ErrUnreachable) {
			t.Errorf("got %v, want ErrUnreachable", err)
		}
	})
}

func TestEnvelopeInjectionRefused(t *testing.T) {
	p := NewPool(PoolOptions{Network: "unix", Addr: "/nonexistent"})
	defer p.Close()
	for _, env := range []Envelope{
		{From: "a@b", Rcpts: []string{"x@y>\r\nRCPT TO:<z@w"}},
		{From: "a@b>\r\nRSET", Rcpts: []string{"x@y"}},
		{From: "a@b", Rcpts: []string{"x@y>"}},
		{From: "a@b", Rcpts: []string{"x<y"}},
	} {
		if _, err := p.Begin(context.Background(), env); !errors.Is(err, errProtocol) || !errors.Is(err, ErrAborted) {
			t.Errorf("%+v: got %v, want a refusal wrapping ErrAborted", env, err)
		}
	}
}

// TestQuotedLocalPartWithBrackets: brackets inside a local part are
// content of the Quoted-string it is sent as, so the peer decides.
func TestQuotedLocalPartWithBrackets(t *testing.T) {
	peer := startPeer(t, &fakePeer{ext: pipelining})
	p := newPool(t, peer, PoolOptions{})
	if res, err := send(context.Background(), p, "a<b>c@example.org"); err != nil || codes(res) != "250" {
		t.Fatalf("got %v, %v, want delivered", res, err)
	}
	if got := peer.commands(0); !slices.Contains(got, `RCPT TO:<"a<b>c"@example.org>`) {
		t.Errorf("commands %q, want the local part quoted", got)
	}
}

// FuzzTransaction feeds arbitrary replies to a whole transaction. Whatever
// the peer says, each recipient's outcome is nil, the peer's own refusal
// (4xx or 5xx), or wraps one of the sentinel errors, so that the filter can
// answer Postfix; and the pool stays consistent.
func FuzzTransaction(f *testing.F) {
	f.Add("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n250 ok\r\n", true)
	f.Add("250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n452 4.2.2 full\r\n", false)
	f.Add("250 ok\r\n251 ok\r\n252 what\r\n354 go\r\n220 odd\r\n", true)
	f.Add("553 5.1.7 no\r\n503 x\r\n503 x\r\n354 go\r\n", true)
	f.Add("250 ok\r\n250 ok\r\n250 ok\r\n250 go\r\n", true)
	f.Add("250 ok\r\n421 4.3.2 bye\r\n", false)
	f.Fuzz(func(t *testing.T, replies string, pipelined bool) {
		ext := []string{"8BITMIME"}
		if pipelined {
			ext = pipelining
		}
		peer := startPeer(t, &fakePeer{ext: ext})
		// After LHLO, the peer answers with the input and hangs up.
		peer.script = func(n int, line string) (string, then) {
			if strings.HasPrefix(line, "MAIL") {
				return replies, hangUp
			}
			return "", carryOn
		}
		p := newPool(t, peer, PoolOptions{CommandTimeout: 20 * time.Millisecond, DataTimeout: 20 * time.Millisecond})
		check := func(what string, err error) {
			var se *smtp.SMTPError
			switch {
			case err == nil:
			case errors.Is(err, ErrConnection), errors.Is(err, ErrUnreachable), errors.Is(err, ErrClosed), errors.Is(err, ErrAborted):
			case errors.As(err, &se) && se.Code >= 400 && se.Code <= 599 && se.Code != 421:
			default:
				t.Fatalf("%s: %v (%T) is neither a refusal nor a sentinel", what, err, err)
			}
		}
		res, err := send(context.Background(), p, "a@example.org", "b@example.org")
		check("Begin", err)
		for _, e := range res {
			check("Commit", e)
		}
		if st := p.Stats(); st.Open > 1 || st.Idle > st.Open {
			t.Fatalf("pool %+v after one transaction", st)
		}
	})
}
