package pgpmime_test

import (
	"fmt"
	"io"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/pgpmime"
)

// BenchmarkSeal measures one message to one recipient end to end, as the
// daemon's first copy streams it: the seal (AES-256 SEIPD with MDC) feeding
// a live copy (key packet, armor, MIME) into io.Discard, fed in 64 KiB
// writes. Beside smime's BenchmarkEncrypt, it compares PGP/MIME with S/MIME;
// B/op staying flat from 1 MB to 100 MB would be the bounded memory claim,
// but go-crypto's CFB writer allocates a buffer per write (garbage, not
// retained: TestBoundedMemory measures what is kept).
//
//	go test -run '^$' -bench 'BenchmarkSeal' -benchmem ./pgpmime/
//	go test -run '^$' -bench 'BenchmarkSeal/1MB' -benchmem ./pgpmime/   # without the 100 MB case
func BenchmarkSeal(b *testing.B) {
	key := pgptest.GoKey(b, "go", pgptest.Curve25519).EncryptionKey(b)
	keys := []*packet.PublicKey{key}
	h := headerOf(b, []byte("From: a@example.test\r\nSubject: bench\r\nContent-Type: application/octet-stream\r\n\r\n"))
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for _, size := range []int{1 << 20, 100 << 20} {
		b.Run(fmt.Sprintf("%dMB", size>>20), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				out := &liveOut{}
				s, err := pgpmime.NewSeal(out, h, pgpmime.Options{})
				if err != nil {
					b.Fatal(err)
				}
				out.lc, err = s.NewLiveCopy(io.Discard, keys)
				if err != nil {
					b.Fatal(err)
				}
				for n := size; n > 0; n -= len(chunk) {
					if _, err := s.Write(chunk[:min(n, len(chunk))]); err != nil {
						b.Fatal(err)
					}
				}
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				if err := out.lc.Close(); err != nil {
					b.Fatal(err)
				}
				s.Destroy()
			}
		})
	}
}

// liveOut passes the seal's ciphertext to the live copy only: one
// recipient, nothing spooled.
type liveOut struct{ lc *pgpmime.LiveCopy }

func (o *liveOut) Write(p []byte) (int, error) { return o.lc.Write(p) }
