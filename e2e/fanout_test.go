package e2e

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// fanoutRecipients is what TestFanout sends one message to: the recipient
// count of BenchmarkFanout's default run, and of the reproduction
// in which 12 of these 20 were deferred to the next queue run.
const fanoutRecipients = 20

// recipientLine is the daemon's one log line per recipient outcome
// (filter.session.logOutcome), slog's text format.
var recipientLine = regexp.MustCompile(`msg=recipient conn=\S+ tx=(\S+) from=\S+ rcpt=(\S+) .*?action=(\S+) code=(\d+)`)

// TestFanout sends one message through Postfix, configured with
// contrib/postfix/transport, to 20 local recipients who each have their
// own certificate (BenchmarkFanout's set-up: fanoutUsers, a certificate
// for each), and checks that the daemon delivers every copy in the one
// attempt Postfix makes, each encrypted for its own recipient only.
func TestFanout(t *testing.T) {
	t.Parallel()
	users := fanoutUsers(fanoutRecipients)
	st := newStack(t, setup{users: users, certs: users})
	raw, inner := testMessage(users[0], "fan-out", 4<<10)
	st.send(users, raw)

	// Postfix logs one line per recipient and attempt. Wait for 20 sent,
	// then for the queue to empty: a deferred recipient would stay queued
	// and be retried (queue_run_delay is 1 s here), so a 4xx shows up as a
	// status=deferred line even if a retry later delivers it.
	st.postfix.WaitCount(defaultLongTimeout, func(c mailstacktest.Counts) bool { return c.Sent >= len(users) }, users...)
	st.postfix.WaitQueueEmpty(defaultLongTimeout)
	if c := st.postfix.Count(users...); c != (mailstacktest.Counts{Sent: len(users)}) {
		t.Errorf("Postfix: %v, want sent=%d and nothing deferred: every recipient delivered in the first attempt", c, len(users))
	}
	queueIDs := map[string]bool{}
	for _, d := range st.postfix.Deliveries() {
		queueIDs[d.QueueID] = true
		// The snippet's master.cf gives the transport's lmtp(8) the
		// syslog_name postfix/smimefilter: the copies went through the
		// daemon, not straight to Dovecot.
		if d.Service != "smimefilter/lmtp" {
			t.Errorf("%s: delivered by postfix/%s, want postfix/smimefilter/lmtp (contrib/postfix/transport)", d.To, d.Service)
		}
	}
	if len(queueIDs) != 1 {
		t.Errorf("Postfix logged deliveries of %d queue files, want the one message: %v", len(queueIDs), queueIDs)
	}

	// The snippet lets 50 recipients share one LMTP transaction: the
	// daemon must have answered all 20 in the transaction Postfix opened,
	// each after encrypting (not by policy or pass-through).
	txs := map[string]bool{}
	logged := map[string]bool{}
	for _, m := range recipientLine.FindAllStringSubmatch(st.filter.log(), -1) {
		tx, rcpt, action, code := m[1], m[2], m[3], m[4]
		txs[tx] = true
		logged[rcpt] = true
		if action != "encrypt" || code != "250" {
			t.Errorf("daemon: %s: action=%s code=%s, want action=encrypt code=250", rcpt, action, code)
		}
	}
	if len(logged) != len(users) || len(txs) != 1 {
		t.Errorf("daemon: %d recipients logged in %d transactions, want %d in 1: %v", len(logged), len(txs), len(users), txs)
	}

	for _, u := range users {
		r := st.certs[u]
		msgs := st.dovecot.Messages(u)
		if len(msgs) != 1 {
			t.Errorf("%s: %d messages in INBOX, want exactly 1", u, len(msgs))
			continue
		}
		der, err := smimetest.ExtractDER(msgs[0])
		if err != nil {
			t.Errorf("%s: the copy is not S/MIME: %v", u, err)
			continue
		}
		// One envelope per certificate set: a copy that names anyone
		// else's certificate tells its reader who else got the message
		// (a Bcc leak), even if it decrypts.
		ris, err := smimetest.RecipientsOf(der)
		switch {
		case err != nil:
			t.Errorf("%s: reading the envelope: %v", u, err)
		case len(ris) != 1 || !ris[0].Is(r.Cert):
			t.Errorf("%s: the envelope names %d recipients %v, want exactly its own certificate (serial %x)", u, len(ris), ris, r.Cert.SerialNumber)
		}
		if got := decrypt(t, r, msgs[0]); !bytes.Equal(got, inner) {
			t.Errorf("%s: decrypted entity differs from the original:\n got %q\nwant %q", u, lastBytes(string(got), 300), lastBytes(string(inner), 300))
		}
	}
}
