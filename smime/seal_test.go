package smime_test

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

// sealMessage reads raw as the daemon does and seals it; it returns the seal
// and the ciphertext it wrote.
func sealMessage(t testing.TB, raw []byte, opts smime.Options) (*smime.Seal, *smime.Header, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := smime.ReadHeader(br, maxHeader)
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	var ct bytes.Buffer
	s, err := smime.NewSeal(&ct, h, opts)
	if err != nil {
		t.Fatalf("NewSeal: %v", err)
	}
	t.Cleanup(s.Destroy)
	// Odd-sized writes: blocks straddle them.
	buf := make([]byte, 1000)
	for {
		n, err := br.Read(buf)
		if _, werr := s.Write(buf[:n]); werr != nil {
			t.Fatalf("Write: %v", werr)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if int64(ct.Len()) != s.Size() {
		t.Fatalf("Size() = %d, wrote %d", s.Size(), ct.Len())
	}
	return s, h, ct.Bytes()
}

func copyFor(t testing.TB, s *smime.Seal, ct []byte, certs ...*x509.Certificate) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := s.WriteEnveloped(&out, bytes.NewReader(ct), certs); err != nil {
		t.Fatalf("WriteEnveloped: %v", err)
	}
	return out.Bytes()
}

// TestSealCorpus: every corpus message is encrypted once, and each copy made
// from that one ciphertext names only its own recipient, has the outer header
// Encrypt writes, and decrypts in OpenSSL, NSS, gpgsm and Go to exactly the
// expected entity (signed ones still verify). OpenBody gives back the body.
func TestSealCorpus(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	bob := smimetest.NewRecipient(t, "bob@example.test")
	decryptors := map[*smimetest.Recipient][]smimetest.Decryptor{
		alice: smimetest.Decryptors(t, alice),
		bob:   smimetest.Decryptors(t, bob),
	}
	ca := smimetest.DefaultCA(t)
	for _, m := range smimetest.Corpus(t) {
		if m.Encrypted {
			continue
		}
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			s, h, ct := sealMessage(t, m.Raw, smime.Options{})
			rs := []*smimetest.Recipient{alice, bob}
			if m.Large {
				// TestEncryptCorpus runs it through every decryptor; here
				// one copy and OpenSSL show the seal streams it whole.
				rs = rs[:1]
			}
			for _, r := range rs {
				out := copyFor(t, s, ct, r.Cert)
				checkOuter(t, m.Raw, out)
				der := envelopeOf(t, out)
				checkOnlyRecipients(t, der, r.Cert)
				for _, d := range decryptors[r] {
					if m.Large && d.Name != "openssl" {
						continue
					}
					got, err := d.Decrypt(der)
					if err != nil {
						t.Errorf("%s for %s: %v", d.Name, r.Addr, err)
						continue
					}
					if !bytes.Equal(got, m.Inner) {
						t.Errorf("%s for %s: decrypted entity differs: %s", d.Name, r.Addr, diffAt(got, m.Inner))
						continue
					}
					if m.Signed {
						if err := smimetest.VerifySigned(t, got, ca); err != nil {
							t.Errorf("%s: signature no longer verifies: %v", d.Name, err)
						}
					}
				}
			}
			body, err := s.OpenBody(bytes.NewReader(ct))
			if err != nil {
				t.Fatal(err)
			}
			var back bytes.Buffer
			h.WriteTo(&back)
			if _, err := io.Copy(&back, body); err != nil {
				t.Fatalf("reading OpenBody: %v", err)
			}
			if !bytes.Equal(back.Bytes(), m.Raw) {
				t.Errorf("header + OpenBody differs from the message: %s", diffAt(back.Bytes(), m.Raw))
			}
		})
	}
}

// TestSealSameAsEncrypt: a copy made from a seal decrypts to what Encrypt's
// one-shot copy decrypts to, for every header shape (header protection, a
// line that is not a field, an mbox From_ line, bare LF, header only), with
// small segments so that many OCTET STRINGs are written.
func TestSealSameAsEncrypt(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	msgs := map[string]string{
		"plain":           "From: a@example.test\r\nSubject: s\r\n\r\n" + strings.Repeat("line of text\r\n", 3000),
		"not a field":     "From: a@example.test\r\nTo: b@example.test,\r\nc@example.test\r\nSubject: s\r\n\r\nbody\r\n",
		"mbox From_ line": "From a@example.test Mon Jun  2 10:00:00 2025\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nbody",
		"bare LF":         "Subject: s\nContent-Type: text/plain\n\nbody\n",
		"header only":     "Subject: s\r\nContent-Type: text/plain",
		"empty":           "",
		"exact block":     "A: 1\r\n\r\n0123456789abcdef",
	}
	for name, raw := range msgs {
		for _, hp := range []bool{false, true} {
			opts := smime.Options{HeaderProtection: hp, SegmentSize: 4096}
			s, h, ct := sealMessage(t, []byte(raw), opts)
			sealed, err := smimetest.DecryptMessage(t, copyFor(t, s, ct, r.Cert), r)
			if err != nil {
				t.Fatalf("%s (hp %v): decrypting the sealed copy: %v", name, hp, err)
			}
			once, err := smimetest.DecryptMessage(t, encryptMessage(t, []byte(raw), []*x509.Certificate{r.Cert}, opts), r)
			if err != nil {
				t.Fatalf("%s (hp %v): decrypting Encrypt's copy: %v", name, hp, err)
			}
			if !bytes.Equal(sealed, once) {
				t.Errorf("%s (hp %v): sealed copy decrypts differently from Encrypt's: %s", name, hp, diffAt(sealed, once))
			}
			body, err := s.OpenBody(bytes.NewReader(ct))
			if err != nil {
				t.Fatal(err)
			}
			var back bytes.Buffer
			h.WriteTo(&back)
			io.Copy(&back, body)
			if back.String() != raw {
				t.Errorf("%s (hp %v): header + OpenBody = %q, want the message", name, hp, back.String())
			}
		}
	}
}

// TestSealCopiesShareCiphertext: the copies carry the very same encrypted
// content; only the RecipientInfos differ.
func TestSealCopiesShareCiphertext(t *testing.T) {
	a := smimetest.NewRecipient(t, "a@example.test")
	b := smimetest.NewRecipient(t, "b@example.test")
	s, _, ct := sealMessage(t, []byte("Subject: s\r\n\r\n"+strings.Repeat("x", 200000)), smime.Options{})
	derA := envelopeOf(t, copyFor(t, s, ct, a.Cert))
	derB := envelopeOf(t, copyFor(t, s, ct, b.Cert, a.Cert))
	ea, err := smimetest.ParseEnvelope(derA)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := smimetest.ParseEnvelope(derB)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ea.IV, eb.IV) || !slices.Equal(ea.Segments, eb.Segments) {
		t.Errorf("copies differ in IV (%x, %x) or segments (%v, %v)", ea.IV, eb.IV, ea.Segments, eb.Segments)
	}
	// Each segment of the sealed ciphertext appears in both copies.
	for off := 0; off < len(ct); off += 64 << 10 {
		seg := ct[off:min(len(ct), off+64<<10)]
		if !bytes.Contains(derA, seg) || !bytes.Contains(derB, seg) {
			t.Fatalf("segment at %d of the sealed ciphertext missing from a copy", off)
		}
	}
	if len(ea.Recipients) != 1 || len(eb.Recipients) != 2 {
		t.Errorf("got %d and %d RecipientInfos, want 1 and 2", len(ea.Recipients), len(eb.Recipients))
	}
}

// TestSealMisuse: a copy needs a closed, living seal and exactly the
// ciphertext it wrote.
func TestSealMisuse(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	s, _, ct := sealMessage(t, []byte("Subject: s\r\n\r\nbody"+strings.Repeat("y", 100)), smime.Options{})
	for name, src := range map[string][]byte{
		"short": ct[:len(ct)-16],
		"long":  append(append([]byte(nil), ct...), 0),
	} {
		if err := s.WriteEnveloped(io.Discard, bytes.NewReader(src), []*x509.Certificate{r.Cert}); err == nil {
			t.Errorf("%s ciphertext: WriteEnveloped succeeded", name)
		}
	}
	if err := s.WriteEnveloped(io.Discard, bytes.NewReader(ct), nil); !errors.Is(err, smime.ErrNoRecipients) {
		t.Errorf("no recipients: got %v, want ErrNoRecipients", err)
	}
	open := func() error { _, err := s.OpenBody(bytes.NewReader(ct)); return err }
	s.Destroy()
	if err := s.WriteEnveloped(io.Discard, bytes.NewReader(ct), []*x509.Certificate{r.Cert}); err == nil {
		t.Error("WriteEnveloped after Destroy succeeded")
	}
	if open() == nil {
		t.Error("OpenBody after Destroy succeeded")
	}

	var buf bytes.Buffer
	h := headerOf(t, []byte("Subject: s\r\n\r\n"))
	unclosed, err := smime.NewSeal(&buf, h, smime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer unclosed.Destroy()
	if err := unclosed.WriteEnveloped(io.Discard, &buf, []*x509.Certificate{r.Cert}); err == nil {
		t.Error("WriteEnveloped before Close succeeded")
	}
}
