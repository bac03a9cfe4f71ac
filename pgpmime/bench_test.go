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
// writes, and in 4 KiB and 256-byte writes as the daemon's DATA reader
// hands over what has arrived. Beside smime's BenchmarkEncrypt, it compares PGP/MIME with S/MIME.
// B/op does not grow with the message: the seal encrypts into one pooled
// buffer (go-crypto's SEIPD writer, used before, allocated the size of each
// write, about 105 MB per 100 MB message).
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
	for _, bc := range []struct {
		size, write int
	}{{1 << 20, 64 << 10}, {100 << 20, 64 << 10}, {1 << 20, 4 << 10}, {1 << 20, 256}} {
		name := fmt.Sprintf("%dMB", bc.size>>20)
		if bc.write != len(chunk) {
			name += fmt.Sprintf("-writes%dB", bc.write)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(bc.size))
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
				for n := bc.size; n > 0; n -= bc.write {
					if _, err := s.Write(chunk[:min(n, bc.write)]); err != nil {
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
