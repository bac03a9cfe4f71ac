package smime_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

// TestIsEncryptedCorpus: already-encrypted S/MIME and PGP messages are
// recognised, everything else (opaque signed-data included, with or without
// smime-type) is not, and the body is never consumed.
func TestIsEncryptedCorpus(t *testing.T) {
	for _, m := range smimetest.Corpus(t) {
		t.Run(m.Name, func(t *testing.T) {
			br := bufio.NewReader(bytes.NewReader(m.Raw))
			h, err := smime.ReadHeader(br, maxHeader)
			if err != nil {
				t.Fatal(err)
			}
			before := br.Buffered()
			if got := smime.IsEncrypted(h, br); got != m.Encrypted {
				t.Errorf("IsEncrypted = %v, want %v", got, m.Encrypted)
			}
			if br.Buffered() < before {
				t.Errorf("IsEncrypted consumed %d buffered bytes", before-br.Buffered())
			}
			rest, _ := io.ReadAll(br)
			var hb bytes.Buffer
			if _, err := h.WriteTo(&hb); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(hb.Bytes(), rest...), m.Raw) {
				t.Error("header bytes plus remaining body differ from the message")
			}
		})
	}
}

func TestIsEncrypted(t *testing.T) {
	// ContentInfo prefixes: BER indefinite and DER definite lengths.
	enveloped := []byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00}
	envelopedDER := []byte{0x30, 0x82, 0x01, 0x23, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0, 0x82, 0x01, 0x14, 0x30}
	authEnveloped := []byte{0x30, 0x80, 0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x17, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x00}
	signed := []byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x01}
	compressed := []byte{0x30, 0x80, 0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x09, 0xa0, 0x80}
	b64 := func(b []byte) string {
		return base64.StdEncoding.EncodeToString(append(b, make([]byte, 40)...)) + "\r\n"
	}
	const armor = "-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n"
	const pgpMIME = "--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--x\r\n" +
		"Content-Type: application/octet-stream\r\n\r\n" + armor + "--x--\r\n"
	tests := []struct {
		name   string
		header string
		body   string
		want   bool
	}{
		{"smime-type enveloped-data", "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m", b64(enveloped), true},
		{"smime-type case and quotes", "Content-Type: Application/PKCS7-MIME; Smime-Type=\"Enveloped-Data\"", b64(enveloped), true},
		{"x-pkcs7-mime", "Content-Type: application/x-pkcs7-mime; smime-type=enveloped-data", b64(envelopedDER), true},
		{"authEnveloped-data", "Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data", b64(authEnveloped), true},
		// Claims are checked against the content: plaintext labelled as
		// encrypted must still be encrypted.
		{"claims enveloped, plaintext body", "Content-Type: application/pkcs7-mime; smime-type=enveloped-data", "Dear Bob, the secret is 42.\r\n", false},
		{"claims enveloped, empty body", "Content-Type: application/pkcs7-mime; smime-type=enveloped-data", "", false},
		{"claims enveloped, signed-data body", "Content-Type: application/pkcs7-mime; smime-type=enveloped-data", b64(signed), false},
		{"smime-type wins over the body", "Content-Type: application/pkcs7-mime; smime-type=signed-data", b64(enveloped), false},
		{"certs-only", "Content-Type: application/pkcs7-mime; smime-type=certs-only", "", false},
		{"compressed-data", "Content-Type: application/pkcs7-mime; smime-type=compressed-data", "", false},
		{"no smime-type, enveloped BER", "Content-Type: application/pkcs7-mime; name=smime.p7m", b64(enveloped), true},
		{"no smime-type, enveloped DER", "Content-Type: application/pkcs7-mime", b64(envelopedDER), true},
		{"no smime-type, authEnveloped", "Content-Type: application/x-pkcs7-mime", b64(authEnveloped), true},
		{"no smime-type, signed-data", "Content-Type: application/pkcs7-mime; name=smime.p7m", b64(signed), false},
		{"no smime-type, compressed-data", "Content-Type: application/pkcs7-mime", b64(compressed), false},
		{"no smime-type, blank lines then base64", "Content-Type: application/pkcs7-mime", "\r\n\r\n" + b64(enveloped), true},
		{"no smime-type, base64 in short lines", "Content-Type: application/pkcs7-mime", splitLines(b64(enveloped), 8), true},
		{"no smime-type, binary transfer", "Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: binary", string(enveloped), true},
		{"no smime-type, tiny padded base64", "Content-Type: application/pkcs7-mime", "MIAGCSqGSIb3DQEHAw==\r\n", true},
		{"no smime-type, empty body", "Content-Type: application/pkcs7-mime", "", false},
		{"no smime-type, garbage", "Content-Type: application/pkcs7-mime", "!!! not base64 !!!", false},
		{"no smime-type, truncated", "Content-Type: application/pkcs7-mime", "MIA=", false},
		{"invalid Content-Type syntax still read", "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"unterminated", b64(enveloped), true},
		{"pgp/mime", "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x", pgpMIME, true},
		{"pgp/mime protocol case", "Content-Type: multipart/encrypted; boundary=x; protocol=\"Application/PGP-Encrypted\"", pgpMIME, true},
		{"pgp/mime claimed, no armor", "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x", "--x\r\n\r\nVersion: 1\r\n--x\r\n\r\nplain secret\r\n--x--\r\n", false},
		{"multipart/encrypted other protocol", "Content-Type: multipart/encrypted; protocol=\"application/other\"; boundary=x", "", false},
		{"inline pgp", "Content-Type: text/plain", armor, true},
		{"inline pgp, no Content-Type", "Subject: x", armor, true},
		{"inline pgp after blank lines", "Content-Type: text/plain; charset=us-ascii", "\r\n \r\n" + armor, true},
		{"inline pgp in base64 text", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64", base64.StdEncoding.EncodeToString([]byte(armor)), true},
		{"inline pgp not at the start", "Content-Type: text/plain", "Hello,\r\n" + armor, false},
		{"inline pgp in html", "Content-Type: text/html", armor, false},
		{"pgp signed, not encrypted", "Content-Type: text/plain", "-----BEGIN PGP SIGNED MESSAGE-----\r\n", false},
		{"plain text", "Content-Type: text/plain", "hello", false},
		{"multipart/signed", "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=x", "", false},
		{"no header at all", "", "hello", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := tt.header
			if raw != "" {
				raw += "\r\n"
			}
			raw += "\r\n" + tt.body
			br := bufio.NewReader(strings.NewReader(raw))
			h, err := smime.ReadHeader(br, maxHeader)
			if err != nil {
				t.Fatal(err)
			}
			if got := smime.IsEncrypted(h, br); got != tt.want {
				t.Errorf("IsEncrypted = %v, want %v", got, tt.want)
			}
			if rest, _ := io.ReadAll(br); string(rest) != tt.body {
				t.Errorf("body consumed: %q left, want %q", rest, tt.body)
			}
		})
	}
}

// TestIsEncryptedNilBody: with no body to peek at, only the header decides.
func TestIsEncryptedNilBody(t *testing.T) {
	h := &smime.Header{Fields: []smime.Field{{Name: "Content-Type", Raw: []byte("Content-Type: application/pkcs7-mime\r\n")}}}
	if smime.IsEncrypted(h, nil) {
		t.Error("pkcs7-mime without smime-type and without a body counted as encrypted")
	}
}

// TestIsEncryptedPeekBounded: a huge body on a small bufio.Reader is not
// read beyond its buffer.
func TestIsEncryptedPeekBounded(t *testing.T) {
	h := &smime.Header{Fields: []smime.Field{{Name: "Content-Type", Raw: []byte("Content-Type: text/plain\r\n")}}}
	body := strings.NewReader(strings.Repeat("\r\n", 1<<20) + "-----BEGIN PGP MESSAGE-----")
	br := bufio.NewReaderSize(body, 4096)
	if smime.IsEncrypted(h, br) {
		t.Error("armor 2 MiB down the body counted")
	}
	if read := (2<<20 + 27) - body.Len(); read > 4096 {
		t.Errorf("read %d bytes of the body, want at most the buffer", read)
	}
}

func splitLines(s string, n int) string {
	s = strings.TrimSpace(s)
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n] + "\r\n")
		s = s[n:]
	}
	b.WriteString(s + "\r\n")
	return b.String()
}
