package smime_test

import (
	"crypto/x509"
	"fmt"
	"io"
	"testing"

	"go.mozilla.org/pkcs7"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

// BenchmarkEncrypt measures Encrypt end to end (header, AES-256-CBC,
// base64 lines) into io.Discard, fed in 64 KiB writes as io.Copy from the
// LMTP reader would. B/op staying flat from 1 MB to 100 MB is the bounded
// memory claim: allocation does not grow with the message.
//
//	go test -run '^$' -bench BenchmarkEncrypt -benchmem ./smime/
func BenchmarkEncrypt(b *testing.B) {
	r := smimetest.NewRecipient(b, "bench@example.test")
	raw := []byte(sampleMessage)
	chunk := pattern(64 << 10)
	for _, size := range []int{1 << 20, 100 << 20} {
		b.Run(fmt.Sprintf("%dMB", size>>20), func(b *testing.B) {
			h := headerOf(b, raw)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				w, err := smime.Encrypt(io.Discard, h, []*x509.Certificate{r.Cert}, smime.Options{})
				if err != nil {
					b.Fatal(err)
				}
				for n := size; n > 0; n -= len(chunk) {
					if _, err := w.Write(chunk[:min(n, len(chunk))]); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPkcs7Encrypt is the baseline for BenchmarkEncrypt: the design
// card's go.mozilla.org/pkcs7, switched to AES-256-CBC (its default is DES),
// encrypting the same bytes. It needs the whole message as one []byte and
// returns the whole DER, so its B/op grows with the message; that is why
// smimefilter does not encrypt with it.
//
//	go test -run '^$' -bench 'Encrypt' -benchmem ./smime/
func BenchmarkPkcs7Encrypt(b *testing.B) {
	r := smimetest.NewRecipient(b, "bench@example.test")
	old := pkcs7.ContentEncryptionAlgorithm
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
	defer func() { pkcs7.ContentEncryptionAlgorithm = old }()
	for _, size := range []int{1 << 20, 100 << 20} {
		b.Run(fmt.Sprintf("%dMB", size>>20), func(b *testing.B) {
			content := pattern(size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := pkcs7.Encrypt(content, []*x509.Certificate{r.Cert}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
