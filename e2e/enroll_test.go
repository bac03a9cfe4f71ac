package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

const enrollAddr = "keys@" + hostedDomain

var enrollCode = regexp.MustCompile(`subject=confirm%20([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})`)

// signedRequest is what a user's client sends: signed by
// `openssl smime -sign`, to the enrollment address.
func signedRequest(t *testing.T, r *smimetest.Recipient) []byte {
	t.Helper()
	dir := t.TempDir()
	cert, key := r.WriteFiles(t, dir)
	in := filepath.Join(dir, "entity")
	if err := os.WriteFile(in, []byte("Content-Type: text/plain\r\n\r\nPlease encrypt my mail.\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "smime", "-sign", "-signer", cert, "-inkey", key, "-in", in,
		"-from", r.Addr, "-to", enrollAddr, "-subject", "Encrypt my mail").Output()
	if err != nil {
		t.Fatalf("openssl smime -sign: %v", err)
	}
	return bytes.ReplaceAll(bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// enrollTOML is the [enroll] table of a stack, with a state directory the
// daemon (run as nobody) can write.
func enrollTOML(t *testing.T, delay string) string {
	toml, _ := enrollState(t, delay)
	return toml
}

// TestEnrollFirstEnrollment: through the real Postfix and Dovecot, a
// signed request gets a challenge that decrypts with the requested key
// only, the code activates the certificate, and the next mail is
// encrypted to it.
func TestEnrollFirstEnrollment(t *testing.T) {
	alice := "alice@" + hostedDomain
	st := newStack(t, setup{users: []string{alice}, extraTOML: enrollTOML(t, "2s")})
	r := smimetest.NewRecipient(t, alice)
	st.send([]string{enrollAddr}, signedRequest(t, r))
	msgs := st.waitMessages(alice, 1, defaultLongTimeout)
	plain := decrypt(t, r, msgs[0])
	text := strings.ReplaceAll(string(plain), "=\r\n", "")
	m := enrollCode.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no confirmation link in the challenge:\n%s", text)
	}
	if bytes.Contains(msgs[0], []byte(m[1])) {
		t.Fatal("the code appears outside the encryption")
	}
	st.send([]string{enrollAddr}, []byte("From: <"+alice+">\r\nTo: <"+enrollAddr+">\r\nSubject: confirm "+m[1]+"\r\n\r\n\r\n"))
	st.waitMessages(alice, 2, defaultLongTimeout) // the activation notice

	// The store picks the enrolled certificate up by its watch: poll
	// with fresh mail until one is encrypted to it.
	deadline := time.Now().Add(defaultLongTimeout)
	for i := 0; ; i++ {
		raw, _ := testMessage(alice, "after enrollment", 0)
		st.send([]string{alice}, raw)
		msgs = st.waitMessages(alice, 3+i, defaultLongTimeout)
		if _, err := smimetest.DecryptMessage(t, msgs[len(msgs)-1], r); err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("mail after enrollment not encrypted to the enrolled certificate: %v", err)
			}
			break
		}
	}
}

// changeDelay is enroll.change_delay of the change tests: long enough
// that mail sent right after a confirmation is encrypted before the change
// takes effect, short enough for a test. The daemon ticks every second
// then (cmd/smimefilter tickInterval).
const changeDelay = 4 * time.Second

// change is one pending change of a stack's address: a request signed
// with a new key, the challenge to it, the notice to the current
// certificate.
type change struct {
	addr     string
	old, new *smimetest.Recipient
	fp       string // of the new certificate
	code     string // from the challenge
	cancel   string // from the notice to the current holder
}

// requestChange sends a request for a new certificate of addr, which has
// old in certs.dir, and checks what the address gets: the challenge
// encrypted to the new certificate only, and a notice encrypted to the
// current one that names the envelope sender, the new fingerprint and the
// delay, with a cancel code.
func requestChange(t *testing.T, st *stack, old *smimetest.Recipient) *change {
	t.Helper()
	c := &change{addr: old.Addr, old: old, new: smimetest.NewRecipient(t, old.Addr, smimetest.KeyName(old.Addr+" new"))}
	c.fp = fingerprintHex(c.new.Cert)
	st.send([]string{enrollAddr}, signedRequest(t, c.new))

	challenge := st.waitSubject(c.addr, subjChallenge, 1)
	requireEncryptedTo(t, "the challenge", challenge, c.new)
	c.code = codeOf(t, enrollCode, openText(t, c.new, challenge), challenge)

	notice := st.waitSubject(c.addr, subjRequested, 1)
	requireEncryptedTo(t, "the notice of the request", notice, c.old)
	text := openText(t, c.old, notice)
	requireContains(t, "the notice of the request", text, senderAddr, c.fp, "takes effect "+changeDelay.String()+" later")
	c.cancel = codeOf(t, cancelCode, text, notice)
	return c
}

// confirm sends the code from addr's own mailbox and checks the notices:
// to the current certificate, that the change is scheduled, when, and how
// to cancel it; to the new one, that the confirmation arrived. It returns
// when the change takes effect.
func (c *change) confirm(t *testing.T, st *stack, stateDir string) time.Time {
	t.Helper()
	st.sendCode(c.addr, "confirm", c.code)
	scheduled := st.waitSubject(c.addr, subjScheduled, 1)
	requireEncryptedTo(t, "the notice of the confirmation", scheduled, c.old)
	at := activateAt(t, stateDir, c.addr, c.fp, changeDelay)
	text := openText(t, c.old, scheduled)
	requireContains(t, "the notice of the confirmation", text, "by a message from "+c.addr, c.fp, noticeTime(at))
	codeOf(t, cancelCode, text, scheduled)

	confirmed := st.waitSubject(c.addr, subjConfirmed, 1)
	requireEncryptedTo(t, "the reply to the confirmation", confirmed, c.new)
	requireContains(t, "the reply to the confirmation", openText(t, c.new, confirmed), noticeTime(at))

	want := "pending until " + at.UTC().Format(time.RFC3339)
	if l := st.listed(t, c.addr, c.fp); !strings.Contains(l, want) {
		t.Fatalf("certs list shows %q for the confirmed change, want %q", l, want)
	}
	return at
}

// duringDelay sends mail to the address before at and checks that it is
// encrypted to the current certificate only.
func (c *change) duringDelay(t *testing.T, st *stack, subject string, at time.Time) {
	t.Helper()
	msg := st.mailTo(c.addr, subject)
	if !time.Now().Before(at) {
		// Not a finding about the daemon: the check did not happen
		// inside the delay.
		t.Fatalf("mail %q arrived only after the change took effect at %v: changeDelay is too short for this machine", subject, at)
	}
	requireEncryptedTo(t, "mail "+strconv.Quote(subject), msg, c.old)
}

// activated waits for the notice of the activation, encrypted to every
// certificate then active (the one in certs.dir and the new one), and
// checks the log line: once, and not before at.
func (c *change) activated(t *testing.T, st *stack, stateDir string, at time.Time) {
	t.Helper()
	notice := st.waitSubject(c.addr, subjActivated, 1)
	requireEncryptedTo(t, "the notice of the activation", notice, c.old, c.new)
	requireContains(t, "the notice of the activation", openText(t, c.new, notice), c.fp)
	acts := logged(t, stateDir, c.addr, "activate", c.fp)
	if len(acts) != 1 {
		t.Fatalf("%d activate lines for %s in the change log, want 1", len(acts), c.addr)
	}
	if acts[0].Time.Before(at) {
		t.Fatalf("the change took effect at %v, before its time %v", acts[0].Time, at)
	}
	if got := st.listedState(t, c.addr, c.fp); got != "active" {
		t.Fatalf("certs list shows state %q after the activation, want active", got)
	}
}

// TestEnrollChangeWithDelay: an address with a certificate asks for a new
// one. The current holder is told, the challenge goes to the new
// certificate, and after the confirmation mail keeps going to the current
// certificate until change_delay has passed; then to both (the one in
// certs.dir stays), announced to both.
func TestEnrollChangeWithDelay(t *testing.T) {
	alice := "alice@" + hostedDomain
	toml, state := enrollState(t, changeDelay.String())
	st := newStack(t, setup{users: []string{alice}, certs: []string{alice}, extraTOML: toml})
	c := requestChange(t, st, st.certs[alice])
	at := c.confirm(t, st, state)
	c.duringDelay(t, st, "during the delay", at)
	c.activated(t, st, state, at)
	st.mailUntilEncryptedTo(t, alice, c.old, c.new)
}

// TestEnrollChangeCancelled: the current holder uses the cancel code of
// the notice after the change was confirmed; the change never takes
// effect, and the log says so. Bob's change, confirmed after Alice's, is
// the control: its activation is a Tick past the time Alice's would have
// had, so its notice is the signal that hers is not coming.
func TestEnrollChangeCancelled(t *testing.T) {
	alice, bob := "alice@"+hostedDomain, "bob@"+hostedDomain
	toml, state := enrollState(t, changeDelay.String())
	st := newStack(t, setup{users: []string{alice, bob}, certs: []string{alice, bob}, extraTOML: toml})
	a := requestChange(t, st, st.certs[alice])
	b := requestChange(t, st, st.certs[bob])
	atA := a.confirm(t, st, state)
	atB := b.confirm(t, st, state)
	if !atB.After(atA) {
		t.Fatalf("bob's change takes effect at %v, not after alice's at %v", atB, atA)
	}

	st.sendCode(alice, "cancel", a.cancel)
	cancelled := st.waitSubject(alice, subjCancelled, 1)
	requireEncryptedTo(t, "the notice of the cancellation", cancelled, a.old, a.new)
	requireContains(t, "the notice of the cancellation", openText(t, a.old, cancelled), a.fp, "by a message from "+alice)
	cl := logged(t, state, alice, "cancel", a.fp)
	if len(cl) != 1 {
		t.Fatalf("%d cancel lines for alice in the change log, want 1: %+v", len(cl), readChangeLog(t, state))
	}
	if !cl[0].Time.Before(atA) {
		t.Fatalf("cancelled at %v, after the change was due at %v: changeDelay is too short for this machine", cl[0].Time, atA)
	}
	if l := st.listed(t, alice, a.fp); l != "" {
		t.Fatalf("certs list still shows the cancelled change: %q", l)
	}
	var cmdLine string
	for _, l := range strings.Split(st.certsCmd(t, "log"), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == alice && f[2] == "cancel" && f[3] == a.fp {
			cmdLine = l
		}
	}
	if cmdLine == "" {
		t.Fatalf("certs log has no cancel line for alice:\n%s", st.certsCmd(t, "log"))
	}

	b.activated(t, st, state, atB)
	st.mailUntilEncryptedTo(t, bob, b.old, b.new)
	// The store has loaded Bob's enrolled certificate, so what it holds
	// for Alice is what it holds after her change's time.
	if n := len(logged(t, state, alice, "activate", "")); n != 0 {
		t.Fatalf("%d activate lines for alice after her change was cancelled", n)
	}
	if n := len(st.withSubject(alice, subjActivated)); n != 0 {
		t.Fatalf("alice got %d activation notices after cancelling", n)
	}
	requireEncryptedTo(t, "mail after the cancelled change's time", st.mailTo(alice, "after the cancelled change"), a.old)
}

// TestEnrollForgedRequest: Mallory, a user here, gets a certificate for
// Bob's address with her own key and sends it signed. The challenge goes
// to Bob's mailbox (which she cannot read) encrypted to her certificate
// (which Bob cannot read); Bob is told, encrypted to his certificate, who
// asked; nothing changes, and Bob can stop it.
func TestEnrollForgedRequest(t *testing.T) {
	bob, mallory := "bob@"+hostedDomain, "mallory@"+hostedDomain
	toml, state := enrollState(t, changeDelay.String())
	st := newStack(t, setup{users: []string{bob, mallory}, certs: []string{bob}, extraTOML: toml})
	victim := st.certs[bob]
	forged := smimetest.NewRecipient(t, bob, smimetest.KeyName(mallory))
	fp := fingerprintHex(forged.Cert)
	if err := st.postfix.Send(mallory, []string{enrollAddr}, signedRequest(t, forged)); err != nil {
		t.Fatal(err)
	}
	// The daemon delivers every challenge and notice before it answers
	// (filter/enroll.go handleEnroll): after the 250, nothing more comes.
	st.postfix.WaitStatus(enrollAddr, "sent", defaultLongTimeout)

	challenge := st.waitSubject(bob, subjChallenge, 1)
	requireEncryptedTo(t, "the challenge", challenge, forged)
	if h := header(challenge, "To"); h != "<"+bob+">" {
		t.Fatalf("the challenge is addressed To: %s, want <%s>", h, bob)
	}
	if _, err := smimetest.DecryptMessage(t, challenge, victim); err == nil {
		t.Fatal("the victim's key decrypts the challenge for the forged certificate")
	}
	notice := st.waitSubject(bob, subjRequested, 1)
	requireEncryptedTo(t, "the notice to the victim", notice, victim)
	text := openText(t, victim, notice)
	requireContains(t, "the notice to the victim", text, "The request came from "+mallory, fp)
	cancel := codeOf(t, cancelCode, text, notice)
	if ms := st.messages(mallory); len(ms) != 0 {
		t.Fatalf("the forger's mailbox got %d messages: %q", len(ms), st.subjects(mallory))
	}

	if got := st.listedState(t, bob, fp); got != "awaiting-confirmation" {
		t.Fatalf("certs list shows state %q for the forged request, want awaiting-confirmation", got)
	}
	requireEncryptedTo(t, "mail after the forged request", st.mailTo(bob, "after the forged request"), victim)

	st.sendCode(bob, "cancel", cancel)
	requireEncryptedTo(t, "the notice of the cancellation", st.waitSubject(bob, subjCancelled, 1), victim, forged)
	if l := st.listed(t, bob, fp); l != "" {
		t.Fatalf("certs list still shows the forged request after its cancellation: %q", l)
	}
	if n := len(logged(t, state, bob, "cancel", fp)); n != 1 {
		t.Fatalf("%d cancel lines for the forged request, want 1", n)
	}
	if ms := st.messages(mallory); len(ms) != 0 {
		t.Fatalf("the forger's mailbox got %d messages: %q", len(ms), st.subjects(mallory))
	}
}

// bounces waits until Postfix has logged n bounces for the enrollment
// address and returns the n-th: a refusal of the engine is a 5xx, which
// Postfix must not retry.
func bounces(t *testing.T, st *stack, n int) mailstacktest.Delivery {
	t.Helper()
	st.postfix.WaitCount(defaultLongTimeout, func(c mailstacktest.Counts) bool { return c.Bounced >= n }, enrollAddr)
	var b []mailstacktest.Delivery
	for _, d := range st.postfix.Deliveries() {
		if strings.EqualFold(d.To, enrollAddr) && d.Status == "bounced" {
			b = append(b, d)
		}
	}
	if len(b) != n {
		t.Fatalf("%d bounces for %s, want %d", len(b), enrollAddr, n)
	}
	return b[n-1]
}

// TestEnrollWrongAndReplayedCode: a code of the right shape that was never
// sent, and a used code, are refused with 550 5.7.1 (bounced by Postfix,
// not deferred) and change nothing: no log line, no message, the state
// as it was.
func TestEnrollWrongAndReplayedCode(t *testing.T) {
	alice := "alice@" + hostedDomain
	toml, state := enrollState(t, changeDelay.String())
	st := newStack(t, setup{users: []string{alice}, extraTOML: toml})
	r := smimetest.NewRecipient(t, alice)
	fp := fingerprintHex(r.Cert)
	st.send([]string{enrollAddr}, signedRequest(t, r))
	challenge := st.waitSubject(alice, subjChallenge, 1)
	code := codeOf(t, enrollCode, openText(t, r, challenge), challenge)

	// unchanged checks the nth bounce, of the what code, and that the
	// state, the log and the mailbox are as before it.
	unchanged := func(nth int, what, wantState string, logLines, msgs int) {
		t.Helper()
		d := bounces(t, st, nth)
		if d.DSN != "5.7.1" || !strings.Contains(d.Text, "550") || !strings.Contains(d.Text, "code") {
			t.Fatalf("the %s code got dsn=%s (%s), want 550 5.7.1 about the code", what, d.DSN, d.Text)
		}
		if c := st.postfix.Count(enrollAddr); c.Deferred != 0 {
			t.Fatalf("the %s code was deferred: %v", what, c)
		}
		// The engine answers after it has written and sent everything:
		// after the bounce, nothing more comes of that message.
		if n := len(readChangeLog(t, state)); n != logLines {
			t.Fatalf("the %s code added %d lines to the change log: %+v", what, n-logLines, readChangeLog(t, state))
		}
		if n := len(st.messages(alice)); n != msgs {
			t.Fatalf("the %s code sent %d messages: %q", what, n-msgs, st.subjects(alice))
		}
		if got := st.listedState(t, alice, fp); got != wantState {
			t.Fatalf("certs list shows state %q after the %s code, want %s", got, what, wantState)
		}
	}

	// A wrong code while the challenge waits: the request stays as it is.
	wrong := "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567"
	if strings.ReplaceAll(code, "-", "") == strings.ReplaceAll(wrong, "-", "") {
		t.Fatal("the random code is the wrong one")
	}
	logLines, msgs := len(readChangeLog(t, state)), len(st.messages(alice))
	st.sendCode(senderAddr, "confirm", wrong)
	unchanged(1, "wrong", "awaiting-confirmation", logLines, msgs)

	// The right code still works after the wrong one.
	st.sendCode(senderAddr, "confirm", code)
	st.waitSubject(alice, subjActivated, 1)

	// Used once, refused the second time.
	logLines, msgs = len(readChangeLog(t, state)), len(st.messages(alice))
	st.sendCode(senderAddr, "confirm", code)
	unchanged(2, "replayed", "active", logLines, msgs)
}

// TestEnrollRestartWhilePending: the daemon is stopped and started again
// during the delay of a confirmed change. The change survives on disk,
// the restarted daemon keeps mail on the current certificate until its
// time, and then makes it take effect (not early, not never).
func TestEnrollRestartWhilePending(t *testing.T) {
	alice := "alice@" + hostedDomain
	toml, state := enrollState(t, changeDelay.String())
	st := newStack(t, setup{users: []string{alice}, certs: []string{alice}, extraTOML: toml})
	c := requestChange(t, st, st.certs[alice])
	at := c.confirm(t, st, state)

	st.filter.stop(10 * time.Second)
	// The command reads the state directory without the daemon.
	want := "pending until " + at.UTC().Format(time.RFC3339)
	if l := st.listed(t, alice, c.fp); !strings.Contains(l, want) {
		t.Fatalf("certs list with the daemon stopped shows %q, want %q", l, want)
	}
	st.filter.start()
	c.duringDelay(t, st, "after the restart, during the delay", at)
	c.activated(t, st, state, at)
	st.mailUntilEncryptedTo(t, alice, c.old, c.new)
}

// TestEnrollExpiryNotice: a certificate in certs.dir that expires within
// 30 days gets a notice at the daemon's start (its first Tick), encrypted
// to it, and no second one after a restart. The tick interval here is a
// minute (change_delay 72h), so the notices seen come from the Tick at
// start.
func TestEnrollExpiryNotice(t *testing.T) {
	carol, dave := "carol@"+hostedDomain, "dave@"+hostedDomain
	toml, state := enrollState(t, "72h")
	st := newStack(t, setup{users: []string{carol, dave}, extraTOML: toml})
	certDir := filepath.Join(st.dir, "certs")
	addCert := func(r *smimetest.Recipient) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(certDir, r.Addr+".pem"), r.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const validFor = 20 * 24 * time.Hour

	st.filter.stop(10 * time.Second)
	c := expiringRecipient(t, smimetest.NewRecipient(t, carol), validFor)
	addCert(c)
	st.filter.start()
	notice := st.waitSubject(carol, subjExpiry, 1)
	requireEncryptedTo(t, "the expiry notice", notice, c)
	requireContains(t, "the expiry notice", openText(t, c, notice), fingerprintHex(c.Cert), noticeTime(c.Cert.NotAfter), enrollAddr)
	if n := len(logged(t, state, carol, "expiry-notice", fingerprintHex(c.Cert))); n != 1 {
		t.Fatalf("%d expiry-notice lines for carol, want 1", n)
	}
	if l := st.listed(t, carol, fingerprintHex(c.Cert)); !strings.Contains(l, "(soon: 19 days)") {
		t.Fatalf("certs list shows %q, want the expiry soon", l)
	}

	// Dave's certificate, added while the daemon is down, gets its notice
	// from the Tick at the next start: the same Tick that would repeat
	// Carol's, which it would deliver first (addresses in order).
	st.filter.stop(10 * time.Second)
	d := expiringRecipient(t, smimetest.NewRecipient(t, dave), validFor)
	addCert(d)
	st.filter.start()
	requireEncryptedTo(t, "dave's expiry notice", st.waitSubject(dave, subjExpiry, 1), d)
	if n := len(st.withSubject(carol, subjExpiry)); n != 1 {
		t.Fatalf("carol got %d expiry notices after a restart, want 1", n)
	}
	if n := len(logged(t, state, carol, "expiry-notice", "")); n != 1 {
		t.Fatalf("%d expiry-notice lines for carol after a restart, want 1", n)
	}
}

// TestEnrollExpiredCode: a challenge's code that was not used within
// enroll.code_lifetime is refused with 550 5.7.1 (bounced, not deferred)
// and activates nothing. The lifetime is 2 s here; the request's entry
// leaves `certs list` when the daemon's tick expires it, which is what
// the test waits for instead of a fixed time.
func TestEnrollExpiredCode(t *testing.T) {
	alice := "alice@" + hostedDomain
	toml, state := enrollState(t, changeDelay.String())
	st := newStack(t, setup{users: []string{alice}, extraTOML: toml + "code_lifetime = \"2s\"\n"})
	r := smimetest.NewRecipient(t, alice)
	fp := fingerprintHex(r.Cert)
	st.send([]string{enrollAddr}, signedRequest(t, r))
	challenge := st.waitSubject(alice, subjChallenge, 1)
	code := codeOf(t, enrollCode, openText(t, r, challenge), challenge)
	if got := st.listedState(t, alice, fp); got != "awaiting-confirmation" {
		t.Fatalf("certs list shows %q for the new request, want awaiting-confirmation", got)
	}
	deadline := time.Now().Add(defaultLongTimeout)
	for st.listedState(t, alice, fp) != "" {
		if time.Now().After(deadline) {
			t.Fatalf("the request is still listed %v after its code expired", defaultLongTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	logLines, msgs := len(readChangeLog(t, state)), len(st.messages(alice))
	st.sendCode(senderAddr, "confirm", code)
	if d := bounces(t, st, 1); d.DSN != "5.7.1" || !strings.Contains(d.Text, "code") {
		t.Fatalf("the expired code got dsn=%s (%s), want 550 5.7.1 about the code", d.DSN, d.Text)
	}
	if c := st.postfix.Count(enrollAddr); c.Deferred != 0 {
		t.Fatalf("the expired code was deferred: %v", c)
	}
	if n := len(st.messages(alice)); n != msgs {
		t.Errorf("the expired code sent %d messages: %q", n-msgs, st.subjects(alice))
	}
	for _, e := range readChangeLog(t, state)[logLines:] {
		if e.Action == "activate" {
			t.Errorf("the expired code activated the certificate: %+v", e)
		}
	}
	if got := st.listedState(t, alice, fp); got != "" {
		t.Errorf("certs list shows %q for the certificate after the expired code, want nothing", got)
	}
}
