package smime_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/smimefilter/smimefilter/smime"
)

func TestReadHeader(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		max       int
		wantNames []string
		wantRaw   []string // Raw of each field, when checked
		wantBody  string
		wantErr   error
	}{
		{
			name:      "crlf",
			in:        "From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n",
			wantNames: []string{"From", "Subject"},
			wantRaw:   []string{"From: a@example.test\r\n", "Subject: hi\r\n"},
			wantBody:  "body\r\n",
		},
		{
			name:      "bare lf kept",
			in:        "From: a@example.test\nSubject: hi\n\nbody\n",
			wantNames: []string{"From", "Subject"},
			wantRaw:   []string{"From: a@example.test\n", "Subject: hi\n"},
			wantBody:  "body\n",
		},
		{
			name:      "folded with space and tab",
			in:        "To: a@example.test,\r\n b@example.test,\r\n\tc@example.test\r\nX: y\r\n\r\n",
			wantNames: []string{"To", "X"},
			wantRaw:   []string{"To: a@example.test,\r\n b@example.test,\r\n\tc@example.test\r\n", "X: y\r\n"},
		},
		{
			name:      "header only, then EOF",
			in:        "From: a@example.test\r\nSubject: hi\r\n",
			wantNames: []string{"From", "Subject"},
		},
		{
			name:      "header only, last line unterminated",
			in:        "From: a@example.test\r\nSubject: hi",
			wantNames: []string{"From", "Subject"},
			wantRaw:   []string{"From: a@example.test\r\n", "Subject: hi"},
		},
		{
			name: "empty input",
			in:   "",
		},
		{
			name:     "empty header",
			in:       "\r\nbody",
			wantBody: "body",
		},
		{
			name:      "whitespace before colon (obsolete syntax)",
			in:        "Subject : hi\r\n\r\n",
			wantNames: []string{"Subject"},
		},
		{
			name:      "empty value and 8-bit value",
			in:        "X-Empty:\r\nSubject: Grüße\r\n\r\n",
			wantNames: []string{"X-Empty", "Subject"},
		},
		{
			name:      "blank line is the first CRLF CRLF, body keeps its own",
			in:        "A: 1\r\n\r\n\r\nB: 2\r\n",
			wantNames: []string{"A"},
			wantBody:  "\r\nB: 2\r\n",
		},
		{
			name:      "lone CR inside a value is kept",
			in:        "A: x\ry\r\n\r\n",
			wantNames: []string{"A"},
			wantRaw:   []string{"A: x\ry\r\n"},
		},
		// Read as leniently as Postfix and Dovecot: a line that is not a
		// field ends the header and starts the body; nothing is refused.
		{name: "continuation first", in: " folded\r\nA: 1\r\n\r\n", wantBody: " folded\r\nA: 1\r\n\r\n"},
		{name: "no colon", in: "A: 1\r\nFrom a@example.test\r\nB: 2\r\n\r\nbody", wantNames: []string{"A"}, wantBody: "From a@example.test\r\nB: 2\r\n\r\nbody"},
		{name: "empty name", in: ": value\r\n\r\n", wantBody: ": value\r\n\r\n"},
		{name: "folded line missing its space", in: "To: a@example.test,\r\nb@example.test\r\nSubject: s\r\n\r\nbody", wantNames: []string{"To"}, wantBody: "b@example.test\r\nSubject: s\r\n\r\nbody"},
		{name: "mbox From_ line", in: "From alice@example.test Mon Jun  2 10:00:00 2025\r\nA: 1\r\n\r\n", wantNames: []string{"", "A"}},
		{name: "mbox From_ line not first", in: "A: 1\r\nFrom alice@example.test Mon Jun  2 10:00:00 2025\r\n\r\n", wantNames: []string{"A"}, wantBody: "From alice@example.test Mon Jun  2 10:00:00 2025\r\n\r\n"},
		{name: "continuation of an mbox From_ line", in: "From a\r\n x\r\nA: 1\r\n\r\n", wantNames: []string{""}, wantBody: " x\r\nA: 1\r\n\r\n"},
		{name: "space in name", in: "Bad Name: x\r\n\r\n", wantBody: "Bad Name: x\r\n\r\n"},
		{name: "8-bit name, NUL in value", in: "X-Gr\xfc\xdfe: 1\r\nA: x\x00y\r\n\r\nb", wantNames: []string{"X-Gr\xfc\xdfe", "A"}, wantBody: "b"},
		{name: "NUL in name", in: "X\x00Y: 1\r\n\r\n", wantNames: []string{"X\x00Y"}},
		{name: "bare LF ends a non-field line too", in: "A: 1\nnot a field\nrest", wantNames: []string{"A"}, wantBody: "not a field\nrest"},
		{name: "too large", in: "A: " + strings.Repeat("x", 100) + "\r\n\r\n", max: 50, wantErr: smime.ErrHeaderTooLarge},
		{name: "too large, blank line just past the limit", in: "A: 1\r\n\r\n", max: 7, wantErr: smime.ErrHeaderTooLarge},
		{name: "fits exactly", in: "A: 1\r\n\r\nbody", max: 8, wantNames: []string{"A"}, wantBody: "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			max := tt.max
			if max == 0 {
				max = maxHeader
			}
			br := bufio.NewReader(strings.NewReader(tt.in))
			h, err := smime.ReadHeader(br, max)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			var names []string
			for _, f := range h.Fields {
				names = append(names, f.Name)
			}
			if strings.Join(names, ",") != strings.Join(tt.wantNames, ",") {
				t.Errorf("got fields %q, want %q", names, tt.wantNames)
			}
			for i, raw := range tt.wantRaw {
				if i < len(h.Fields) && string(h.Fields[i].Raw) != raw {
					t.Errorf("field %d Raw %q, want %q", i, h.Fields[i].Raw, raw)
				}
			}
			rest, _ := io.ReadAll(br)
			if body := string(h.Lead()) + string(rest); body != tt.wantBody {
				t.Errorf("body %q, want %q", body, tt.wantBody)
			}
			// The header block and the body make up the input again.
			var buf bytes.Buffer
			if _, err := h.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			if got := buf.String() + string(rest); got != tt.in {
				t.Errorf("WriteTo + body = %q, want the input %q", got, tt.in)
			}
		})
	}
}

// TestReadHeaderLimitKeepsBody: the limit stops reading at the limit, even
// with a reader that has much more buffered, so nothing of the body is lost
// on error paths that want to pass the message on.
func TestReadHeaderLimitKeepsBody(t *testing.T) {
	in := strings.Repeat("X-Long: "+strings.Repeat("y", 70)+"\r\n", 100) + "\r\nbody"
	br := bufio.NewReaderSize(strings.NewReader(in), 64<<10)
	_, err := smime.ReadHeader(br, 1000)
	if !errors.Is(err, smime.ErrHeaderTooLarge) {
		t.Fatalf("got %v, want ErrHeaderTooLarge", err)
	}
	rest, _ := io.ReadAll(br)
	if consumed := len(in) - len(rest); consumed > 1000 {
		t.Errorf("consumed %d bytes, limit 1000", consumed)
	}
}

// TestReadHeaderSlowReader reads one byte at a time, the worst case for
// line assembly across buffer refills.
func TestReadHeaderSlowReader(t *testing.T) {
	in := "From: a@example.test\r\nSubject: " + strings.Repeat("long ", 2000) + "\r\n\t folded\r\n\r\nbody"
	br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(in)), 16)
	h, err := smime.ReadHeader(br, maxHeader)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Fields) != 2 || !strings.HasSuffix(string(h.Fields[1].Raw), "\r\n\t folded\r\n") {
		t.Fatalf("fields %q", h.Fields)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "body" {
		t.Errorf("body %q", rest)
	}
}

func TestReadHeaderReadError(t *testing.T) {
	boom := errors.New("connection reset")
	br := bufio.NewReader(io.MultiReader(strings.NewReader("A: 1\r\nB: "), iotest.ErrReader(boom)))
	if _, err := smime.ReadHeader(br, maxHeader); !errors.Is(err, boom) {
		t.Fatalf("got %v, want the reader's error", err)
	}
}

func TestHeaderGet(t *testing.T) {
	in := "Subject: first\r\n" +
		"content-type: text/plain;\r\n" +
		"\tcharset=utf-8\r\n" +
		"Subject: second\r\n" +
		"X-Spaces:   padded value  \r\n" +
		"X-LF: a\n b\n" +
		"\r\n"
	h, err := smime.ReadHeader(bufio.NewReader(strings.NewReader(in)), maxHeader)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"Subject":      "first",
		"SUBJECT":      "first",
		"Content-Type": "text/plain;\tcharset=utf-8",
		"X-Spaces":     "padded value",
		"X-LF":         "a b",
		"Missing":      "",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("Get(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestHeaderWriteToByHand: a Header built by the caller gets a CRLF blank
// line.
func TestHeaderWriteToByHand(t *testing.T) {
	h := &smime.Header{Fields: []smime.Field{{Name: "A", Raw: []byte("A: 1\r\n")}}}
	var b bytes.Buffer
	n, err := h.WriteTo(&b)
	if err != nil || n != int64(b.Len()) || b.String() != "A: 1\r\n\r\n" {
		t.Errorf("WriteTo = %d, %v, %q", n, err, b.String())
	}
}
