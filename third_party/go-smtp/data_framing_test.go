package smtp

// smimefilter patch: tests for the DATA framing of dataReader.Read against a
// reference written from RFC 5321, and against net/textproto's DotReader.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"testing"
	"testing/iotest"
)

// frameData is the reference for dataReader: RFC 5321 sections 4.1.1.4 and
// 4.5.2 applied to a whole input at once, line by line, with no state
// machine and no buffering.
//
// A line is everything up to and including the next CRLF; a CR or LF on its
// own is data. The line ".CRLF" ends the data and what follows it is left
// for the next command. Any other line starting with "." loses that dot.
// Input that ends before the end-of-data line gives io.ErrUnexpectedEOF,
// with the data of its last, incomplete line except a lone "." or ".\r"
// (still a possible start of the end-of-data line, so not data yet).
//
// With limit > 0, data longer than limit is cut to limit bytes and the error
// is ErrDataTooLarge: the limit counts data bytes after dot-unstuffing,
// without the end-of-data line. rest is then still what follows the
// end-of-data line, because the server reads on to it (handleData).
func frameData(in []byte, limit int) (data []byte, err error, rest []byte) {
	for {
		if bytes.HasPrefix(in, []byte(".\r\n")) {
			err, rest = io.EOF, in[3:]
			break
		}
		end := bytes.Index(in, []byte("\r\n"))
		if end < 0 {
			if s := string(in); s != "." && s != ".\r" {
				data = append(data, bytes.TrimPrefix(in, []byte("."))...)
			}
			err, rest = io.ErrUnexpectedEOF, nil
			break
		}
		data = append(data, bytes.TrimPrefix(in[:end+2], []byte("."))...)
		in = in[end+2:]
	}
	if limit > 0 && len(data) > limit {
		data, err = data[:limit], ErrDataTooLarge
	}
	return data, err, rest
}

// readData reads r as the server does: with reads of size chunk up to the
// first error, and after ErrDataTooLarge on to the end of the data without
// the limit (handleData's drain). It returns the data before the first
// error, that error, and what is left in br for the next command.
func readData(r io.Reader, br *bufio.Reader, chunk int) (data []byte, err error, rest []byte) {
	buf := make([]byte, chunk)
	for i := 0; err == nil; i++ {
		if i == 1<<20 {
			return data, errors.New("Read made no progress"), nil
		}
		var n int
		n, err = r.Read(buf)
		data = append(data, buf[:n]...)
	}
	if dr, ok := r.(*dataReader); ok && errors.Is(err, ErrDataTooLarge) {
		// Like handleData, ignore how the drain ends: rest shows it.
		dr.limited = false
		io.Copy(io.Discard, dr)
	}
	rest, _ = io.ReadAll(br)
	return data, err, rest
}

// noBareLF reports whether every LF in b ends a CRLF, where net/textproto's
// framing (which also takes a bare LF as a line end) agrees with RFC 5321's.
func noBareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return false
		}
	}
	return true
}

func FuzzDataReader(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n"), uint8(16), uint8(7), uint16(0), uint8(0))
	f.Add([]byte("last line\r\r\n.\r\nQUIT\r\n"), uint8(0), uint8(200), uint16(0), uint8(1))
	f.Add([]byte("a\r\r\n..b\r\n.\r\nRSET\r\n"), uint8(3), uint8(1), uint16(0), uint8(2))
	f.Add([]byte("a\r\n.\rb\r\n.x\r\n\r\n.\r\nRSET\r\n"), uint8(0), uint8(1), uint16(5), uint8(1))
	f.Add([]byte("..abc\r\n.\r\nQUIT\r\n"), uint8(0), uint8(2), uint16(6), uint8(0))
	f.Add([]byte("..abc\r\n.\r\nQUIT\r\n"), uint8(0), uint8(2), uint16(5), uint8(0))
	f.Add([]byte("no end\r\n.."), uint8(3), uint8(200), uint16(0), uint8(0))
	f.Add([]byte("cut\r\n.\r"), uint8(3), uint8(200), uint16(4), uint8(2))
	f.Add([]byte("bare\nlf\n.\n\r\r\n.\r\n"), uint8(1), uint8(3), uint16(9), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, bufExtra, chunk uint8, limit uint16, source uint8) {
		src := func() io.Reader {
			r := io.Reader(bytes.NewReader(in))
			switch source % 3 {
			case 0:
				return iotest.HalfReader(r)
			case 1:
				return iotest.OneByteReader(r)
			default:
				return iotest.DataErrReader(r)
			}
		}
		size := 16 + int(bufExtra) // bufio's minimum is 16
		readSize := int(chunk) + 1

		wantData, wantErr, wantRest := frameData(in, int(limit))

		br := bufio.NewReaderSize(src(), size)
		dr := &dataReader{r: br, limited: limit > 0, n: int64(limit)}
		gotData, gotErr, gotRest := readData(dr, br, readSize)

		if !bytes.Equal(gotData, wantData) {
			t.Fatalf("data:\n got %q\nwant %q", gotData, wantData)
		}
		if gotErr != wantErr {
			t.Fatalf("error: got %v, want %v", gotErr, wantErr)
		}
		if !bytes.Equal(gotRest, wantRest) {
			t.Fatalf("left for the next command:\n got %q\nwant %q", gotRest, wantRest)
		}

		// Second opinion: net/textproto's DotReader, where its framing is
		// the RFC's (no bare LF) and it can be compared (no limit). It
		// turns CRLF into LF and holds back a CR until it sees the next
		// byte, so a CR the input ends on is not in its data.
		if limit > 0 || !noBareLF(in) {
			return
		}
		tbr := bufio.NewReaderSize(src(), size)
		tpData, tpErr, tpRest := readData(textproto.NewReader(tbr).DotReader(), tbr, readSize)
		norm := bytes.ReplaceAll(gotData, []byte("\r\n"), []byte("\n"))
		if gotErr == io.ErrUnexpectedEOF {
			norm = bytes.TrimSuffix(norm, []byte("\r"))
		}
		if !bytes.Equal(norm, tpData) || gotErr != tpErr || !bytes.Equal(gotRest, tpRest) {
			t.Fatalf("textproto disagrees:\n got %q %v rest %q\n textproto %q %v rest %q", norm, gotErr, gotRest, tpData, tpErr, tpRest)
		}
	})
}

func TestDataReaderFraming(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		limit int64
		data  string
		err   error
		rest  string
	}{
		{"plain", "Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", 0, "Subject: x\r\n\r\nbody\r\n", io.EOF, "QUIT\r\n"},
		{"empty", ".\r\nQUIT\r\n", 0, "", io.EOF, "QUIT\r\n"},
		{"dot-stuffed", "..x\r\n..\r\n.\r\n", 0, ".x\r\n.\r\n", io.EOF, ""},
		{"bare CR before the last CRLF", "last line\r\r\n.\r\nQUIT\r\n", 0, "last line\r\r\n", io.EOF, "QUIT\r\n"},
		{"dot-stuffed line after a bare CR", "a\r\r\n..b\r\n.\r\n", 0, "a\r\r\n.b\r\n", io.EOF, ""},
		{"bare CRs", "a\rb\r\r\r\n.\r\n", 0, "a\rb\r\r\r\n", io.EOF, ""},
		{"dot CR then data", ".\rX\r\n.\r\n", 0, "\rX\r\n", io.EOF, ""},
		{"dot CR CR LF", ".\r\r\n.\r\n", 0, "\r\r\n", io.EOF, ""},
		{"bare LF is data", "a\n.\nb\r\n.\r\n", 0, "a\n.\nb\r\n", io.EOF, ""},
		{"LF dot CRLF is data", "a\n.\r\nb\r\n.\r\n", 0, "a\n.\r\nb\r\n", io.EOF, ""},
		{"CR LF split by a bare CR", "a\r\r.\r\n.\r\n", 0, "a\r\r.\r\n", io.EOF, ""},
		{"cut short", "a\r\nb", 0, "a\r\nb", io.ErrUnexpectedEOF, ""},
		{"cut short after dot", "a\r\n.", 0, "a\r\n", io.ErrUnexpectedEOF, ""},
		{"cut short after dot CR", "a\r\n.\r", 0, "a\r\n", io.ErrUnexpectedEOF, ""},
		{"one under the limit", "..abc\r\n.\r\nQUIT\r\n", 7, ".abc\r\n", io.EOF, "QUIT\r\n"},
		{"exactly the limit", "..abc\r\n.\r\nQUIT\r\n", 6, ".abc\r\n", io.EOF, "QUIT\r\n"},
		{"one over the limit", "..abc\r\n.\r\nQUIT\r\n", 5, ".abc\r", ErrDataTooLarge, "QUIT\r\n"},
		{"limit with a stuffed line last", "ab\r\n..\r\n.\r\n", 5, "ab\r\n.", ErrDataTooLarge, ""},
	}
	for _, tc := range tests {
		for _, bufSize := range []int{16, 4096} {
			for _, readSize := range []int{1, 3, 4096} {
				br := bufio.NewReaderSize(iotest.HalfReader(bytes.NewReader([]byte(tc.in))), bufSize)
				dr := &dataReader{r: br, limited: tc.limit > 0, n: tc.limit}
				data, err, rest := readData(dr, br, readSize)
				if string(data) != tc.data || err != tc.err || string(rest) != tc.rest {
					t.Errorf("%s (bufio %d, reads of %d): got %q, %v, rest %q; want %q, %v, rest %q",
						tc.name, bufSize, readSize, data, err, rest, tc.data, tc.err, tc.rest)
				}
			}
		}
	}
}
