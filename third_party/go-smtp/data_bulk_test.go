package smtp

// smimefilter patch: the bulk dataReader.Read must behave exactly like the
// upstream byte-at-a-time one. refRead below is upstream v0.25.1's loop,
// kept verbatim as the reference; FuzzDataReader compares the two on any
// input, any bufio size, any read size and any size limit.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

type refDataReader struct {
	r       *bufio.Reader
	state   int
	limited bool
	n       int64
}

func (r *refDataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}
	const (
		stateBeginLine = iota
		stateDot
		stateDotCR
		stateCR
		stateData
		stateEOF
	)
	for n < len(b) && r.state != stateEOF {
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	if r.limited {
		r.n -= int64(n)
	}
	return
}

// drain reads r to its end with reads of size chunk and returns the data,
// the final error and what is left unread in br (the next command).
func drain(r io.Reader, br *bufio.Reader, chunk int) ([]byte, error, []byte) {
	var out []byte
	buf := make([]byte, chunk)
	var err error
	for i := 0; i < 1<<20; i++ {
		var n int
		n, err = r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			break
		}
	}
	rest, _ := io.ReadAll(br)
	return out, err, rest
}

func FuzzDataReader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n"), uint8(16), uint8(7), uint16(0), false)
	f.Add([]byte("a\r\n.\rb\r\n.x\r\n\r\n.\r\nRSET\r\n"), uint8(0), uint8(1), uint16(5), true)
	f.Add([]byte("no end\r\n.."), uint8(3), uint8(200), uint16(0), false)
	f.Add([]byte("bare\nlf\n.\n\r\r\n.\r\n"), uint8(1), uint8(3), uint16(9), false)
	f.Fuzz(func(t *testing.T, in []byte, bufExtra, chunk uint8, limit uint16, oneByte bool) {
		src := func() io.Reader {
			var r io.Reader = bytes.NewReader(in)
			if oneByte {
				r = iotest.OneByteReader(r)
			} else {
				r = iotest.HalfReader(r)
			}
			return r
		}
		size := 16 + int(bufExtra) // bufio's minimum is 16
		c := int(chunk) + 1

		refBR := bufio.NewReaderSize(src(), size)
		ref := &refDataReader{r: refBR, limited: limit > 0, n: int64(limit)}
		wantOut, wantErr, wantRest := drain(ref, refBR, c)

		gotBR := bufio.NewReaderSize(src(), size)
		got := &dataReader{r: gotBR, limited: limit > 0, n: int64(limit)}
		gotOut, gotErr, gotRest := drain(got, gotBR, c)

		if !bytes.Equal(gotOut, wantOut) {
			t.Fatalf("data:\n got %q\nwant %q", gotOut, wantOut)
		}
		if !errors.Is(gotErr, wantErr) {
			t.Fatalf("final error: got %v, want %v", gotErr, wantErr)
		}
		if !bytes.Equal(gotRest, wantRest) {
			t.Fatalf("left for the next command:\n got %q\nwant %q", gotRest, wantRest)
		}
	})
}

// refLineLimitReader is upstream v0.25.1's lineLimitReader.Read, verbatim.
type refLineLimitReader struct {
	R             io.Reader
	LineLimit     int
	curLineLength int
}

func (r *refLineLimitReader) Read(b []byte) (int, error) {
	if r.curLineLength > r.LineLimit && r.LineLimit > 0 {
		return 0, ErrTooLongLine
	}
	n, err := r.R.Read(b)
	if err != nil {
		return n, err
	}
	if r.LineLimit == 0 {
		return n, nil
	}
	for _, chr := range b[:n] {
		if chr == '\n' {
			r.curLineLength = 0
		}
		r.curLineLength++
		if r.curLineLength > r.LineLimit {
			return 0, ErrTooLongLine
		}
	}
	return n, nil
}

func FuzzLineLimitReader(f *testing.F) {
	f.Add([]byte("short\nlines\r\nhere\n"), uint8(4), uint8(3))
	f.Add([]byte("0123456789\n0123456789"), uint8(10), uint8(64))
	f.Add([]byte("\n\n\n"), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, limit, chunk uint8) {
		read := func(r io.Reader) ([]int, error) {
			var ns []int
			buf := make([]byte, int(chunk)+1)
			for {
				n, err := r.Read(buf)
				ns = append(ns, n)
				if err != nil {
					return ns, err
				}
			}
		}
		wantNs, wantErr := read(&refLineLimitReader{R: iotest.HalfReader(bytes.NewReader(in)), LineLimit: int(limit)})
		gotNs, gotErr := read(&lineLimitReader{R: iotest.HalfReader(bytes.NewReader(in)), LineLimit: int(limit)})
		if !errors.Is(gotErr, wantErr) || len(gotNs) != len(wantNs) {
			t.Fatalf("got %v %v, want %v %v", gotNs, gotErr, wantNs, wantErr)
		}
		for i := range gotNs {
			if gotNs[i] != wantNs[i] {
				t.Fatalf("read %d: got %d bytes, want %d", i, gotNs[i], wantNs[i])
			}
		}
	})
}
