package encrypted

import (
	"bytes"
	"crypto/aes"
	cbc "crypto/cipher"
	"testing"
)

// BenchmarkChecker measures the cost per body byte of a 10 MiB body, written
// in 32 KiB chunks as the filter's DATA reader hands them over. "AES-256-CBC"
// is what the filter pays per byte for encrypting instead, measured in the
// same run for comparison on a noisy machine.
func BenchmarkChecker(b *testing.B) {
	const size = 10 << 20
	content := bytes.Repeat([]byte{0xa5, 0x3c, 0x96, 0x0f}, size/4)
	// An EnvelopedData as the smime writer and openssl cms -stream lay it
	// out: indefinite lengths, 64 KiB primitive segments.
	var segs [][]byte
	for c := content; len(c) > 0; c = c[min(len(c), 64<<10):] {
		segs = append(segs, tlv(0x04, c[:min(len(c), 64<<10)]))
	}
	der := ind(0x30, tlv(0x06, oidEnvelopedData), ind(0xa0, ind(0x30, version0, tlv(0x31, ktri),
		ind(0x30, tlv(0x06, oidData), algAES, ind(0xa0, segs...)))))
	pkesk := pkt(tagPKESK, append([]byte{3}, bytes.Repeat([]byte{7}, 267)...))
	pgp := armored(append(pkesk, partialPkt(tagSEIPD, 13, append([]byte{1}, content...))...), true, "Version: GnuPG v2")
	b.Run("AES-256-CBC", func(b *testing.B) {
		block, err := aes.NewCipher(make([]byte, 32))
		if err != nil {
			b.Fatal(err)
		}
		dst := make([]byte, 32<<10)
		b.SetBytes(size)
		for b.Loop() {
			enc := cbc.NewCBCEncrypter(block, make([]byte, aes.BlockSize))
			for p := content; len(p) > 0; p = p[min(len(p), 32<<10):] {
				enc.CryptBlocks(dst, p[:min(len(p), 32<<10)])
			}
		}
	})
	for _, bc := range []struct {
		name, ct, cte string
		body          []byte
	}{
		{"CMS raw", ctEnveloped, "binary", der},
		{"CMS base64", ctEnveloped, "base64", b64Lines(der, 76)},
		{"PGP armored", "text/plain", "7bit", pgp},
		{"PGP/MIME", ctPGPMIME, "", thunderbird(pgp)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				c := NewChecker(bc.ct, bc.cte)
				for p := bc.body; len(p) > 0; p = p[min(len(p), 32<<10):] {
					c.Write(p[:min(len(p), 32<<10)])
				}
				if ok, reason := c.Result(); !ok {
					b.Fatal(reason)
				}
			}
		})
	}
}
