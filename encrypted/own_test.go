package encrypted

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/textproto"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/smime"
)

// TestOwnOutput: what the filter itself writes passes through unchanged when
// it comes back (a second hop, a forward), whatever its size and options.
func TestOwnOutput(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(1),
		Subject:        pkix.Name{CommonName: "a"},
		EmailAddresses: []string{"a@example.test"},
		NotBefore:      time.Now().Add(-time.Hour),
		NotAfter:       time.Now().Add(time.Hour),
		KeyUsage:       x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	big := "Subject: big\r\nContent-Type: text/plain\r\n\r\n" + string(bytes.Repeat([]byte("All work and no play.\r\n"), 5000))
	for _, tc := range []struct {
		name string
		msg  string
		opts smime.Options
	}{
		{"small", "Subject: hi\r\n" + plaintext, smime.Options{}},
		{"RSA-OAEP, header protection", "Subject: hi\r\n" + plaintext, smime.Options{KeyTransport: smime.RSAOAEP, HeaderProtection: true}},
		{"100 KiB, small segments", big, smime.Options{SegmentSize: 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(bytes.NewReader([]byte(tc.msg)))
			h, err := smime.ReadHeader(br, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			w, err := smime.Encrypt(&out, h, []*x509.Certificate{cert}, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, br); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			r := textproto.NewReader(bufio.NewReader(&out))
			hdr, err := r.ReadMIMEHeader()
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(r.R)
			if err != nil {
				t.Fatal(err)
			}
			ct, cte := hdr.Get("Content-Type"), hdr.Get("Content-Transfer-Encoding")
			if ok, reason := verdict(t, ct, cte, body); !ok {
				t.Fatalf("got not encrypted (%s), want encrypted", reason)
			}
			if ok, _ := verdict(t, ct, cte, append(body, "Dear Bob\r\n"...)); ok {
				t.Error("with text appended: got encrypted, want not")
			}
		})
	}
}
