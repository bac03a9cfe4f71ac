package encrypted

import (
	"bytes"
	"encoding/base64"
	"io"
	"runtime"
	"testing"
)

var lineEnd = []byte("\r\n")

// lineWriter breaks what it is written into CRLF lines of n characters.
type lineWriter struct {
	w   io.Writer
	n   int
	col int
}

func (l *lineWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(len(p), l.n-l.col)
		l.w.Write(p[:k])
		l.col += k
		p = p[k:]
		if l.col == l.n {
			l.w.Write(lineEnd)
			l.col = 0
		}
	}
	return total, nil
}

// TestBoundedMemory streams 32 MiB of encrypted content through a checker
// in 32 KiB writes and checks that it allocates almost nothing: the content
// is skipped, never held.
func TestBoundedMemory(t *testing.T) {
	const size = 32 << 20
	chunk := bytes.Repeat([]byte{0x5a, 0xa5, 0x0f, 0xf0}, 8<<10)
	cmsPrefix := bytes.Join([][]byte{{0x30, 0x80}, tlv(0x06, oidEnvelopedData), {0xa0, 0x80, 0x30, 0x80}, version0,
		tlv(0x31, ktri), {0x30, 0x80}, tlv(0x06, oidData), algAES, {0xa0, 0x80}}, nil)
	segment := tlv(0x04, chunk)
	cmsStream := func(w io.Writer) {
		w.Write(cmsPrefix)
		for range size / len(chunk) {
			w.Write(segment)
		}
		w.Write(make([]byte, 10)) // five end-of-contents
	}
	pkesk := pkt(tagPKESK, append([]byte{3}, bytes.Repeat([]byte{7}, 267)...))
	pgpStream := func(w io.Writer) {
		// 32 KiB partial chunks (RFC 9580 §4.2.1.4), then a final one.
		crc := crc24(crc24Init)
		lw := &lineWriter{w: w, n: 64}
		enc := base64.NewEncoder(base64.StdEncoding, lw)
		data := func(p []byte) {
			crc = crc.update(p)
			enc.Write(p)
		}
		io.WriteString(w, armorBegin+"\r\n\r\n")
		data(pkesk)
		data([]byte{0xc0 | tagSEIPD})
		for i := range size / len(chunk) {
			data([]byte{224 + 15})
			if i == 0 {
				data([]byte{1})
				data(chunk[1:])
				continue
			}
			data(chunk)
		}
		data([]byte{1, 0xee})
		enc.Close()
		io.WriteString(w, "\r\n="+base64.StdEncoding.EncodeToString([]byte{byte(crc >> 16), byte(crc >> 8), byte(crc)})+"\r\n"+armorEnd+"\r\n")
	}
	for _, tc := range []struct {
		name, ct, cte string
		stream        func(io.Writer)
	}{
		{"CMS raw", ctEnveloped, "binary", cmsStream},
		{"CMS base64", ctEnveloped, "base64", func(w io.Writer) {
			enc := base64.NewEncoder(base64.StdEncoding, &lineWriter{w: w, n: 76})
			cmsStream(enc)
			enc.Close()
			w.Write([]byte("\r\n"))
		}},
		{"PGP armored", "text/plain", "", pgpStream},
		{"PGP/MIME", ctPGPMIME, "", func(w io.Writer) {
			io.WriteString(w, "--"+tbBoundary+"\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--"+tbBoundary+"\r\nContent-Type: application/octet-stream\r\n\r\n")
			pgpStream(w)
			io.WriteString(w, "--"+tbBoundary+"--\r\n")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewChecker(tc.ct, tc.cte)
			// The generator's own writes are small; batch them into
			// 32 KiB writes as the DATA reader would.
			buf := &batcher{c: c, buf: make([]byte, 0, 32<<10)}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			tc.stream(buf)
			buf.flush()
			ok, reason := c.Result()
			runtime.ReadMemStats(&after)
			if !ok {
				t.Fatalf("got not encrypted (%s), want encrypted", reason)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
				t.Errorf("allocated %d bytes for %d MiB of content, want at most 64 KiB", n, size>>20)
			}
		})
	}
}

type batcher struct {
	c   *Checker
	buf []byte
}

func (b *batcher) Write(p []byte) (int, error) {
	for _, c := range p {
		if len(b.buf) == cap(b.buf) {
			b.flush()
		}
		b.buf = append(b.buf, c)
	}
	return len(p), nil
}

func (b *batcher) flush() {
	b.c.Write(b.buf)
	b.buf = b.buf[:0]
}
