package smtp

// smimefilter patch: the bulk lineLimitReader.Read must count exactly like
// upstream's byte-at-a-time loop, kept below verbatim as the reference.

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// refLineLimitReader is upstream v0.26.0's lineLimitReader.Read, verbatim.
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
