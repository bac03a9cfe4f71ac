package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
)

// noLoss checks the end state after a fault: every recipient delivered
// exactly want times, nothing bounced, nothing left in the queue.
func noLoss(t *testing.T, st *stack, want map[string]int) {
	t.Helper()
	st.postfix.WaitQueueEmpty(defaultLongTimeout)
	for rcpt, n := range want {
		msgs := st.waitMessages(rcpt, n, defaultStatusTimeout)
		if len(msgs) != n {
			t.Errorf("%s: %d messages in the mailbox, want %d (duplicates?)", rcpt, len(msgs), n)
		}
		if c := st.postfix.Count(rcpt); c.Bounced != 0 || c.Expired != 0 || c.Sent != n {
			t.Errorf("%s: %v, want sent=%d, bounced=0", rcpt, c, n)
		}
	}
}

// TestDovecotDown: with Dovecot stopped every message is deferred with a
// 4xx; once it is back, a queue flush delivers them all.
func TestDovecotDown(t *testing.T) {
	t.Parallel()
	alice, bob := "alice@"+hostedDomain, "bob@"+hostedDomain
	st := newStack(t, setup{users: []string{alice, bob}, certs: []string{alice, bob}})
	st.dovecot.Stop()

	var inners [][]byte
	for i := range 5 {
		raw, inner := testMessage(alice, fmt.Sprintf("dovecot down %d", i), 2<<10)
		st.send([]string{alice, bob}, raw)
		inners = append(inners, inner)
	}
	st.postfix.WaitCount(defaultStatusTimeout, func(c mailstacktest.Counts) bool { return c.Deferred >= 10 }, alice, bob)
	for _, d := range st.postfix.Deliveries() {
		if d.Status == "deferred" && !strings.HasPrefix(d.DSN, "4.") {
			t.Errorf("%s deferred with dsn=%s, want 4.x.x", d.To, d.DSN)
		}
	}
	if c := st.postfix.Count(); c.Sent != 0 || c.Bounced != 0 {
		t.Fatalf("with Dovecot down: %v, want only deferrals", c)
	}

	st.dovecot.Start()
	st.postfix.Flush()
	noLoss(t, st, map[string]int{alice: 5, bob: 5})
	got := map[string]bool{}
	for _, m := range st.messages(alice) {
		got[string(decrypt(t, st.certs[alice], m))] = true
	}
	for i, inner := range inners {
		if !got[string(inner)] {
			t.Errorf("message %d is not among alice's decrypted messages", i)
		}
	}
}

// TestFilterKilledMidData: smimefilter is SIGKILLed while it receives a
// message from Postfix. Postfix must defer it (nothing bounced, nothing
// half-stored in Dovecot) and deliver it once the daemon is back. A proxy
// between them stops passing Postfix's bytes on after the first MiB, so
// the daemon is in the middle of DATA when it dies, whatever its speed.
func TestFilterKilledMidData(t *testing.T) {
	t.Parallel()
	alice := "alice@" + hostedDomain
	st := newStack(t, setup{users: []string{alice}, certs: []string{alice}, holdProxy: true})
	raw, inner := testMessage(alice, "killed mid-DATA", 4<<20)
	held := st.proxy.holdAfter(1 << 20)
	st.send([]string{alice}, raw)

	select {
	case <-held:
	case <-time.After(defaultStatusTimeout):
		t.Fatalf("Postfix did not send 1 MiB to smimefilter within %v", defaultStatusTimeout)
	}
	st.filter.kill()
	if c := st.postfix.Count(alice); c.Sent != 0 {
		t.Fatalf("delivered before the kill (%v): the proxy let the whole message through", c)
	}
	d := st.postfix.WaitStatus(alice, "deferred", defaultStatusTimeout)
	if !strings.HasPrefix(d.DSN, "4.") {
		t.Errorf("deferred with dsn=%s, want 4.x.x", d.DSN)
	}
	if n := len(st.messages(alice)); n != 0 {
		t.Fatalf("%d messages stored from the killed transaction", n)
	}

	st.proxy.holdAfter(-1)
	st.filter.start()
	st.postfix.Flush()
	noLoss(t, st, map[string]int{alice: 1})
	if got := decrypt(t, st.certs[alice], st.messages(alice)[0]); !bytes.Equal(got, inner) {
		t.Errorf("decrypted message differs from the original (%d bytes, want %d)", len(got), len(inner))
	}
}

// TestFilterRestartUnderLoad: 200 messages stream in while smimefilter is
// restarted with SIGTERM (graceful shutdown). All 200 arrive exactly once.
func TestFilterRestartUnderLoad(t *testing.T) {
	t.Parallel()
	const total, senders = 200, 4
	alice, bob := "alice@"+hostedDomain, "bob@"+hostedDomain
	st := newStack(t, setup{users: []string{alice, bob}, certs: []string{alice, bob}})

	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; i < total; i += senders {
				rcpt := alice
				if i%2 == 1 {
					rcpt = bob
				}
				raw, _ := testMessage(rcpt, fmt.Sprintf("load %03d", i), 1<<10)
				if err := st.postfix.Send(senderAddr, []string{rcpt}, raw); err != nil {
					errs <- err
					return
				}
			}
		}()
	}

	// Restart once a fifth has gone through, while the rest streams in.
	st.postfix.WaitCount(defaultLongTimeout, func(c mailstacktest.Counts) bool { return c.Sent >= total/5 }, alice, bob)
	st.filter.stop(30 * time.Second)
	st.filter.start()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("submitting: %v", err)
	}
	st.postfix.Flush()
	noLoss(t, st, map[string]int{alice: total / 2, bob: total / 2})

	// Every Message-ID once: nothing lost, nothing duplicated.
	seen := map[string]int{}
	for _, r := range []string{alice, bob} {
		for _, m := range st.messages(r) {
			seen[header(m, "Subject")]++
		}
	}
	for i := range total {
		if n := seen[fmt.Sprintf("load %03d", i)]; n != 1 {
			t.Errorf("message %d stored %d times", i, n)
		}
	}
	t.Logf("postfix: %v", st.postfix.Count(alice, bob))
}

// TestOverQuota: Dovecot's 452 4.2.2 for a full mailbox reaches Postfix for
// that recipient alone: deferred, then delivered once there is room.
func TestOverQuota(t *testing.T) {
	t.Parallel()
	alice, dave := "alice@"+hostedDomain, "dave@"+hostedDomain
	st := newStack(t, setup{users: []string{alice, dave}, certs: []string{alice, dave}, overQuota: []string{dave}})
	raw, inner := testMessage(dave, "over quota", 4<<10)
	st.send([]string{alice, dave}, raw)

	st.postfix.WaitStatus(alice, "sent", defaultStatusTimeout)
	d := st.postfix.WaitStatus(dave, "deferred", defaultStatusTimeout)
	if d.DSN != "4.2.2" {
		t.Errorf("dave: deferred with dsn=%s (%s), want Dovecot's 4.2.2", d.DSN, d.Text)
	}
	st.dovecot.SetOverQuota(dave, false)
	st.postfix.Flush()
	noLoss(t, st, map[string]int{alice: 1, dave: 1})
	if got := decrypt(t, st.certs[dave], st.messages(dave)[0]); !bytes.Equal(got, inner) {
		t.Errorf("dave: decrypted message differs")
	}
}

// TestMaildirNotWritable: in Maildir delivery mode a Maildir the daemon
// cannot write defers that recipient; once fixed, the message arrives.
func TestMaildirNotWritable(t *testing.T) {
	t.Parallel()
	alice, bob := "alice@"+hostedDomain, "bob@"+hostedDomain
	st := newStack(t, setup{users: []string{alice, bob}, certs: []string{alice, bob}, maildir: true})
	nobody := lookupUser(t, "nobody")
	broken := filepath.Join(st.maildirRoot, hostedDomain, "bob")
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		mkdir(t, filepath.Join(broken, sub), 0o700)
		chown(t, filepath.Join(broken, sub), nobody)
	}
	chown(t, filepath.Join(st.maildirRoot, hostedDomain), nobody)
	for _, sub := range []string{"tmp", "new"} {
		if err := os.Chmod(filepath.Join(broken, sub), 0o500); err != nil {
			t.Fatal(err)
		}
	}

	raw, inner := testMessage(bob, "maildir not writable", 4<<10)
	st.send([]string{alice, bob}, raw)
	st.postfix.WaitStatus(alice, "sent", defaultStatusTimeout)
	d := st.postfix.WaitStatus(bob, "deferred", defaultStatusTimeout)
	if !strings.HasPrefix(d.DSN, "4.") {
		t.Errorf("bob: deferred with dsn=%s, want 4.x.x", d.DSN)
	}
	for _, sub := range []string{"tmp", "new"} {
		if err := os.Chmod(filepath.Join(broken, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	st.postfix.Flush()
	noLoss(t, st, map[string]int{alice: 1, bob: 1})
	if got := decrypt(t, st.certs[bob], st.messages(bob)[0]); !bytes.Equal(got, inner) {
		t.Errorf("bob: decrypted message differs")
	}
	// The daemon wrote as its own user, not as root.
	entries, _ := os.ReadDir(filepath.Join(broken, "new"))
	for _, e := range entries {
		fi, _ := e.Info()
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != uint32(atoi(t, nobody.Uid)) {
			t.Errorf("%s owned by uid %d", e.Name(), uid)
		}
	}
}
