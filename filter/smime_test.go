package filter

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/server"
	"github.com/smimefilter/smimefilter/smime"
)

// certDir writes the recipients' certificates (and nothing else: the
// daemon never sees a key) into a fresh directory.
func certDir(t testing.TB, rs ...*smimetest.Recipient) string {
	t.Helper()
	dir := t.TempDir()
	for i, r := range rs {
		name := filepath.Join(dir, strings.ReplaceAll(r.Addr, "@", "_at_")+"-"+string(rune('a'+i))+".pem")
		if err := os.WriteFile(name, r.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func holder(t testing.TB, dir string) *certs.Holder {
	t.Helper()
	h, err := certs.NewHolder(certs.Options{Dir: dir}, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// copyFor returns the one copy the backend stored for rcpt.
func copyFor(t testing.TB, f *fakeLMTP, rcpt string) []byte {
	t.Helper()
	var found [][]byte
	for _, m := range f.messages() {
		for _, r := range m.rcpts {
			if r == rcpt {
				found = append(found, m.data)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: backend has %d copies, want 1", rcpt, len(found))
	}
	return found[0]
}

// envelopeOf extracts the CMS envelope of a stored copy and checks it is
// addressed to exactly want.
func envelopeOf(t testing.TB, stored []byte, want ...*smimetest.Recipient) []byte {
	t.Helper()
	der, err := smimetest.ExtractDER(stored)
	if err != nil {
		t.Fatalf("no S/MIME envelope in the stored copy: %v\n%.400s", err, stored)
	}
	ris, err := smimetest.RecipientsOf(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(ris) != len(want) {
		t.Fatalf("envelope names %d recipients (%v), want %d", len(ris), ris, len(want))
	}
	for _, w := range want {
		ok := false
		for _, ri := range ris {
			ok = ok || ri.Is(w.Cert)
		}
		if !ok {
			t.Fatalf("envelope %v does not name %s's certificate", ris, w.Addr)
		}
	}
	return der
}

// TestCorpusThroughDaemon sends the whole corpus to three recipients at once
// and checks every copy: one envelope each, naming only its own
// certificate; the original entity back from every real decryptor; signed
// mail still verifying; encrypted mail untouched.
func TestCorpusThroughDaemon(t *testing.T) {
	corpus := smimetest.Corpus(t)
	alice := smimetest.NewRecipient(t, "alice@example.org")
	bob := smimetest.NewRecipient(t, "bob@example.org")
	carol := smimetest.NewRecipient(t, "carol@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{
		Certs:  holder(t, certDir(t, alice, bob, carol)),
		Policy: Policy{Default: Tempfail},
	}, server: server.Options{MaxMessageBytes: 64 << 20}})
	decAlice := smimetest.Decryptors(t, alice)
	cl := lmtpClient(t, rf.path)
	all := []*smimetest.Recipient{alice, bob, carol}
	for _, m := range corpus {
		t.Run(m.Name, func(t *testing.T) {
			f.mu.Lock()
			f.msgs = nil
			f.mu.Unlock()
			all := all
			if m.Large {
				// One copy is enough to show that a large message streams
				// through in bounded memory and decrypts everywhere; three
				// would triple the suite's longest case.
				all = all[:1]
			}
			var addrs []string
			for _, r := range all {
				addrs = append(addrs, r.Addr)
			}
			got := send(t, cl, "sender@example.net", addrs, m.Raw)
			for _, r := range all {
				if got[r.Addr].code != 250 {
					t.Fatalf("%s: %v", r.Addr, got[r.Addr])
				}
			}
			if m.Encrypted {
				// Already encrypted: one unchanged copy for all of them.
				ms := f.messages()
				if len(ms) != 1 || !bytes.Equal(ms[0].data, m.Raw) {
					t.Fatalf("already-encrypted message changed or split: %d copies", len(ms))
				}
				return
			}
			if n := len(f.messages()); n != len(all) {
				t.Fatalf("%d outbound transactions for %d recipients with different certificates, want %[2]d", n, len(all))
			}
			inner := m.Inner
			if !bytes.HasSuffix(m.Raw, []byte("\r\n")) {
				// SMTP data always ends in CRLF (RFC 5321 §4.1.1.4): the
				// client adds one before the final dot.
				inner = append(bytes.Clone(inner), "\r\n"...)
			}
			for _, r := range all {
				stored := copyFor(t, f, r.Addr)
				checkOuterHeader(t, stored, m.Raw)
				der := envelopeOf(t, stored, r)
				decs := decAlice
				if r != alice {
					// Every decryptor for one recipient; OpenSSL for the others.
					der2, err := smimetest.DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM)
					if err != nil || !bytes.Equal(der2, inner) {
						t.Fatalf("%s: openssl: %v (equal=%v)", r.Addr, err, bytes.Equal(der2, inner))
					}
					continue
				}
				for _, d := range decs {
					if m.Large && d.Name == "go-pkcs7" {
						continue // the Go library holds it all in memory many times over; the three clients suffice
					}
					plain, err := d.Decrypt(der)
					if err != nil {
						t.Fatalf("%s cannot decrypt: %v", d.Name, err)
					}
					if !bytes.Equal(plain, inner) {
						t.Fatalf("%s: decrypted entity differs from the original (%d vs %d bytes)", d.Name, len(plain), len(inner))
					}
				}
				if m.Signed {
					if err := smimetest.VerifySigned(t, m.Inner, smimetest.DefaultCA(t)); err != nil {
						t.Fatalf("signature no longer verifies after decryption: %v", err)
					}
				}
			}
		})
	}
}

// checkOuterHeader: RFC 5322 fields stay outside, Content-* fields go inside.
func checkOuterHeader(t testing.TB, stored, orig []byte) {
	t.Helper()
	outer, _, _ := bytes.Cut(stored, []byte("\r\n\r\n"))
	oh, _, _ := bytes.Cut(orig, []byte("\r\n\r\n"))
	for _, line := range strings.Split(string(oh), "\r\n") {
		name, _, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			continue
		}
		lname := strings.ToLower(name)
		if strings.HasPrefix(lname, "content-") {
			if line != "Content-Transfer-Encoding: base64" && bytes.Contains(outer, []byte(line+"\r\n")) {
				t.Errorf("original %s field left outside", name)
			}
		} else if lname != "mime-version" && !bytes.Contains(outer, []byte(line)) {
			t.Errorf("RFC 5322 field %q not kept outside", line)
		}
	}
	if !bytes.Contains(outer, []byte("application/pkcs7-mime; smime-type=enveloped-data")) {
		t.Errorf("outer header is not enveloped-data:\n%s", outer)
	}
}

func TestMissingCertificatePolicies(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{
		Certs: holder(t, certDir(t, alice)),
		Policy: Policy{
			Default:   Tempfail,
			Domains:   map[string]MissingPolicy{"open.example": Plaintext, "strict.example": Reject},
			Addresses: map[string]MissingPolicy{"vip@open.example": Reject, "ok@strict.example": Plaintext},
		},
	}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{
		"alice@example.org", "nocert@example.org", "x@open.example", "vip@open.example", "x@strict.example", "ok@strict.example",
	}, msg("pol", "secret\r\n"))
	want := map[string]int{
		"alice@example.org":  250,
		"nocert@example.org": 451, // default tempfail: 451 4.7.0
		"x@open.example":     250, // domain plaintext
		"vip@open.example":   550, // address reject beats domain plaintext
		"x@strict.example":   550, // domain reject: 550 5.7.1
		"ok@strict.example":  250, // address plaintext beats domain reject
	}
	for r, code := range want {
		if got[r].code != code {
			t.Errorf("%s: got %v, want %d", r, got[r], code)
		}
	}
	if g := got["nocert@example.org"]; g.enh[1] != 7 || g.enh[2] != 0 {
		t.Errorf("tempfail enhanced code %v, want 4.7.0", g.enh)
	}
	if g := got["x@strict.example"]; g.enh[1] != 7 || g.enh[2] != 1 {
		t.Errorf("reject enhanced code %v, want 5.7.1", g.enh)
	}
	plain := copyFor(t, f, "x@open.example")
	if !bytes.HasPrefix(plain, []byte(PlaintextHeader+": plaintext; reason=no-certificate\r\n")) || !bytes.Contains(plain, []byte("secret")) {
		t.Errorf("plaintext copy not marked or altered: %q", plain)
	}
	if bytes.Contains(copyFor(t, f, "alice@example.org"), []byte("secret")) {
		t.Error("alice's copy holds plaintext")
	}
}

func TestRolloverEitherKeyDecrypts(t *testing.T) {
	oldKey := smimetest.NewRecipient(t, "alice@example.org", smimetest.KeyName("alice-old"))
	newKey := smimetest.NewRecipient(t, "alice@example.org", smimetest.KeyName("alice-new"))
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, certDir(t, oldKey, newKey))}})
	m := msg("roll", "rollover\r\n")
	if got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"alice@example.org"}, m); got["alice@example.org"].code != 250 {
		t.Fatal(got)
	}
	der := envelopeOf(t, copyFor(t, f, "alice@example.org"), oldKey, newKey)
	for _, r := range []*smimetest.Recipient{oldKey, newKey} {
		plain, err := smimetest.DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM)
		if err != nil || !bytes.Contains(plain, []byte("rollover")) {
			t.Errorf("key %s: %v", r.Cert.SerialNumber, err)
		}
	}
}

func TestUnusableCertificatesAreNotUsed(t *testing.T) {
	expired := smimetest.NewRecipient(t, "old@example.org", smimetest.Expired())
	wrong := smimetest.NewRecipient(t, "wrong@example.org", smimetest.WrongUsage())
	dir := certDir(t, expired, wrong)
	os.WriteFile(filepath.Join(dir, "garbage.pem"), []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "key.pem"), expired.KeyPEM, 0o600)
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, dir), Policy: Policy{Default: Tempfail}}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"old@example.org", "wrong@example.org"}, msg("u", "x\r\n"))
	for _, r := range []string{"old@example.org", "wrong@example.org"} {
		if got[r].code != 451 {
			t.Errorf("%s with an unusable certificate: got %v, want 451 4.7.0", r, got[r])
		}
	}
	if n := len(f.messages()); n != 0 {
		t.Errorf("%d messages delivered", n)
	}
}

func TestReloadAndWatch(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	bob := smimetest.NewRecipient(t, "bob@example.org")
	dir := certDir(t, alice)
	h := holder(t, dir)
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: h, Policy: Policy{Default: Tempfail}}})
	cl := lmtpClient(t, rf.path)
	if got := send(t, cl, "s@example.net", []string{"bob@example.org"}, msg("r1", "x\r\n")); got["bob@example.org"].code != 451 {
		t.Fatalf("before bob's certificate: %v, want 451", got)
	}
	// SIGHUP's path: an explicit reload.
	os.WriteFile(filepath.Join(dir, "bob.pem"), bob.CertPEM, 0o644)
	if err := h.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := send(t, cl, "s@example.net", []string{"bob@example.org"}, msg("r2", "x\r\n")); got["bob@example.org"].code != 250 {
		t.Fatalf("after reload: %v, want 250", got)
	}
	envelopeOf(t, copyFor(t, f, "bob@example.org"), bob)

	// The watcher's path: a file removed from the directory. A holder of
	// its own logs to a buffer, which says when the watch is in place.
	var logs lockedBuffer
	wh, err := certs.NewHolder(certs.Options{Dir: dir}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rf2 := startFilter(t, f.path, filterOpts{cfg: Config{Certs: wh, Policy: Policy{Default: Tempfail}}})
	cl = lmtpClient(t, rf2.path)
	ctx, cancel := contextWithCancel()
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { wh.Watch(ctx) })
	defer wg.Wait()
	defer cancel()
	waitFor(t, "the watch to start", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), "watching the certificate directory")
	})
	os.Remove(filepath.Join(dir, "bob.pem"))
	waitFor(t, "the watcher to drop bob's certificate", 10*time.Second, func() bool {
		return len(wh.Current().Lookup("bob@example.org")) == 0
	})
	if got := send(t, cl, "s@example.net", []string{"bob@example.org"}, msg("r3", "x\r\n")); got["bob@example.org"].code != 451 {
		t.Fatalf("after removal: %v, want 451", got)
	}
}

func TestLookupByRewrittenAddress(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	rw := mustRewriter(t, recipients.Rule{Match: `^(.*)@old\.example$`, Replace: `$1@example.org`})
	for _, tc := range []struct {
		rewritten bool
		want      int
	}{{false, 451}, {true, 250}} {
		f := startFakeLMTP(t)
		rf := startFilter(t, f.path, filterOpts{cfg: Config{Rewriter: rw, Certs: holder(t, certDir(t, alice)), LookupRewritten: tc.rewritten, Policy: Policy{Default: Tempfail}}})
		got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"alice@old.example"}, msg("lk", "x\r\n"))
		if got["alice@old.example"].code != tc.want {
			t.Errorf("LookupRewritten=%v: got %v, want %d", tc.rewritten, got, tc.want)
		}
	}
}

func TestHeaderProtectionAndOAEP(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{
		Certs: holder(t, certDir(t, alice)),
		SMIME: smime.Options{HeaderProtection: true, KeyTransport: smime.RSAOAEP},
	}})
	m := []byte("From: s@example.net\r\nTo: alice@example.org\r\nSubject: Secret subject\r\nMessage-ID: <hp@example.net>\r\n\r\nbody\r\n")
	if got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"alice@example.org"}, m); got["alice@example.org"].code != 250 {
		t.Fatal(got)
	}
	stored := copyFor(t, f, "alice@example.org")
	outer, _, _ := bytes.Cut(stored, []byte("\r\n\r\n"))
	if !bytes.Contains(outer, []byte("Subject: [...]\r\n")) || bytes.Contains(outer, []byte("Secret subject")) {
		t.Errorf("outer header still shows the subject:\n%s", outer)
	}
	plain, err := smimetest.DecryptOpenSSL(t, envelopeOf(t, stored, alice), alice.CertPEM, alice.KeyPEM)
	if err != nil {
		t.Fatalf("openssl cannot decrypt the OAEP envelope: %v", err)
	}
	if !bytes.Contains(plain, []byte(`hp="cipher"`)) || !bytes.Contains(plain, []byte("Subject: Secret subject")) {
		t.Errorf("inner part lacks RFC 9788 header protection:\n%s", plain)
	}
}

func TestUnknownUserBouncesBeforePolicy(t *testing.T) {
	f := startFakeLMTP(t)
	f.rcptAnswer = func(rcpt string) error {
		if strings.HasPrefix(rcpt, "ghost@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User doesn't exist"}
		}
		return nil
	}
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, certDir(t)), Policy: Policy{Default: Tempfail}}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"ghost@example.org", "known@example.org"}, msg("g", "x\r\n"))
	if g := got["ghost@example.org"]; g.code != 550 || g.enh != (smtp.EnhancedCode{5, 1, 1}) {
		t.Errorf("unknown user without certificate: got %v, want Dovecot's 550 5.1.1", g)
	}
	if g := got["known@example.org"]; g.code != 451 || g.enh != (smtp.EnhancedCode{4, 7, 0}) {
		t.Errorf("known user without certificate: got %v, want 451 4.7.0", g)
	}
	if st := rf.pool.Stats(); st.Open != 1 || st.Idle != 1 {
		t.Errorf("pool after verifying: %+v, want the one connection idle", st)
	}
}

func TestSubaddressUsesBaseCertificate(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, certDir(t, alice)), RecipientDelimiter: "+-", Policy: Policy{Default: Tempfail}}})
	got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"alice+lists@example.org", "alice-x@example.org", "bob+x@example.org"}, msg("sub", "x\r\n"))
	if got["alice+lists@example.org"].code != 250 || got["alice-x@example.org"].code != 250 {
		t.Errorf("subaddresses of alice: %v, want 250", got)
	}
	if got["bob+x@example.org"].code != 451 {
		t.Errorf("bob+x without any certificate: %v, want 451", got["bob+x@example.org"])
	}
	envelopeOf(t, copyFor(t, f, "alice+lists@example.org"), alice)
}

func TestStripDetail(t *testing.T) {
	for _, tc := range []struct{ in, delims, want string }{
		{"alice+x@example.org", "+", "alice@example.org"},
		{"alice+x+y@example.org", "+", "alice@example.org"},
		{"alice@example.org", "+", ""},
		{"+x@example.org", "+", ""},
		{"alice-x@example.org", "+-", "alice@example.org"},
		{"alice+x@example.org", "", ""},
	} {
		got, _ := stripDetail(tc.in, tc.delims)
		if got != tc.want {
			t.Errorf("stripDetail(%q, %q) = %q, want %q", tc.in, tc.delims, got, tc.want)
		}
	}
}

// TestManyCertificateSetsOneTransaction: recipients with 20 different
// certificates and one without are all delivered in the one transaction
// (no 452 to make the client try again later), over no more outbound
// connections than the pool allows; the message is encrypted once (every
// copy carries the same IV and content) and each copy names only its own
// recipient's certificate.
func TestManyCertificateSetsOneTransaction(t *testing.T) {
	const n = 20
	var rs []*smimetest.Recipient
	var addrs []string
	for i := range n {
		r := smimetest.NewRecipient(t, fmt.Sprintf("r%02d@example.org", i))
		rs = append(rs, r)
		addrs = append(addrs, r.Addr)
	}
	addrs = append(addrs, "plain@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{
		cfg:  Config{Certs: holder(t, certDir(t, rs...)), SpoolMemory: 4096, SpoolDir: t.TempDir()},
		pool: deliver.PoolOptions{MaxConns: 2},
	})
	body := strings.Repeat("twenty copies, one encryption\r\n", 1000)
	got := send(t, lmtpClient(t, rf.path), "s@example.net", addrs, msg("fan-out", body))
	for _, a := range addrs {
		if got[a].code != 250 {
			t.Errorf("%s: got %v, want 250 in the first transaction", a, got[a])
		}
	}
	if d := f.dials.Load(); d > 2 {
		t.Errorf("the pool dialled %d connections, want at most 2", d)
	}
	var iv []byte
	for _, r := range rs {
		der := envelopeOf(t, copyFor(t, f, r.Addr), r)
		env, err := smimetest.ParseEnvelope(der)
		if err != nil {
			t.Fatal(err)
		}
		if iv != nil && !bytes.Equal(env.IV, iv) {
			t.Errorf("%s: IV %x differs from the first copy's %x: the message was encrypted again", r.Addr, env.IV, iv)
		}
		iv = env.IV
		plain, err := smimetest.DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM)
		if err != nil || !bytes.HasSuffix(plain, []byte(body)) {
			t.Errorf("%s: decrypted %d bytes (%v), want the body", r.Addr, len(plain), err)
		}
	}
	if p := copyFor(t, f, "plain@example.org"); !bytes.HasSuffix(p, []byte(body)) || !bytes.HasPrefix(p, []byte(PlaintextHeader+": plaintext")) {
		t.Errorf("plaintext copy: %.200q", p)
	}
}

func TestClaimedEncryptionIsVerified(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, certDir(t, alice))}})
	// Labelled as S/MIME enveloped data, but the body is plain text: storing
	// it unchanged would leave plaintext at rest.
	m := []byte("From: s@example.net\r\nTo: alice@example.org\r\nSubject: fake\r\n" +
		"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\nthe secret is 42\r\n")
	if got := send(t, lmtpClient(t, rf.path), "s@example.net", []string{"alice@example.org"}, m); got["alice@example.org"].code != 250 {
		t.Fatal(got)
	}
	stored := copyFor(t, f, "alice@example.org")
	if bytes.Contains(stored, []byte("secret is 42")) {
		t.Fatal("a message only claiming to be encrypted was stored in plaintext")
	}
	plain, err := smimetest.DecryptOpenSSL(t, envelopeOf(t, stored, alice), alice.CertPEM, alice.KeyPEM)
	if err != nil || !bytes.HasSuffix(plain, []byte("\r\n\r\nthe secret is 42\r\n")) {
		t.Errorf("decrypted %q, %v", plain, err)
	}
}

// TestLenientHeaders: headers a strict parser refuses but Postfix and
// Dovecot store are accepted (no 5xx), encrypted, and come back byte for
// byte: the outer fields outside, the rest (from the first line that is
// not a field) inside the envelope.
func TestLenientHeaders(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, certDir(t, alice))}})
	cl := lmtpClient(t, rf.path)
	for _, tc := range []struct {
		name, raw           string
		wantOuter, wantBody string // the outer header starts with wantOuter; the decrypted entity ends with wantBody
	}{
		{"mbox From_ line", "From s@example.net Mon Jun  2 10:00:00 2025\r\nSubject: a\r\n\r\nbody\r\n",
			"From s@example.net Mon Jun  2 10:00:00 2025\r\nSubject: a\r\n", "\r\n\r\nbody\r\n"},
		{"line that is not a field", "Subject: b\r\nTo: x@example.org,\r\ny@example.org\r\nContent-Type: text/plain\r\n\r\nbody\r\n",
			"Subject: b\r\nTo: x@example.org,\r\n", "\r\n\r\ny@example.org\r\nContent-Type: text/plain\r\n\r\nbody\r\n"},
		{"8-bit field name and NUL", "X-Gr\xfc\xdfe: 1\r\nSubject: c\x00d\r\n\r\nbody\r\n",
			"X-Gr\xfc\xdfe: 1\r\nSubject: c\x00d\r\n", "\r\n\r\nbody\r\n"},
	} {
		got := send(t, cl, "s@example.net", []string{"alice@example.org"}, []byte(tc.raw))
		if got["alice@example.org"].code != 250 {
			t.Errorf("%s: got %v, want 250", tc.name, got)
			continue
		}
		stored := copyFor(t, f, "alice@example.org")
		f.mu.Lock()
		f.msgs = nil
		f.mu.Unlock()
		if !bytes.HasPrefix(stored, []byte(tc.wantOuter)) {
			t.Errorf("%s: stored copy starts %.120q, want %q", tc.name, stored, tc.wantOuter)
		}
		plain, err := smimetest.DecryptOpenSSL(t, envelopeOf(t, stored, alice), alice.CertPEM, alice.KeyPEM)
		if err != nil || !bytes.HasSuffix(plain, []byte(tc.wantBody)) {
			t.Errorf("%s: decrypted %q (%v), want it to end with %q", tc.name, plain, err, tc.wantBody)
		}
	}
}

// TestFirstCopyStreams: a message's first encrypted copy goes to the next
// hop while the message still arrives, as a one-copy filter would: the
// outbound transaction is under way before the client ends its data.
func TestFirstCopyStreams(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, certDir(t, alice))}})
	c, cmd := rawSession(t, rf.path)
	cmd("LHLO postfix.test\r\n")
	cmd("MAIL FROM:<s@example.net>\r\n")
	cmd("RCPT TO:<alice@example.org>\r\n")
	if r := cmd("DATA\r\n"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %q", r)
	}
	body := strings.Repeat("streamed while it arrives\r\n", 5000)
	io.WriteString(c, "Subject: live\r\nContent-Type: text/plain\r\n\r\n"+body)
	waitFor(t, "the copy's transaction to start before the end of the data", 10*time.Second, func() bool {
		st := rf.pool.Stats()
		return st.Open == 1 && st.Idle == 0
	})
	if r := cmd(".\r\n"); !strings.HasPrefix(r, "250") {
		t.Fatalf("end of data: %q", r)
	}
	plain, err := smimetest.DecryptOpenSSL(t, envelopeOf(t, copyFor(t, f, "alice@example.org"), alice), alice.CertPEM, alice.KeyPEM)
	if err != nil || !bytes.HasSuffix(plain, []byte(body)) {
		t.Errorf("decrypted %d bytes (%v), want the body", len(plain), err)
	}
}
