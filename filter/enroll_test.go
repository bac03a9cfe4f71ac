package filter

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

const testEnrollAddr = "keys@example.test"

// enrollRig is the filter with a real enrollment engine, a certificate
// store that reads its active directory (certificates and OpenPGP keys
// handed to the engine as the daemon hands them), and the fake Dovecot.
type enrollRig struct {
	lmtp   *fakeLMTP
	rf     *runningFilter
	engine *enroll.Engine
	holder *certs.Holder
	dir    string // certs.dir
}

func newEnrollRig(t *testing.T, cfg ...Config) *enrollRig {
	t.Helper()
	rig := &enrollRig{lmtp: startFakeLMTP(t)}
	var be *Backend
	var err error
	rig.engine, err = enroll.Open(enroll.Options{
		Dir:      t.TempDir(),
		Address:  testEnrollAddr,
		Delivers: func(a string) bool { return be.Delivers(a) },
		Current: func(a string) []*x509.Certificate {
			var out []*x509.Certificate
			for _, c := range rig.holder.Current().Lookup(a) {
				out = append(out, c.Certificate)
			}
			return out
		},
		CurrentKeys: func(a string) []*certs.Key { return rig.holder.Current().LookupKeys(a) },
		ChangeDelay: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rig.engine.Close() })
	rig.dir = t.TempDir()
	rig.holder, err = certs.NewHolder(certs.Options{Dir: rig.dir, EnrolledDir: rig.engine.ActiveDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := Config{}
	if len(cfg) > 0 {
		c = cfg[0] // the test's own settings, e.g. Deliver
	}
	c.Certs = rig.holder
	c.Enroll = EnrollConfig{Address: testEnrollAddr, Engine: rig.engine, MaxMessageSize: 64 << 10}
	rig.rf = startFilter(t, rig.lmtp.path, filterOpts{cfg: c})
	be = rig.rf.be
	return rig
}

// signRequest signs a short entity as `openssl smime -sign` does, from r
// to the enrollment address, with CRLF line ends as in transit.
func signRequest(t *testing.T, r *smimetest.Recipient) []byte {
	t.Helper()
	smimetest.Require(t, "openssl")
	dir := t.TempDir()
	cert, key := r.WriteFiles(t, dir)
	in := filepath.Join(dir, "entity")
	if err := os.WriteFile(in, []byte("Content-Type: text/plain\r\n\r\nPlease encrypt my mail.\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "smime", "-sign", "-signer", cert, "-inkey", key, "-in", in,
		"-from", r.Addr, "-to", testEnrollAddr, "-subject", "Encrypt my mail").Output()
	if err != nil {
		t.Fatalf("openssl smime -sign: %v", err)
	}
	return bytes.ReplaceAll(bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

var confirmLink = regexp.MustCompile(`subject=(confirm|cancel)%20([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})`)

// codeIn decrypts an enrollment message for r and returns its code.
func codeIn(t *testing.T, data []byte, r *smimetest.Recipient, verb string) string {
	t.Helper()
	plain, err := smimetest.DecryptMessage(t, data, r)
	if err != nil {
		t.Fatalf("decrypting for %s: %v", r.Addr, err)
	}
	// quoted-printable soft breaks may split the link
	text := strings.ReplaceAll(string(plain), "=\r\n", "")
	m := confirmLink.FindStringSubmatch(text)
	if m == nil || m[1] != verb {
		t.Fatalf("no %s link in:\n%s", verb, text)
	}
	return m[2]
}

// encryptedOnlyTo fails unless data is an enveloped message whose only
// RecipientInfo is r's certificate.
func encryptedOnlyTo(t *testing.T, data []byte, r *smimetest.Recipient) {
	t.Helper()
	der, err := smimetest.ExtractDER(data)
	if err != nil {
		t.Fatalf("not S/MIME: %v\n%s", err, data)
	}
	ris, err := smimetest.RecipientsOf(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(ris) != 1 || !ris[0].Is(r.Cert) {
		t.Fatalf("encrypted to %v, want %s's certificate only", ris, r.Addr)
	}
}

func codeMsg(from, subject string) []byte {
	return []byte("From: <" + from + ">\r\nTo: <" + testEnrollAddr + ">\r\nSubject: " + subject + "\r\nMIME-Version: 1.0\r\n\r\n\r\n")
}

// TestEnrollEndToEnd: a signed request gets a challenge encrypted to the
// requested certificate only and is never delivered; a normal recipient
// of the same transaction keeps its copy; the code activates the
// certificate, and the next mail to that address is encrypted to it; the
// code works once.
func TestEnrollEndToEnd(t *testing.T) {
	rig := newEnrollRig(t)
	alice := smimetest.NewRecipient(t, "alice@example.test")
	cl := lmtpClient(t, rig.rf.path)

	req := signRequest(t, alice)
	got := send(t, cl, alice.Addr, []string{testEnrollAddr, "bob@example.test"}, req)
	if got[testEnrollAddr].code != 250 || got["bob@example.test"].code != 250 {
		t.Fatalf("request replies %v, want 250 for both", got)
	}
	msgs := rig.lmtp.messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages delivered, want bob's copy and the challenge", len(msgs))
	}
	var challenge []byte
	for _, m := range msgs {
		switch {
		case len(m.rcpts) == 1 && m.rcpts[0] == "bob@example.test":
			if !bytes.Contains(m.data, []byte("Please encrypt my mail.")) {
				t.Errorf("bob's copy lost the message:\n%s", m.data)
			}
		case len(m.rcpts) == 1 && m.rcpts[0] == alice.Addr:
			if m.from != "" {
				t.Errorf("challenge sent from <%s>, want the null sender", m.from)
			}
			challenge = m.data
		default:
			t.Errorf("unexpected delivery to %v (the enrollment address must never be delivered)", m.rcpts)
		}
	}
	if challenge == nil {
		t.Fatal("no challenge for alice")
	}
	encryptedOnlyTo(t, challenge, alice)
	code := codeIn(t, challenge, alice, "confirm")
	if bytes.Contains(challenge, []byte(code)) {
		t.Fatal("the code appears outside the encryption")
	}

	if got := send(t, cl, alice.Addr, []string{testEnrollAddr}, codeMsg(alice.Addr, "confirm "+code)); got[testEnrollAddr].code != 250 {
		t.Fatalf("confirmation reply %v, want 250", got)
	}
	if err := rig.holder.Reload(); err != nil {
		t.Fatal(err)
	}
	if cs := rig.holder.Current().Lookup(alice.Addr); len(cs) != 1 || cs[0].Source != certs.SourceEnrollment {
		t.Fatalf("after confirmation the store has %v for alice, want the enrolled certificate", cs)
	}

	n := len(rig.lmtp.messages())
	if got := send(t, cl, "carol@example.net", []string{alice.Addr}, msg("secret", "for alice only\r\n")); got[alice.Addr].code != 250 {
		t.Fatalf("mail to alice: %v", got)
	}
	last := rig.lmtp.messages()[n:]
	var toAlice []byte
	for _, m := range last {
		if len(m.rcpts) == 1 && m.rcpts[0] == alice.Addr && bytes.Contains(m.data, []byte("Subject: secret")) {
			toAlice = m.data
		}
	}
	if toAlice == nil {
		t.Fatal("mail to alice not delivered")
	}
	encryptedOnlyTo(t, toAlice, alice)
	if plain, err := smimetest.DecryptMessage(t, toAlice, alice); err != nil || !bytes.Contains(plain, []byte("for alice only")) {
		t.Fatalf("mail to alice does not decrypt with her key: %v", err)
	}

	// Replayed: refused, with the engine's reason, and nothing sent.
	n = len(rig.lmtp.messages())
	if got := send(t, cl, alice.Addr, []string{testEnrollAddr}, codeMsg(alice.Addr, "confirm "+code)); got[testEnrollAddr].code != 550 ||
		got[testEnrollAddr].enh != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("replayed code reply %v, want 550 5.7.1", got)
	}
	if len(rig.lmtp.messages()) != n {
		t.Error("a replayed code made the filter send mail")
	}
}

// TestEnrollRefusals: the engine's refusals reach the client with the
// codes of issue 12, and nothing is delivered.
func TestEnrollRefusals(t *testing.T) {
	rig := newEnrollRig(t)
	cl := lmtpClient(t, rig.rf.path)
	for _, tc := range []struct {
		name string
		msg  []byte
		want result
	}{
		{"unsigned", msg("hello", "please enroll me\r\n"), result{550, smtp.EnhancedCode{5, 7, 1}}},
		{"wrong code", codeMsg("dave@example.test", "confirm AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA"), result{550, smtp.EnhancedCode{5, 7, 1}}},
		{"too large", msg("big", strings.Repeat(strings.Repeat("x", 98)+"\r\n", 700)), result{552, smtp.EnhancedCode{5, 3, 4}}},
	} {
		got := send(t, cl, "dave@example.test", []string{testEnrollAddr}, tc.msg)
		if got[testEnrollAddr] != tc.want {
			t.Errorf("%s: reply %v, want %v", tc.name, got[testEnrollAddr], tc.want)
		}
	}
	if n := len(rig.lmtp.messages()); n != 0 {
		t.Errorf("%d messages delivered, want none", n)
	}
	if !strings.Contains(rig.rf.logs.String(), "action=enroll") {
		t.Error("no log line with action=enroll")
	}
}

// TestEnrollChallengeUndeliverable: when the challenge cannot be
// delivered, the request is deferred (451), never bounced, even when the
// mail store refuses it permanently.
func TestEnrollChallengeUndeliverable(t *testing.T) {
	rig := newEnrollRig(t)
	alice := smimetest.NewRecipient(t, "alice@example.test")
	rig.lmtp.answer = func(string) error {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Mailbox full"}
	}
	cl := lmtpClient(t, rig.rf.path)
	got := send(t, cl, alice.Addr, []string{testEnrollAddr}, signRequest(t, alice))
	if got[testEnrollAddr].code != 451 {
		t.Fatalf("reply %v, want 451", got[testEnrollAddr])
	}
}

// TestDeliverEnrollmentNeverPlaintext: an Outgoing with no certificate
// is not sent.
func TestDeliverEnrollmentNeverPlaintext(t *testing.T) {
	rig := newEnrollRig(t)
	_, err := rig.rf.be.DeliverEnrollment(context.Background(), []enroll.Outgoing{{To: "alice@example.test", Entity: codeMsg("x@example.test", "hi"), Purpose: "challenge"}})
	if !errors.Is(err, ErrEnrollDelivery) {
		t.Fatalf("got %v, want ErrEnrollDelivery", err)
	}
	if n := len(rig.lmtp.messages()); n != 0 {
		t.Fatalf("%d messages delivered, want none", n)
	}
}

// TestEnrollStatus: the enrollment errors' replies.
func TestEnrollStatus(t *testing.T) {
	long := strings.Repeat("é", 300) + "\r\n250 ok"
	for _, tc := range []struct {
		err  error
		code int
		enh  smtp.EnhancedCode
	}{
		{&EnrollRefusal{fmt.Errorf("%w: x", enroll.ErrUnsigned)}, 550, smtp.EnhancedCode{5, 7, 1}},
		{&EnrollRefusal{fmt.Errorf("%w: x", enroll.ErrBadCode)}, 550, smtp.EnhancedCode{5, 7, 1}},
		{&EnrollRefusal{fmt.Errorf("%w: x", enroll.ErrNotDelivered)}, 550, smtp.EnhancedCode{5, 7, 1}},
		{&EnrollRefusal{fmt.Errorf("%w: x", enroll.ErrOverLimit)}, 451, smtp.EnhancedCode{4, 7, 1}},
		{&EnrollRefusal{fmt.Errorf("%w: x", enroll.ErrTooLarge)}, 552, smtp.EnhancedCode{5, 3, 4}},
		{&EnrollRefusal{errors.New(long)}, 550, smtp.EnhancedCode{5, 7, 1}},
		{fmt.Errorf("%w: disk full", ErrEnrollEngine), 451, smtp.EnhancedCode{4, 3, 0}},
		{fmt.Errorf("%w: %w", ErrEnrollDelivery, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}}), 451, smtp.EnhancedCode{4, 3, 0}},
	} {
		se := Status(tc.err)
		if se.Code != tc.code || se.EnhancedCode != tc.enh {
			t.Errorf("Status(%.60v) = %d %v, want %d %v", tc.err, se.Code, se.EnhancedCode, tc.code, tc.enh)
		}
		if len(se.Message) > maxEnrollReason || strings.ContainsAny(se.Message, "\r\n") || !utf8Valid(se.Message) {
			t.Errorf("Status(%.60v) text %q: want one valid line of at most %d bytes", tc.err, se.Message, maxEnrollReason)
		}
	}
	if se := Status(&EnrollRefusal{fmt.Errorf("%w: no", enroll.ErrUnsigned)}); !strings.Contains(se.Message, "not signed") {
		t.Errorf("refusal text %q does not say why", se.Message)
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\ufffd") == s }

// TestEnrollNoticeUndeliverableAfterConfirmation: once a code is used, the
// confirmation is answered 250 even when the notice it causes cannot be
// delivered now (a 4xx would make Postfix retry a message whose code is
// used, and the retry would bounce); the notice is owed to the next Tick.
func TestEnrollNoticeUndeliverableAfterConfirmation(t *testing.T) {
	rig := newEnrollRig(t)
	alice := smimetest.NewRecipient(t, "alice@example.test")
	cl := lmtpClient(t, rig.rf.path)
	if got := send(t, cl, alice.Addr, []string{testEnrollAddr}, signRequest(t, alice)); got[testEnrollAddr].code != 250 {
		t.Fatalf("request: %v", got)
	}
	msgs := rig.lmtp.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want the challenge", len(msgs))
	}
	code := codeIn(t, msgs[0].data, alice, "confirm")
	rig.lmtp.answer = func(string) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	}
	if got := send(t, cl, alice.Addr, []string{testEnrollAddr}, codeMsg(alice.Addr, "confirm "+code)); got[testEnrollAddr].code != 250 {
		t.Fatalf("confirmation with its notice undeliverable: %v, want 250", got)
	}
	owed := rig.rf.be.TakeOwed()
	if len(owed) != 1 || owed[0].To != alice.Addr || owed[0].Purpose != "activated" {
		t.Fatalf("owed %+v, want the activation notice for alice", owed)
	}
	if len(rig.rf.be.TakeOwed()) != 0 {
		t.Error("TakeOwed returned the notices twice")
	}
}

// TestEnrollActivationReloadsStoreFirst: when the activation notice ("from
// now on your mail is encrypted to this certificate") goes out, the store
// already uses the certificate: mail right after it is encrypted to it.
func TestEnrollActivationReloadsStoreFirst(t *testing.T) {
	rig := newEnrollRig(t) // no directory watch runs: only an explicit reload
	alice := smimetest.NewRecipient(t, "alice@example.test")
	cl := lmtpClient(t, rig.rf.path)
	if got := send(t, cl, alice.Addr, []string{testEnrollAddr}, signRequest(t, alice)); got[testEnrollAddr].code != 250 {
		t.Fatalf("request: %v", got)
	}
	code := codeIn(t, rig.lmtp.messages()[0].data, alice, "confirm")
	if got := send(t, cl, alice.Addr, []string{testEnrollAddr}, codeMsg(alice.Addr, "confirm "+code)); got[testEnrollAddr].code != 250 {
		t.Fatalf("confirmation: %v", got)
	}
	if cs := rig.holder.Current().Lookup(alice.Addr); len(cs) != 1 {
		t.Fatalf("after the activation notice the store has %d certificates for alice, want the enrolled one", len(cs))
	}
}

// TestEnrollAddressInEveryForm: the enrollment address with another case
// or a subaddress is the enrollment address: never a mailbox, neither for
// mail sent to it nor as the address of a certificate (Delivers).
func TestEnrollAddressInEveryForm(t *testing.T) {
	rig := newEnrollRig(t, Config{RecipientDelimiter: "+"})
	for _, a := range []string{testEnrollAddr, "Keys@example.test", "keys+x@example.test"} {
		if rig.rf.be.Delivers(a) {
			t.Errorf("Delivers(%q) = true, want false", a)
		}
		got := send(t, lmtpClient(t, rig.rf.path), "s@example.net", []string{a}, msg("hi", "not a request\r\n"))
		if got[a].code != 550 {
			t.Errorf("%s: got %v, want the engine's 550 for an unsigned message", a, got[a])
		}
	}
	if n := len(rig.lmtp.messages()); n != 0 {
		t.Errorf("%d messages delivered, want none", n)
	}
}
