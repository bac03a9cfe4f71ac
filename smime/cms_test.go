package smime_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

func envelope(t testing.TB, plain []byte, certs []*x509.Certificate, opts smime.Options, chunk int) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := smime.NewEnvelopedWriter(&out, certs, opts)
	if err != nil {
		t.Fatal(err)
	}
	for p := plain; len(p) > 0; {
		n := min(chunk, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// TestEnvelopeStructure checks the BER layout around every segment and
// block boundary, with writes of odd sizes: openssl cms -stream's shape,
// PKCS#7 padding of 1 to 16 bytes, and the plaintext back.
func TestEnvelopeStructure(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	const seg = 64
	for _, size := range []int{0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000} {
		for _, chunk := range []int{1, 7, 64, 100, 4096} {
			plain := pattern(size)
			der := envelope(t, plain, []*x509.Certificate{r.Cert}, smime.Options{SegmentSize: seg}, chunk)

			prefix := []byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00, 0x31}
			if !bytes.HasPrefix(der, prefix) {
				t.Fatalf("size %d: prefix % x, want % x", size, der[:len(prefix)], prefix)
			}
			if !bytes.HasSuffix(der, make([]byte, 10)) {
				t.Fatalf("size %d: does not end with five end-of-contents pairs", size)
			}
			env, err := smimetest.ParseEnvelope(der)
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			if !env.Indefinite || !env.Constructed || env.Version != 0 {
				t.Errorf("size %d: indefinite %v, constructed %v, version %d", size, env.Indefinite, env.Constructed, env.Version)
			}
			if env.ContentType.String() != "1.2.840.113549.1.7.1" || env.ContentEncryption.String() != "2.16.840.1.101.3.4.1.42" || len(env.IV) != 16 {
				t.Errorf("size %d: content %v, cipher %v, IV %d bytes", size, env.ContentType, env.ContentEncryption, len(env.IV))
			}
			padded := (size/16 + 1) * 16
			total := 0
			for i, s := range env.Segments {
				total += s
				if i < len(env.Segments)-1 && s != seg {
					t.Errorf("size %d: segment %d is %d bytes, want %d", size, i, s, seg)
				}
				if s == 0 || s%16 != 0 || s > seg {
					t.Errorf("size %d: segment %d is %d bytes", size, i, s)
				}
			}
			if total != padded {
				t.Errorf("size %d: %d bytes of ciphertext, want %d", size, total, padded)
			}
			got, err := smimetest.DecryptGo(t, der, r.CertPEM, r.KeyPEM)
			if err != nil {
				t.Fatalf("size %d chunk %d: %v", size, chunk, err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("size %d chunk %d: %s", size, chunk, diffAt(got, plain))
			}
		}
	}
}

// TestEnvelopeSizesInterop: sizes around the default 64 KiB segment decrypt
// in every client.
func TestEnvelopeSizesInterop(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	decryptors := smimetest.Decryptors(t, r)
	for _, size := range []int{0, 1, 65535, 65536, 65537, 3*65536 + 5} {
		plain := pattern(size)
		der := envelope(t, plain, []*x509.Certificate{r.Cert}, smime.Options{}, 10000)
		for _, d := range decryptors {
			got, err := d.Decrypt(der)
			if err != nil {
				t.Errorf("size %d, %s: %v", size, d.Name, err)
			} else if !bytes.Equal(got, plain) {
				t.Errorf("size %d, %s: %s", size, d.Name, diffAt(got, plain))
			}
		}
	}
}

// TestEnvelopeShapeMatchesOpenSSL compares the tag structure of our output
// with `openssl cms -encrypt -stream` for the same certificate: the same
// nesting, the same indefinite lengths, the same primitive segments.
func TestEnvelopeShapeMatchesOpenSSL(t *testing.T) {
	smimetest.Require(t, "openssl")
	r := smimetest.NewRecipient(t, "bob@example.test")
	dir := t.TempDir()
	cert, _ := r.WriteFiles(t, dir)
	in := filepath.Join(dir, "in")
	plain := pattern(5000)
	if err := os.WriteFile(in, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	ref, err := exec.Command("openssl", "cms", "-encrypt", "-stream", "-aes256", "-binary", "-outform", "DER", "-in", in, cert).Output()
	if err != nil {
		t.Fatal(err)
	}
	ours := envelope(t, plain, []*x509.Certificate{r.Cert}, smime.Options{}, 4096)
	refEnv, err := smimetest.ParseEnvelope(ref)
	if err != nil {
		t.Fatal(err)
	}
	ourEnv, err := smimetest.ParseEnvelope(ours)
	if err != nil {
		t.Fatal(err)
	}
	if refEnv.Indefinite != ourEnv.Indefinite || refEnv.Version != ourEnv.Version || refEnv.Constructed != ourEnv.Constructed ||
		!refEnv.ContentEncryption.Equal(ourEnv.ContentEncryption) || !refEnv.ContentType.Equal(ourEnv.ContentType) {
		t.Errorf("ours %+v\nopenssl %+v", ourEnv, refEnv)
	}
	if len(refEnv.Recipients) != 1 || len(ourEnv.Recipients) != 1 {
		t.Fatalf("recipients: ours %v, openssl %v", ourEnv.Recipients, refEnv.Recipients)
	}
	a, b := refEnv.Recipients[0], ourEnv.Recipients[0]
	if !bytes.Equal(a.RawIssuer, b.RawIssuer) || a.Serial.Cmp(b.Serial) != 0 || !a.KeyEncryption.Equal(b.KeyEncryption) ||
		!bytes.Equal(a.KeyEncryptionParams, b.KeyEncryptionParams) || a.Version != b.Version {
		t.Errorf("RecipientInfo: ours %+v\nopenssl %+v", b, a)
	}
	// The first 20 bytes (up to the RecipientInfos SET) are identical.
	if !bytes.Equal(ref[:20], ours[:20]) || !bytes.Equal(ref[len(ref)-10:], ours[len(ours)-10:]) {
		t.Errorf("framing differs:\n ours % x ... % x\nopenssl % x ... % x", ours[:20], ours[len(ours)-10:], ref[:20], ref[len(ref)-10:])
	}
}

func TestEnvelopeErrors(t *testing.T) {
	rsaRcpt := smimetest.NewRecipient(t, "bob@example.test")
	ecRcpt := smimetest.NewRecipient(t, "ec@example.test", smimetest.ECKey())
	h := &smime.Header{Fields: []smime.Field{{Name: "Subject", Raw: []byte("Subject: x\r\n")}}}
	tests := []struct {
		name    string
		certs   []*x509.Certificate
		opts    smime.Options
		wantErr error
	}{
		{"no recipients", nil, smime.Options{}, smime.ErrNoRecipients},
		{"EC key", []*x509.Certificate{ecRcpt.Cert}, smime.Options{}, smime.ErrUnsupportedKey},
		{"EC key after an RSA one", []*x509.Certificate{rsaRcpt.Cert, ecRcpt.Cert}, smime.Options{}, smime.ErrUnsupportedKey},
		{"nil certificate", []*x509.Certificate{nil}, smime.Options{}, smime.ErrUnsupportedKey},
		{"negative segment size", []*x509.Certificate{rsaRcpt.Cert}, smime.Options{SegmentSize: -1}, nil},
		{"huge segment size", []*x509.Certificate{rsaRcpt.Cert}, smime.Options{SegmentSize: 1 << 30}, nil},
		{"unknown key transport", []*x509.Certificate{rsaRcpt.Cert}, smime.Options{KeyTransport: 7}, nil},
		{"failing random source", []*x509.Certificate{rsaRcpt.Cert}, smime.Options{Rand: iotest.ErrReader(errors.New("no entropy"))}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := smime.NewEnvelopedWriter(&out, tt.certs, tt.opts)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Errorf("NewEnvelopedWriter: got %v, want %v", err, tt.wantErr)
			}
			_, err = smime.Encrypt(&out, h, tt.certs, tt.opts)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Errorf("Encrypt: got %v, want %v", err, tt.wantErr)
			}
			if out.Len() != 0 {
				t.Errorf("%d bytes written before the error", out.Len())
			}
		})
	}
}

// errWriter fails after n bytes.
type errWriter struct {
	n   int
	err error
}

func (w *errWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		n := w.n
		w.n = 0
		return n, w.err
	}
	w.n -= len(p)
	return len(p), nil
}

// TestEncryptWriteErrors: a failing destination surfaces as an error from
// Encrypt, Write or Close (the daemon answers 4xx), never as a silent
// truncation, and the error sticks.
func TestEncryptWriteErrors(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	h := &smime.Header{Fields: []smime.Field{{Name: "Subject", Raw: []byte("Subject: x\r\n")}}}
	boom := errors.New("dovecot went away")
	body := pattern(1 << 20)
	for _, limit := range []int{0, 10, 300, 5000, 100000, 1 << 20} {
		dst := &errWriter{n: limit, err: boom}
		w, err := smime.Encrypt(dst, h, []*x509.Certificate{r.Cert}, smime.Options{})
		if err != nil {
			if !errors.Is(err, boom) {
				t.Errorf("limit %d: Encrypt: %v", limit, err)
			}
			continue
		}
		_, werr := w.Write(body)
		cerr := w.Close()
		if !errors.Is(werr, boom) && !errors.Is(cerr, boom) {
			t.Errorf("limit %d: Write %v, Close %v, want %v", limit, werr, cerr, boom)
		}
		if _, err := w.Write([]byte("more")); err == nil {
			t.Errorf("limit %d: Write after a failure succeeded", limit)
		}
	}
}

func TestEncryptWriteAfterClose(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	h := &smime.Header{}
	w, err := smime.Encrypt(io.Discard, h, []*x509.Certificate{r.Cert}, smime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, smime.ErrClosed) {
		t.Errorf("Write after Close: %v, want ErrClosed", err)
	}
	if err := w.Close(); !errors.Is(err, smime.ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
}

// TestEncryptBareLF: a message with bare LF line endings is encrypted as it
// came, and the lines Encrypt adds use LF too.
func TestEncryptBareLF(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	raw := "From: a@example.test\nSubject: lf\nContent-Type: text/plain\n\nline one\nline two\n"
	out := encryptMessage(t, []byte(raw), []*x509.Certificate{r.Cert}, smime.Options{})
	if !bytes.HasPrefix(out, []byte("From: a@example.test\nSubject: lf\nMIME-Version: 1.0\n")) {
		t.Errorf("outer header: %q", out[:min(len(out), 120)])
	}
	der, err := smimetest.ExtractDER(bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	got, err := smimetest.DecryptGo(t, der, r.CertPEM, r.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if want := "Content-Type: text/plain\n\nline one\nline two\n"; string(got) != want {
		t.Errorf("inner %q, want %q", got, want)
	}
}

// TestEncryptDeterministicRand: the content key and IV come from
// Options.Rand, in that order.
func TestEncryptDeterministicRand(t *testing.T) {
	r := smimetest.NewRecipient(t, "bob@example.test")
	stream := pattern(64 << 10)
	for i := range stream {
		stream[i] |= 1 // RSA padding, if it reads Rand, needs nonzero bytes
	}
	der := envelope(t, []byte("hello"), []*x509.Certificate{r.Cert}, smime.Options{Rand: bytes.NewReader(stream)}, 5)
	env, err := smimetest.ParseEnvelope(der)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(env.IV, stream[32:48]) {
		t.Errorf("IV % x, want bytes 32 to 48 of Rand % x", env.IV, stream[32:48])
	}
}
