package smime_test

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

var fuzzSeeds = []string{
	"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n",
	"From: a@example.test\nSubject: hi\n\nbody\n",
	"To: a,\r\n b\r\n\tc\r\nContent-Type: text/plain\r\n\r\n",
	"Subject: x",
	"",
	"\r\n",
	" leading continuation\r\n\r\n",
	"No colon\r\n\r\n",
	"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n",
	"Content-Type: application/pkcs7-mime\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n",
	"Content-Type: application/pkcs7-mime\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n",
	"Content-Type: application/x-pkcs7-mime\r\nContent-Transfer-Encoding: binary\r\n\r\n0\x80\x06\x09*\x86H\x86\xf7\r\x01\x07\x03",
	"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n",
	"Content-Type: text/plain\r\n\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n",
	"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nLS0tLS1CRUdJTiBQR1AgTUVTU0FHRS0tLS0t\r\n",
	"Content-Type: application/pkcs7-mime; name=\"unterminated\r\n\r\nMIA=",
	"A: \x00\xff\r\n\r\n",
}

// FuzzReadHeader: the splitter never panics, every byte it consumed is in
// exactly one field's Raw (or the blank line), in order, and the rest of the
// input is left for the body.
func FuzzReadHeader(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), 1<<16)
	}
	f.Add([]byte("A: 1\r\n\r\n"), 7)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		if max < 0 || max > 1<<20 {
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		h, err := smime.ReadHeader(br, max)
		rest, _ := io.ReadAll(br)
		if consumed := len(in) - len(rest); consumed > max {
			t.Fatalf("consumed %d bytes with limit %d", consumed, max)
		}
		if err != nil {
			if !errors.Is(err, smime.ErrHeaderTooLarge) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		var buf bytes.Buffer
		if _, err := h.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		if got := append(buf.Bytes(), rest...); !bytes.Equal(got, in) {
			t.Fatalf("fields + body = %q, want the input %q", got, in)
		}
		for _, fl := range h.Fields {
			if !strings.HasPrefix(string(fl.Raw), fl.Name) {
				t.Fatalf("field %q does not start with its name %q", fl.Raw, fl.Name)
			}
			_ = h.Get(fl.Name)
		}
	})
}

// FuzzEncrypt: any parseable message encrypts, its outer header keeps every
// field that is not Content-* or MIME-Version, and it decrypts (in-process)
// to the Content-* fields and the body.
func FuzzEncrypt(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("Subject: s\r\nKeywords: k\r\nContent-Type: text/plain;\r\n\r\nb"), true)
	r := smimetest.NewRecipient(f, "fuzz@example.test")
	f.Fuzz(func(t *testing.T, in []byte, hp bool) {
		br := bufio.NewReader(bytes.NewReader(in))
		h, err := smime.ReadHeader(br, 1<<16)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(br)
		var out bytes.Buffer
		w, err := smime.Encrypt(&out, h, []*x509.Certificate{r.Cert}, smime.Options{HeaderProtection: hp, SegmentSize: 32})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(body); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		// The base64 starts after the last field Encrypt writes and the
		// blank line (CRLF, or LF for a bare-LF message).
		last := []byte("Content-Disposition: attachment; filename=smime.p7m")
		i := bytes.Index(out.Bytes(), last)
		if i < 0 {
			t.Fatalf("no S/MIME fields in output %q", out.Bytes())
		}
		b64 := out.Bytes()[i+len(last):]
		for range 2 {
			b64 = bytes.TrimPrefix(b64, []byte("\r"))
			b64 = bytes.TrimPrefix(b64, []byte("\n"))
		}
		for _, fl := range h.Fields {
			lower := strings.ToLower(fl.Name)
			if strings.HasPrefix(lower, "content-") || lower == "mime-version" || hp {
				continue
			}
			if !bytes.Contains(out.Bytes()[:i], fl.Raw) {
				t.Fatalf("outer header lost %q", fl.Raw)
			}
		}
		der, err := decodeBase64Body(b64)
		if err != nil {
			t.Fatal(err)
		}
		got, err := smimetest.DecryptGo(t, der, r.CertPEM, r.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(got, body) {
			t.Fatalf("decrypted entity %q does not end with the body %q", got, body)
		}
		if !hp {
			for _, fl := range h.Fields {
				if strings.HasPrefix(strings.ToLower(fl.Name), "content-") && !bytes.Contains(got, fl.Raw) {
					t.Fatalf("entity lost %q", fl.Raw)
				}
			}
		}
	})
}
