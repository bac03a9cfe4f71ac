package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// TestDelivery sends one message through Postfix, configured each way of
// contrib/postfix, to: a user with a certificate, a user through a
// subaddress, a user through a rewritten domain, a user Dovecot does not know,
// and (content-filter only) a user of a domain that is not hosted here.
func TestDelivery(t *testing.T) {
	for _, mode := range []string{modeTransport, modeContentFilter} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			alice, bob, dan := "alice@"+hostedDomain, "bob@"+hostedDomain, "dan@"+hostedDomain
			ext := "ext@" + elsewhereDomain
			st := newStack(t, setup{
				mode:  mode,
				users: []string{alice, bob, dan, ext},
				// nobody has a certificate but no mailbox (an account
				// deleted in Dovecot): Dovecot's 550 decides.
				certs: []string{alice, bob, dan, "nobody@" + hostedDomain},
			})
			unknown := "nobody@" + hostedDomain
			// ghost has neither a mailbox nor a certificate: the daemon asks
			// Dovecot before the missing-certificate policy (tempfail), so
			// it bounces at once instead of waiting in the queue.
			ghost := "ghost@" + hostedDomain
			viaDetail := "bob+lists@" + hostedDomain
			viaRewrite := "dan@" + rewrittenDomain
			rcpts := []string{alice, viaDetail, viaRewrite, unknown, ghost}
			if mode == modeContentFilter {
				rcpts = append(rcpts, ext)
			}
			raw, inner := testMessage(alice, "delivery "+mode, 20<<10)
			st.send(rcpts, raw)

			// The unknown recipient bounces alone, with Dovecot's status.
			for _, u := range []string{unknown, ghost} {
				b := st.postfix.WaitStatus(u, "bounced", defaultStatusTimeout)
				if b.DSN != "5.1.1" {
					t.Errorf("%s: bounced with dsn=%s (%s), want 5.1.1 from Dovecot", u, b.DSN, b.Text)
				}
				if c := st.postfix.Count(u); c.Deferred != 0 {
					t.Errorf("%s: deferred %d times before bouncing, want an immediate bounce", u, c.Deferred)
				}
			}
			for _, r := range []string{alice, viaDetail, viaRewrite} {
				d := st.postfix.WaitStatus(r, "sent", defaultStatusTimeout)
				if !strings.HasPrefix(d.DSN, "2.") {
					t.Errorf("%s: dsn=%s", r, d.DSN)
				}
			}
			if mode == modeContentFilter {
				// Handed back to Postfix (sent to the filter, then sent
				// again by Postfix to the other host): never bounced.
				st.postfix.WaitCount(defaultStatusTimeout, func(c mailstacktest.Counts) bool { return c.Sent >= 2 }, ext)
				if c := st.postfix.Count(ext); c.Bounced != 0 || c.Deferred != 0 || c.Sent != 2 {
					t.Errorf("%s: %v, want 2 sent only (to the filter, then re-injected and delivered)", ext, c)
				}
				msgs := st.dovecot.WaitMessages(ext, 1, defaultStatusTimeout)
				if _, err := smimetest.ExtractDER(msgs[0]); err == nil {
					t.Errorf("%s: the re-injected copy is encrypted; it must be handed back unchanged", ext)
				}
				if !bytes.Equal(bodyOf(msgs[0]), bodyOf(inner)) {
					t.Errorf("%s: the re-injected body differs from the original", ext)
				}
			}
			st.postfix.WaitQueueEmpty(defaultLongTimeout)
			if c := st.postfix.Count(alice, viaDetail, viaRewrite); c.Bounced != 0 || c.Deferred != 0 || c.Sent != 3 {
				t.Errorf("hosted recipients: %v, want sent=3", c)
			}

			// Each copy in the right mailbox, encrypted for its owner: bob's
			// through the subaddress rule, dan's through the domain move.
			aliceMsgs := st.dovecot.WaitMessages(alice, 1, defaultStatusTimeout)
			bobMsgs := st.dovecot.WaitMessages(bob, 1, defaultStatusTimeout)
			danMsgs := st.dovecot.WaitMessages(dan, 1, defaultStatusTimeout)
			if len(aliceMsgs) != 1 || len(bobMsgs) != 1 || len(danMsgs) != 1 {
				t.Fatalf("got %d, %d, %d messages for alice, bob, dan; want 1 each", len(aliceMsgs), len(bobMsgs), len(danMsgs))
			}
			check := func(r *smimetest.Recipient, msg []byte) {
				t.Helper()
				if got := decrypt(t, r, msg); !bytes.Equal(got, inner) {
					t.Errorf("%s: decrypted entity differs from the original:\n got %q\nwant %q",
						r.Addr, lastBytes(string(got), 300), lastBytes(string(inner), 300))
				}
				if s := header(msg, "Subject"); s != "delivery "+mode {
					t.Errorf("%s: outer Subject %q", r.Addr, s)
				}
				if ct := header(msg, "Content-Type"); !strings.Contains(ct, "application/pkcs7-mime") {
					t.Errorf("%s: outer Content-Type %q", r.Addr, ct)
				}
			}
			check(st.certs[alice], aliceMsgs[0])
			check(st.certs[bob], bobMsgs[0])
			check(st.certs[dan], danMsgs[0])
			if n := len(st.dovecot.MessagesIn(bob, "lists")); n != 0 {
				t.Errorf("bob's folder lists has %d messages: the subaddress rule should have delivered to INBOX", n)
			}

			if mode == modeTransport {
				// The clients people use decrypt it too.
				der, err := smimetest.ExtractDER(aliceMsgs[0])
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range smimetest.Decryptors(t, st.certs[alice]) {
					got, err := d.Decrypt(der)
					if err != nil {
						t.Errorf("%s cannot decrypt: %v", d.Name, err)
					} else if !bytes.Equal(got, inner) {
						t.Errorf("%s: decrypted entity differs from the original", d.Name)
					}
				}
			}
		})
	}
}

// TestMissingCertificate checks each policy.missing_certificate for a
// recipient without a certificate, next to one who has one.
func TestMissingCertificate(t *testing.T) {
	alice, carol := "alice@"+hostedDomain, "carol@"+hostedDomain
	for _, policy := range []string{"tempfail", "reject", "plaintext"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			st := newStack(t, setup{users: []string{alice, carol}, certs: []string{alice}, missing: policy})
			raw, inner := testMessage(carol, "policy "+policy, 1<<10)
			st.send([]string{alice, carol}, raw)

			st.postfix.WaitStatus(alice, "sent", defaultStatusTimeout)
			if got := decrypt(t, st.certs[alice], st.dovecot.WaitMessages(alice, 1, defaultStatusTimeout)[0]); !bytes.Equal(got, inner) {
				t.Errorf("alice: decrypted entity differs")
			}
			switch policy {
			case "tempfail":
				d := st.postfix.WaitStatus(carol, "deferred", defaultStatusTimeout)
				if !strings.HasPrefix(d.DSN, "4.") {
					t.Errorf("carol: deferred with dsn=%s, want 4.x.x", d.DSN)
				}
				if n := len(st.dovecot.Messages(carol)); n != 0 {
					t.Errorf("carol: %d messages, want none before her certificate exists", n)
				}
				// Her certificate arrives: the next retry encrypts for it.
				r := smimetest.NewRecipient(t, carol)
				tmp := filepath.Join(st.dir, "certs", ".carol.tmp")
				if err := os.WriteFile(tmp, r.CertPEM, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, filepath.Join(st.dir, "certs", carol+".pem")); err != nil {
					t.Fatal(err)
				}
				// The daemon watches its certificate directory; Postfix
				// retries every second or two anyway.
				st.postfix.Flush()
				st.postfix.WaitStatus(carol, "sent", defaultLongTimeout)
				if got := decrypt(t, r, st.dovecot.WaitMessages(carol, 1, defaultStatusTimeout)[0]); !bytes.Equal(got, inner) {
					t.Errorf("carol: decrypted entity differs")
				}
			case "reject":
				d := st.postfix.WaitStatus(carol, "bounced", defaultStatusTimeout)
				if !strings.HasPrefix(d.DSN, "5.") {
					t.Errorf("carol: bounced with dsn=%s, want 5.x.x", d.DSN)
				}
				if n := len(st.dovecot.Messages(carol)); n != 0 {
					t.Errorf("carol: %d messages, want none", n)
				}
			case "plaintext":
				st.postfix.WaitStatus(carol, "sent", defaultStatusTimeout)
				msg := st.dovecot.WaitMessages(carol, 1, defaultStatusTimeout)[0]
				if _, err := smimetest.ExtractDER(msg); err == nil {
					t.Errorf("carol: copy is encrypted, want plaintext")
				}
				if header(msg, "X-Smimefilter") == "" {
					t.Errorf("carol: no X-Smimefilter marker header in the plaintext copy:\n%s", lastBytes(string(msg), 1500))
				}
				if !bytes.Equal(bodyOf(msg), bodyOf(inner)) {
					t.Errorf("carol: body differs from the original")
				}
			}
			st.postfix.WaitQueueEmpty(defaultLongTimeout)
			if c := st.postfix.Count(alice); c != (mailstacktest.Counts{Sent: 1}) {
				t.Errorf("alice: %v, want sent=1 only", c)
			}
		})
	}
}

// TestTransportMaps runs contrib/postfix/transport-maps: the domain in its
// map file goes through smimefilter and is encrypted; another hosted domain
// keeps virtual_transport, straight to Dovecot, and the filter never sees
// it.
func TestTransportMaps(t *testing.T) {
	t.Parallel()
	alice := "alice@" + hostedDomain
	carol := "carol@" + rewrittenDomain // hosted, not in the map
	st := newStack(t, setup{mode: modeTransportMaps, users: []string{alice, carol}, certs: []string{alice}})
	raw, inner := testMessage(alice, "transport maps", 4<<10)
	st.send([]string{alice, carol}, raw)
	for _, r := range []string{alice, carol} {
		if d := st.postfix.WaitStatus(r, "sent", defaultStatusTimeout); !strings.HasPrefix(d.DSN, "2.") {
			t.Errorf("%s: dsn=%s", r, d.DSN)
		}
	}
	aliceMsgs := st.dovecot.WaitMessages(alice, 1, defaultStatusTimeout)
	if got := decrypt(t, st.certs[alice], aliceMsgs[0]); !bytes.Equal(got, inner) {
		t.Errorf("%s: decrypted entity differs from the original", alice)
	}
	carolMsgs := st.dovecot.WaitMessages(carol, 1, defaultStatusTimeout)
	if _, err := smimetest.ExtractDER(carolMsgs[0]); err == nil {
		t.Errorf("%s: encrypted, but its domain is not in the transport map", carol)
	}
	if !bytes.Equal(bodyOf(carolMsgs[0]), bodyOf(inner)) {
		t.Errorf("%s: body differs from the original", carol)
	}
	logs := st.filter.log()
	if !strings.Contains(logs, "rcpt="+alice) || strings.Contains(logs, carol) {
		t.Errorf("the filter's log should name %s and not %s:\n%s", alice, carol, logs)
	}
}
