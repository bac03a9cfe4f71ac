package filter

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// BenchmarkRelay sends messages through the filter's whole path (LMTP in,
// plan, LMTP out through the pool) to the fake Dovecot, in process.
// BenchmarkDirect is the same client and backend without the filter: the
// ratio of the two is the filter's overhead.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{1 << 10, 100 << 10} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			f := startFakeLMTP(b)
			f.discard = true
			rf := startFilter(b, f.path, filterOpts{cfg: Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}})
			benchSend(b, rf.path, size)
		})
	}
}

func BenchmarkDirect(b *testing.B) {
	for _, size := range []int{1 << 10, 100 << 10} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			f := startFakeLMTP(b)
			f.discard = true
			benchSend(b, f.path, size)
		})
	}
}

func benchSend(b *testing.B, path string, size int) {
	c := lmtpClient(b, path)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n")
	m := append(msg("bench", ""), bytes.Repeat(line, size/len(line))...)
	b.SetBytes(int64(len(m)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Mail("s@example.net", nil); err != nil {
			b.Fatal(err)
		}
		if err := c.Rcpt("a@example.org", nil); err != nil {
			b.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			b.Fatal(err)
		}
		w.Write(m)
		if _, err := w.CloseWithLMTPResponse(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncryptRelay is BenchmarkRelay with encryption for one
// certificate: the daemon's hot path for large messages.
func BenchmarkEncryptRelay(b *testing.B) {
	alice := smimetest.NewRecipient(b, "a@example.org")
	for _, size := range []int{1 << 10, 10 << 20} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			f := startFakeLMTP(b)
			f.discard = true
			rf := startFilter(b, f.path, filterOpts{cfg: Config{
				Certs:  holder(b, certDir(b, alice)),
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			}})
			benchSend(b, rf.path, size)
		})
	}
}
