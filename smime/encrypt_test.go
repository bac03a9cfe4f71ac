package smime_test

import (
	"bytes"
	"crypto/x509"
	"net/mail"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

// TestEncryptCorpus sends every corpus message that is not yet encrypted
// through Encrypt and has each real decryptor recover exactly the expected
// entity; signed entities must still verify afterwards.
func TestEncryptCorpus(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	decryptors := smimetest.Decryptors(t, r)
	ca := smimetest.DefaultCA(t)
	for _, m := range smimetest.Corpus(t) {
		if m.Encrypted {
			continue
		}
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			out := encryptMessage(t, m.Raw, []*x509.Certificate{r.Cert}, smime.Options{})
			checkOuter(t, m.Raw, out)
			der := envelopeOf(t, out)
			checkOnlyRecipients(t, der, r.Cert)
			for _, d := range decryptors {
				got, err := d.Decrypt(der)
				if err != nil {
					t.Errorf("%s: %v", d.Name, err)
					continue
				}
				if !bytes.Equal(got, m.Inner) {
					t.Errorf("%s: decrypted entity differs: %s", d.Name, diffAt(got, m.Inner))
					continue
				}
				if m.Signed {
					if err := smimetest.VerifySigned(t, got, ca); err != nil {
						t.Errorf("%s: signature no longer verifies after decryption: %v", d.Name, err)
					}
				}
			}
		})
	}
}

// checkOuter checks the outer header of an enveloped message against the
// original: RFC 5322 fields kept in order and byte for byte, Content-* and
// MIME-Version replaced by the S/MIME fields, and the body in base64 lines of
// at most 76 characters ending in CRLF.
func checkOuter(t testing.TB, orig, out []byte) {
	t.Helper()
	h := headerOf(t, orig)
	var want bytes.Buffer
	for _, f := range h.Fields {
		lower := strings.ToLower(f.Name)
		if strings.HasPrefix(lower, "content-") || lower == "mime-version" {
			continue
		}
		want.Write(f.Raw)
	}
	want.WriteString("MIME-Version: 1.0\r\n" +
		"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n" +
		" name=smime.p7m\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=smime.p7m\r\n" +
		"\r\n")
	header, body := splitMessage(t, out)
	if !bytes.Equal(header, want.Bytes()) {
		t.Errorf("outer header:\n%s\nwant:\n%s", header, want.Bytes())
	}
	checkBase64Lines(t, body)

	m, err := mail.ReadMessage(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("output does not parse as a message: %v", err)
	}
	if got := m.Header.Get("Content-Type"); !strings.HasPrefix(got, "application/pkcs7-mime; smime-type=enveloped-data;") {
		t.Errorf("Content-Type %q", got)
	}
}

func checkBase64Lines(t testing.TB, body []byte) {
	t.Helper()
	if !bytes.HasSuffix(body, []byte("\r\n")) {
		t.Errorf("base64 body does not end with CRLF")
	}
	lines := bytes.SplitAfter(body, []byte("\r\n"))
	for i, l := range lines {
		if len(l) == 0 {
			continue // after the final CRLF
		}
		if !bytes.HasSuffix(l, []byte("\r\n")) {
			t.Fatalf("line %d lacks CRLF: %q", i, l)
		}
		content := l[:len(l)-2]
		if bytes.ContainsAny(content, "\r\n") {
			t.Fatalf("line %d has a bare CR or LF", i)
		}
		last := i == len(lines)-1 || (i == len(lines)-2 && len(lines[len(lines)-1]) == 0)
		if len(content) > 76 || (!last && len(content) != 76) {
			t.Fatalf("line %d has %d characters, want 76 (at most 76 on the last)", i, len(content))
		}
	}
}

// checkOnlyRecipients checks that the envelope names exactly these
// certificates, in this order: nobody else's presence leaks.
func checkOnlyRecipients(t testing.TB, der []byte, certs ...*x509.Certificate) {
	t.Helper()
	ris, err := smimetest.RecipientsOf(der)
	if err != nil {
		t.Fatalf("RecipientsOf: %v", err)
	}
	if len(ris) != len(certs) {
		t.Fatalf("envelope has %d RecipientInfos %v, want %d", len(ris), ris, len(certs))
	}
	for i, c := range certs {
		if !ris[i].Is(c) {
			t.Errorf("RecipientInfo %d is %v, want issuer %q serial %x", i, ris[i], c.Issuer, c.SerialNumber)
		}
		if ris[i].Kind != "ktri" || ris[i].Version != 0 {
			t.Errorf("RecipientInfo %d: %s version %d, want ktri version 0", i, ris[i].Kind, ris[i].Version)
		}
	}
}

const sampleMessage = "Received: from mx.example.test by mail.example.test; Mon, 02 Jun 2025 10:00:01 +0000\r\n" +
	"From: Alice <alice@example.test>\r\n" +
	"To: Bob <bob@example.test>\r\n" +
	"Cc: Carol <carol@example.test>\r\n" +
	"Subject: The real subject\r\n" +
	"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n" +
	"Message-ID: <sample@example.test>\r\n" +
	"In-Reply-To: <parent@example.test>\r\n" +
	"References: <root@example.test>\r\n" +
	"\t<parent@example.test>\r\n" +
	"Keywords: secret, project\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"X-Spam-Score: 0.1\r\n" +
	"\r\n" +
	"Grüße,\r\nAlice\r\n"

// TestEncryptOuterHeader spells out the whole outer header for one message.
func TestEncryptOuterHeader(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	out := encryptMessage(t, []byte(sampleMessage), []*x509.Certificate{r.Cert}, smime.Options{})
	header, body := splitMessage(t, out)
	want := "Received: from mx.example.test by mail.example.test; Mon, 02 Jun 2025 10:00:01 +0000\r\n" +
		"From: Alice <alice@example.test>\r\n" +
		"To: Bob <bob@example.test>\r\n" +
		"Cc: Carol <carol@example.test>\r\n" +
		"Subject: The real subject\r\n" +
		"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n" +
		"Message-ID: <sample@example.test>\r\n" +
		"In-Reply-To: <parent@example.test>\r\n" +
		"References: <root@example.test>\r\n" +
		"\t<parent@example.test>\r\n" +
		"Keywords: secret, project\r\n" +
		"X-Spam-Score: 0.1\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n" +
		" name=smime.p7m\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=smime.p7m\r\n" +
		"\r\n"
	if string(header) != want {
		t.Errorf("outer header:\n%s\nwant:\n%s", header, want)
	}
	checkBase64Lines(t, body)
	got, err := smimetest.DecryptGo(t, envelopeOf(t, out), r.CertPEM, r.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	wantInner := "Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße,\r\nAlice\r\n"
	if string(got) != wantInner {
		t.Errorf("inner entity:\n%q\nwant:\n%q", got, wantInner)
	}
}

// TestEncryptHeaderProtection checks RFC 9788 output: outside, the subject
// is "[...]" and Keywords are gone; inside, the entity carries the real
// fields, HP-Outer copies of what is outside, and hp="cipher".
func TestEncryptHeaderProtection(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	out := encryptMessage(t, []byte(sampleMessage), []*x509.Certificate{r.Cert}, smime.Options{HeaderProtection: true})

	outer, err := mail.ReadMessage(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got := outer.Header.Get("Subject"); got != "[...]" {
		t.Errorf("outer Subject %q, want [...]", got)
	}
	if got := outer.Header["Keywords"]; got != nil {
		t.Errorf("outer Keywords %q, want none (hcp_baseline removes them)", got)
	}
	for _, name := range []string{"From", "To", "Cc", "Date", "Message-ID", "In-Reply-To", "References", "Received", "X-Spam-Score"} {
		if outer.Header.Get(name) == "" {
			t.Errorf("outer %s missing", name)
		}
	}
	if bytes.Contains(out, []byte("The real subject")) {
		t.Error("the real subject is visible outside the envelope")
	}

	got, err := smimetest.DecryptOpenSSL(t, envelopeOf(t, out), r.CertPEM, r.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	wantInner := "From: Alice <alice@example.test>\r\n" +
		"To: Bob <bob@example.test>\r\n" +
		"Cc: Carol <carol@example.test>\r\n" +
		"Subject: The real subject\r\n" +
		"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n" +
		"Message-ID: <sample@example.test>\r\n" +
		"In-Reply-To: <parent@example.test>\r\n" +
		"References: <root@example.test>\r\n" +
		"\t<parent@example.test>\r\n" +
		"Keywords: secret, project\r\n" +
		"HP-Outer: From: Alice <alice@example.test>\r\n" +
		"HP-Outer: To: Bob <bob@example.test>\r\n" +
		"HP-Outer: Cc: Carol <carol@example.test>\r\n" +
		"HP-Outer: Subject: [...]\r\n" +
		"HP-Outer: Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n" +
		"HP-Outer: Message-ID: <sample@example.test>\r\n" +
		"HP-Outer: In-Reply-To: <parent@example.test>\r\n" +
		"HP-Outer: References: <root@example.test>\r\n" +
		"\t<parent@example.test>\r\n" +
		"Content-Type: text/plain; charset=utf-8;\r\n" +
		" hp=\"cipher\"\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Grüße,\r\nAlice\r\n"
	if string(got) != wantInner {
		t.Errorf("inner entity:\n%s\nwant:\n%s", got, wantInner)
	}

	// What a receiving client parses: the inner part as a message.
	inner, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("inner entity does not parse: %v", err)
	}
	if s := inner.Header.Get("Subject"); s != "The real subject" {
		t.Errorf("inner Subject %q", s)
	}
	mt, params, err := mimeParse(inner.Header.Get("Content-Type"))
	if err != nil || mt != "text/plain" || params["hp"] != "cipher" || params["charset"] != "utf-8" {
		t.Errorf("inner Content-Type: %s %v %v, want text/plain with hp=cipher and charset utf-8", mt, params, err)
	}
}

// TestEncryptHeaderProtectionNoContentType: the default Content-Type inside
// carries hp="cipher" too.
func TestEncryptHeaderProtectionNoContentType(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	raw := "From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
	out := encryptMessage(t, []byte(raw), []*x509.Certificate{r.Cert}, smime.Options{HeaderProtection: true})
	got, err := smimetest.DecryptGo(t, envelopeOf(t, out), r.CertPEM, r.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	want := "From: a@example.test\r\n" +
		"Subject: hi\r\n" +
		"HP-Outer: From: a@example.test\r\n" +
		"HP-Outer: Subject: [...]\r\n" +
		"Content-Type: text/plain; charset=us-ascii; hp=\"cipher\"\r\n" +
		"\r\n" +
		"body\r\n"
	if string(got) != want {
		t.Errorf("inner entity:\n%q\nwant:\n%q", got, want)
	}
}

// TestEncryptTwoRecipients is a certificate rollover: the old and the new
// certificate of one address in one envelope, and either key decrypts it in
// every client.
func TestEncryptTwoRecipients(t *testing.T) {
	old := smimetest.NewRecipient(t, "dave@example.test", smimetest.KeyName("dave-old"))
	renewed := smimetest.NewRecipient(t, "dave@example.test", smimetest.KeyName("dave-new"))
	out := encryptMessage(t, []byte(sampleMessage), []*x509.Certificate{old.Cert, renewed.Cert}, smime.Options{})
	der := envelopeOf(t, out)
	checkOnlyRecipients(t, der, old.Cert, renewed.Cert)
	want := "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße,\r\nAlice\r\n"
	for _, r := range []*smimetest.Recipient{old, renewed} {
		for _, d := range smimetest.Decryptors(t, r) {
			got, err := d.Decrypt(der)
			if err != nil {
				t.Errorf("%s with key %s: %v", d.Name, r.Cert.SerialNumber, err)
			} else if string(got) != want {
				t.Errorf("%s with key %s: got %q", d.Name, r.Cert.SerialNumber, got)
			}
		}
	}
}

// TestEncryptOtherKeyFails: an envelope for Bob does not name Eve and her key
// does not open it.
func TestEncryptOtherKeyFails(t *testing.T) {
	bob := smimetest.NewRecipient(t, "bob@example.test")
	eve := smimetest.NewRecipient(t, "eve@example.test")
	der := envelopeOf(t, encryptMessage(t, []byte(sampleMessage), []*x509.Certificate{bob.Cert}, smime.Options{}))
	checkOnlyRecipients(t, der, bob.Cert)
	if got, err := smimetest.DecryptOpenSSL(t, der, eve.CertPEM, eve.KeyPEM); err == nil {
		t.Errorf("Eve's key decrypted Bob's envelope: %q", got)
	}
	if got, err := smimetest.DecryptGo(t, der, eve.CertPEM, eve.KeyPEM); err == nil {
		t.Errorf("Eve's key decrypted Bob's envelope (Go): %q", got)
	}
}

// TestEncryptOAEP: RSAES-OAEP with explicit SHA-256 parameters decrypts in
// OpenSSL's cms. NSS 3.87, gpgsm 2.2 and go.mozilla.org/pkcs7 do not support
// OAEP (smimetest.Decryptor.OAEP), so only OpenSSL is asked, and the Go
// library, which treats every RSA key transport as PKCS#1 v1.5, must fail
// rather than return garbage.
func TestEncryptOAEP(t *testing.T) {
	for _, bits := range []int{2048, 4096} {
		r := smimetest.NewRecipient(t, "oaep@example.test", smimetest.Bits(bits))
		der := envelopeOf(t, encryptMessage(t, []byte(sampleMessage), []*x509.Certificate{r.Cert}, smime.Options{KeyTransport: smime.RSAOAEP}))
		ris, err := smimetest.RecipientsOf(der)
		if err != nil {
			t.Fatal(err)
		}
		if len(ris) != 1 || ris[0].Version != 0 || !ris[0].Is(r.Cert) {
			t.Fatalf("RecipientInfos %v, want one ktri version 0 for the certificate", ris)
		}
		if got, want := ris[0].KeyEncryption.String(), "1.2.840.113549.1.1.7"; got != want {
			t.Errorf("key encryption %s, want id-RSAES-OAEP %s", got, want)
		}
		// RSAES-OAEP-params: [0] sha256 (absent parameters), [1] mgf1 with
		// sha256, pSourceAlgorithm omitted: byte for byte what OpenSSL writes.
		wantParams := []byte{
			0x30, 0x2b,
			0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
			0xa1, 0x1a, 0x30, 0x18, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
			0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
		}
		if !bytes.Equal(ris[0].KeyEncryptionParams, wantParams) {
			t.Errorf("OAEP parameters % x\nwant % x", ris[0].KeyEncryptionParams, wantParams)
		}
		if len(ris[0].EncryptedKey) != bits/8 {
			t.Errorf("encrypted key is %d bytes, want %d", len(ris[0].EncryptedKey), bits/8)
		}
		got, err := smimetest.DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM)
		if err != nil {
			t.Errorf("openssl cms, RSA %d: %v", bits, err)
		} else if !strings.HasSuffix(string(got), "\r\n\r\nGrüße,\r\nAlice\r\n") {
			t.Errorf("openssl cms, RSA %d: got %q", bits, got)
		}
		if _, err := smimetest.DecryptGo(t, der, r.CertPEM, r.KeyPEM); err == nil {
			t.Errorf("go.mozilla.org/pkcs7 claims to decrypt OAEP; update smimetest.Decryptor.OAEP")
		}
	}
}

// TestEncryptPKCS1v15AlgorithmIdentifier pins rsaEncryption with NULL
// parameters, the form every client reads.
func TestEncryptPKCS1v15AlgorithmIdentifier(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	der := envelopeOf(t, encryptMessage(t, []byte(sampleMessage), []*x509.Certificate{r.Cert}, smime.Options{}))
	ris, err := smimetest.RecipientsOf(der)
	if err != nil {
		t.Fatal(err)
	}
	if got := ris[0].KeyEncryption.String(); got != "1.2.840.113549.1.1.1" {
		t.Errorf("key encryption %s, want rsaEncryption", got)
	}
	if !bytes.Equal(ris[0].KeyEncryptionParams, []byte{0x05, 0x00}) {
		t.Errorf("parameters % x, want NULL", ris[0].KeyEncryptionParams)
	}
}
