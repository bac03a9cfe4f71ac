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

func benchSend(b *testing.B, path string, size int, rcpts ...string) {
	if len(rcpts) == 0 {
		rcpts = []string{"a@example.org"}
	}
	c := lmtpClient(b, path)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n")
	m := append(msg("bench", ""), bytes.Repeat(line, size/len(line))...)
	b.SetBytes(int64(len(m)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Mail("s@example.net", nil); err != nil {
			b.Fatal(err)
		}
		for _, r := range rcpts {
			if err := c.Rcpt(r, nil); err != nil {
				b.Fatal(err)
			}
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

// BenchmarkFanoutRelay sends one message to n recipients, each with a
// certificate of their own: one encryption, n envelopes. The cost per
// message should grow far slower than n times the one-recipient case.
func BenchmarkFanoutRelay(b *testing.B) {
	var rs []*smimetest.Recipient
	var addrs []string
	for i := range 20 {
		r := smimetest.NewRecipient(b, fmt.Sprintf("r%02d@example.org", i))
		rs = append(rs, r)
		addrs = append(addrs, r.Addr)
	}
	for _, size := range []int{10 << 10, 1 << 20} {
		for _, n := range []int{1, 5, 20} {
			b.Run(fmt.Sprintf("size=%d/rcpts=%d", size, n), func(b *testing.B) {
				f := startFakeLMTP(b)
				f.discard = true
				rf := startFilter(b, f.path, filterOpts{cfg: Config{
					Certs:  holder(b, certDir(b, rs...)),
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				}})
				benchSend(b, rf.path, size, addrs[:n]...)
			})
		}
	}
}
