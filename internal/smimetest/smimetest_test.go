package smimetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewRecipientDefaults(t *testing.T) {
	r := NewRecipient(t, "alice@example.test")
	c := r.Cert
	if len(c.EmailAddresses) != 1 || c.EmailAddresses[0] != "alice@example.test" {
		t.Errorf("SAN rfc822Name %q", c.EmailAddresses)
	}
	if c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Errorf("keyUsage %b lacks keyEncipherment", c.KeyUsage)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageEmailProtection {
		t.Errorf("extKeyUsage %v", c.ExtKeyUsage)
	}
	if k, ok := c.PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
		t.Errorf("public key %T, want RSA 2048", c.PublicKey)
	}
	roots := x509.NewCertPool()
	roots.AddCert(r.CA.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
		t.Errorf("does not verify against its CA: %v", err)
	}
	if _, _, err := parsePair(r.CertPEM, r.KeyPEM); err != nil {
		t.Errorf("PEM files: %v", err)
	}
}

func TestRecipientOptions(t *testing.T) {
	now := time.Now()
	check := func(name string, ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Errorf("%s: "+format, append([]any{name}, args...)...)
		}
	}
	c := NewRecipient(t, "old@example.test", Expired()).Cert
	check("Expired", c.NotAfter.Before(now), "NotAfter %v", c.NotAfter)
	c = NewRecipient(t, "future@example.test", NotYetValid()).Cert
	check("NotYetValid", c.NotBefore.After(now), "NotBefore %v", c.NotBefore)
	c = NewRecipient(t, "web@example.test", WrongUsage()).Cert
	check("WrongUsage", c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 && c.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth, "%b %v", c.KeyUsage, c.ExtKeyUsage)
	c = NewRecipient(t, "any@example.test", NoUsageExtensions()).Cert
	check("NoUsageExtensions", c.KeyUsage == 0 && len(c.ExtKeyUsage) == 0, "%b %v", c.KeyUsage, c.ExtKeyUsage)
	c = NewRecipient(t, "legacy@example.test", DNEmailOnly()).Cert
	check("DNEmailOnly", len(c.EmailAddresses) == 0 && strings.Contains(c.Subject.String(), "legacy@example.test"), "SAN %v subject %v", c.EmailAddresses, c.Subject)
	c = NewRecipient(t, "multi@example.test", AlsoFor("alias@example.test")).Cert
	check("AlsoFor", len(c.EmailAddresses) == 2 && c.EmailAddresses[1] == "alias@example.test", "SAN %v", c.EmailAddresses)
	r := NewRecipient(t, "ec@example.test", ECKey())
	_, isEC := r.Cert.PublicKey.(*ecdsa.PublicKey)
	check("ECKey", isEC, "public key %T", r.Cert.PublicKey)
	c = NewRecipient(t, "big@example.test", Bits(4096)).Cert
	check("Bits(4096)", c.PublicKey.(*rsa.PublicKey).N.BitLen() == 4096, "%d bits", c.PublicKey.(*rsa.PublicKey).N.BitLen())
}

// TestKeyCache: keys are shared by name only, so tests that need a foreign
// key still get one.
func TestKeyCache(t *testing.T) {
	a1 := NewRecipient(t, "cache-a@example.test")
	a2 := NewRecipient(t, "cache-a@example.test")
	b := NewRecipient(t, "cache-b@example.test")
	renewed := NewRecipient(t, "cache-a@example.test", KeyName("cache-a-2026"))
	same := func(x, y *Recipient) bool {
		return x.Cert.PublicKey.(*rsa.PublicKey).Equal(y.Cert.PublicKey)
	}
	if !same(a1, a2) {
		t.Error("the same address got two keys")
	}
	if same(a1, b) || same(a1, renewed) {
		t.Error("different key names share a key")
	}
	if a1.Cert.SerialNumber.Cmp(a2.Cert.SerialNumber) == 0 {
		t.Error("two certificates with one serial number")
	}
}

// TestPKCS12Legacy: the file uses the encryption gpgsm 2.2 can read.
func TestPKCS12Legacy(t *testing.T) {
	Require(t, "openssl")
	r := NewRecipient(t, "p12@example.test")
	// openssl prints the -info details on stderr.
	out, info, err := runFull(nil, nil, "openssl", "pkcs12", "-info", "-noout", "-in", r.PKCS12File(t), "-passin", "pass:"+P12Password)
	if err != nil {
		t.Fatal(err)
	}
	all := string(out) + string(info)
	for _, want := range []string{"MAC: sha1", "pbeWithSHA1And3-KeyTripleDES-CBC"} {
		if !strings.Contains(all, want) {
			t.Errorf("openssl pkcs12 -info lacks %q:\n%s", want, all)
		}
	}
}

// TestDecryptorsAgainstOpenSSL checks the decryptors themselves on
// envelopes made by openssl, not by the code they are meant to test, and
// that a key the envelope is not for fails in every one of them.
func TestDecryptorsAgainstOpenSSL(t *testing.T) {
	Require(t, "openssl")
	bob := NewRecipient(t, "bob@example.test")
	eve := NewRecipient(t, "eve@example.test")
	dir := t.TempDir()
	cert, _ := bob.WriteFiles(t, dir)
	in := filepath.Join(dir, "in")
	plain := []byte("Content-Type: text/plain\r\n\r\nbinary \x00\xff and CRLF\r\n")
	if err := os.WriteFile(in, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	// One NSS database and gpgsm home per key, for both envelopes.
	bobs, eves := Decryptors(t, bob), Decryptors(t, eve)
	for _, stream := range []bool{false, true} {
		args := []string{"cms", "-encrypt", "-aes256", "-binary", "-outform", "DER", "-in", in}
		if stream {
			args = append(args, "-stream")
		}
		der, err := run(nil, nil, "openssl", append(args, cert)...)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range bobs {
			got, err := d.Decrypt(der)
			if err != nil || !bytes.Equal(got, plain) {
				t.Errorf("stream %v, %s: %q, %v", stream, d.Name, got, err)
			}
		}
		for _, d := range eves {
			if got, err := d.Decrypt(der); err == nil {
				t.Errorf("stream %v, %s: Eve's key decrypted Bob's envelope: %q", stream, d.Name, got)
			}
		}
	}
}

func TestOneShotDecryptors(t *testing.T) {
	Require(t, "openssl")
	r := NewRecipient(t, "bob@example.test")
	dir := t.TempDir()
	cert, _ := r.WriteFiles(t, dir)
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, []byte("one shot"), 0o600); err != nil {
		t.Fatal(err)
	}
	der, err := run(nil, nil, "openssl", "cms", "-encrypt", "-aes256", "-binary", "-outform", "DER", "-in", in, cert)
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() ([]byte, error){
		"openssl": func() ([]byte, error) { return DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM) },
		"nss":     func() ([]byte, error) { return DecryptNSS(t, der, r.PKCS12(t)) },
		"gpgsm":   func() ([]byte, error) { return DecryptGpgsm(t, der, r.PKCS12(t)) },
		"go":      func() ([]byte, error) { return DecryptGo(t, der, r.CertPEM, r.KeyPEM) },
	} {
		if got, err := f(); err != nil || string(got) != "one shot" {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
}

func TestDecryptMessage(t *testing.T) {
	Require(t, "openssl")
	r := NewRecipient(t, "bob@example.test")
	dir := t.TempDir()
	cert, _ := r.WriteFiles(t, dir)
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, []byte("Content-Type: text/plain\r\n\r\nhi\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	msg, err := run(nil, nil, "openssl", "smime", "-encrypt", "-aes256", "-binary", "-in", in, "-subject", "x", cert)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecryptMessage(t, msg, r)
	if err != nil || string(got) != "Content-Type: text/plain\r\n\r\nhi\r\n" {
		t.Errorf("got %q, %v", got, err)
	}
}

func TestParseEnvelope(t *testing.T) {
	Require(t, "openssl")
	a := NewRecipient(t, "a@example.test")
	b := NewRecipient(t, "b@example.test")
	dir := t.TempDir()
	certA, _ := a.WriteFiles(t, filepath.Join(dir))
	sub := filepath.Join(dir, "b")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	certB, _ := b.WriteFiles(t, sub)
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, bytes.Repeat([]byte("x"), 3000), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, stream := range []bool{false, true} {
		args := []string{"cms", "-encrypt", "-aes256", "-binary", "-outform", "DER", "-in", in}
		if stream {
			args = append(args, "-stream")
		}
		der, err := run(nil, nil, "openssl", append(args, certA, certB)...)
		if err != nil {
			t.Fatal(err)
		}
		env, err := ParseEnvelope(der)
		if err != nil {
			t.Fatalf("stream %v: %v", stream, err)
		}
		if env.Indefinite != stream || env.Version != 0 || len(env.IV) != 16 {
			t.Errorf("stream %v: indefinite %v version %d IV %d", stream, env.Indefinite, env.Version, len(env.IV))
		}
		if env.ContentEncryption.String() != "2.16.840.1.101.3.4.1.42" {
			t.Errorf("cipher %v", env.ContentEncryption)
		}
		total := 0
		for _, s := range env.Segments {
			total += s
		}
		if total != 3008 {
			t.Errorf("stream %v: %d ciphertext bytes in %v, want 3008", stream, total, env.Segments)
		}
		// openssl sorts the SET OF RecipientInfo by encoding, so the order
		// is not that of the command line.
		ris := env.Recipients
		if len(ris) != 2 || !(ris[0].Is(a.Cert) && ris[1].Is(b.Cert) || ris[0].Is(b.Cert) && ris[1].Is(a.Cert)) {
			t.Errorf("recipients %v, want a's and b's certificates", ris)
		}
		if got := env.Recipients[0].Issuer; !strings.Contains(got, "smimetest CA") {
			t.Errorf("issuer %q", got)
		}
	}
}

func TestParseEnvelopeRejects(t *testing.T) {
	for name, der := range map[string][]byte{
		"empty":            nil,
		"garbage":          []byte("hello world"),
		"signed-data":      {0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80, 0x00, 0x00, 0x00, 0x00},
		"unterminated BER": {0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0, 0x80},
		"length too long":  {0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00},
		"deep nesting":     bytes.Repeat([]byte{0x30, 0x80}, 100),
	} {
		if _, err := ParseEnvelope(der); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestExtractDER(t *testing.T) {
	payload := []byte{0x30, 0x80, 0x01, 0x02, 0xff}
	b64 := base64Lines(payload)
	good := map[string]string{
		"top level": "Subject: x\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\n" + b64,
		"x-pkcs7-mime, LF": "Content-Type: application/x-pkcs7-mime\nContent-Transfer-Encoding: base64\n\n" + strings.ReplaceAll(b64, "\r\n", "\n"),
		"in a multipart": "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n" +
			"--b\r\nContent-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64 + "--b--\r\n",
	}
	for name, msg := range good {
		der, err := ExtractDER([]byte(msg))
		if err != nil || !bytes.Equal(der, payload) {
			t.Errorf("%s: % x, %v", name, der, err)
		}
	}
	bad := map[string]string{
		"no pkcs7 part": "Content-Type: text/plain\r\n\r\nhello\r\n",
		"bad base64":    "Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
		"not a message": "no header here",
	}
	for name, msg := range bad {
		if der, err := ExtractDER([]byte(msg)); err == nil {
			t.Errorf("%s: got % x, want an error", name, der)
		}
	}
}

// TestCorpus checks the corpus itself: CRLF only, parseable, unique names,
// signed messages that verify as they are and fail when altered, encrypted
// S/MIME messages whose envelopes parse.
func TestCorpus(t *testing.T) {
	msgs := Corpus(t)
	seen := map[string]bool{}
	large := false
	for _, m := range msgs {
		if seen[m.Name] {
			t.Errorf("duplicate name %s", m.Name)
		}
		seen[m.Name] = true
		large = large || m.Large
		for i, c := range m.Raw {
			if c == '\n' && (i == 0 || m.Raw[i-1] != '\r') {
				t.Errorf("%s: bare LF at byte %d", m.Name, i)
				break
			}
		}
		if _, err := mail.ReadMessage(bytes.NewReader(m.Raw)); err != nil {
			t.Errorf("%s: does not parse: %v", m.Name, err)
		}
		if (m.Inner == nil) != m.Encrypted {
			t.Errorf("%s: Inner set %v, Encrypted %v", m.Name, m.Inner != nil, m.Encrypted)
		}
		if m.Encrypted && strings.HasPrefix(m.Name, "smime-") {
			der, err := ExtractDER(m.Raw)
			if err != nil {
				t.Errorf("%s: %v", m.Name, err)
				continue
			}
			if strings.Contains(m.Name, "authenveloped") {
				continue // AuthEnvelopedData is not EnvelopedData
			}
			ris, err := RecipientsOf(der)
			if err != nil || len(ris) != 1 {
				t.Errorf("%s: recipients %v, %v", m.Name, ris, err)
			}
		}
	}
	if large == testing.Short() {
		t.Errorf("large message present %v with -short %v", large, testing.Short())
	}
	if n := len(msgs); n < 20 {
		t.Errorf("only %d messages", n)
	}
}

func TestCorpusSignedVerify(t *testing.T) {
	ca := DefaultCA(t)
	for _, m := range Corpus(t) {
		if !m.Signed {
			continue
		}
		if err := VerifySigned(t, m.Inner, ca); err != nil {
			t.Errorf("%s: the entity does not verify before any encryption: %v", m.Name, err)
		}
		if err := VerifySigned(t, m.Raw, ca); err != nil {
			t.Errorf("%s: the message does not verify: %v", m.Name, err)
		}
		if m.Name != "multipart-signed" {
			continue
		}
		// One changed byte in the signed text, or a re-encoded line ending,
		// must break it: that is what VerifySigned is for.
		for _, tamper := range []func([]byte) []byte{
			func(b []byte) []byte { return bytes.Replace(b, []byte("Signed, then"), []byte("Signed. then"), 1) },
			func(b []byte) []byte {
				return bytes.Replace(b, []byte("signatures. \r\n"), []byte("signatures.\r\n"), 1)
			},
		} {
			altered := tamper(bytes.Clone(m.Inner))
			if bytes.Equal(altered, m.Inner) {
				t.Fatal("tampering changed nothing; the corpus text moved")
			}
			if err := VerifySigned(t, altered, ca); err == nil {
				t.Error("an altered signed entity still verifies")
			}
		}
	}
}

func TestCorpusLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large message skipped with -short")
	}
	for _, m := range Corpus(t) {
		if !m.Large {
			continue
		}
		if len(m.Raw) < LargeAttachmentSize*4/3 {
			t.Errorf("%s is %d bytes, want the base64 of %d", m.Name, len(m.Raw), LargeAttachmentSize)
		}
		if !bytes.HasSuffix(m.Inner, []byte("--large-boundary--\r\n")) {
			t.Errorf("%s: Inner does not end with the closing boundary", m.Name)
		}
		return
	}
	t.Error("no large message")
}

// fakeTB records Skip and Fatal instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper()                      {}
func (f *fakeTB) Skip(args ...any)             { f.skipped = true; f.msg = fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any)            { f.failed = true; f.msg = fmt.Sprint(args...) }
func (f *fakeTB) Skipf(s string, args ...any)  { f.Skip(fmt.Sprintf(s, args...)) }
func (f *fakeTB) Fatalf(s string, args ...any) { f.Fatal(fmt.Sprintf(s, args...)) }

func TestRequire(t *testing.T) {
	const missing = "smimetest-no-such-tool"
	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	Require(f, missing)
	if !f.skipped || f.failed {
		t.Errorf("laptop: skipped %v failed %v", f.skipped, f.failed)
	}
	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	Require(f, missing)
	if f.skipped || !f.failed || !strings.Contains(f.msg, missing) {
		t.Errorf("CI: skipped %v failed %v %q", f.skipped, f.failed, f.msg)
	}
	f = &fakeTB{TB: t}
	if _, err := exec.LookPath("sh"); err == nil {
		Require(f, "sh")
		if f.skipped || f.failed {
			t.Error("a present tool was reported missing")
		}
	}
}
