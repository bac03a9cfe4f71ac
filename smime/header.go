package smime

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrHeaderTooLarge means the header block did not end within the byte limit
// given to ReadHeader.
var ErrHeaderTooLarge = errors.New("smime: message header too large")

// Field is one header field exactly as received: Raw holds the name, colon,
// value, any folding, and the final CRLF, byte for byte. A Field with an
// empty Name is an mbox "From " line that opened the message: not a field,
// but kept in place, outside any encryption, as the mail store would keep it.
type Field struct {
	Name string // as written, e.g. "Content-Type"
	Raw  []byte
}

// Header is a message's header block, its fields in order. The bytes are kept
// as received so that an entity moved into an envelope still verifies when it
// is signed (RFC 8551 §3.1.1: no re-folding, no re-encoding).
type Header struct {
	Fields []Field

	// end is the blank line that ended the header ("\r\n" or "\n"), or empty
	// when the message ended inside the header or a line that is not a field
	// ended it. lead is that line: the first line of the body, already read.
	// parsed tells a Header read by ReadHeader from one built by hand, which
	// gets a CRLF when written.
	end    []byte
	lead   []byte
	parsed bool
}

// ReadHeader reads the header block up to and including the blank line that
// ends it. Lines end in CRLF; a bare LF is accepted as well and the bytes are
// kept as they were. A message with no blank line (header only, then EOF) is
// valid: its body is empty. At most max bytes are consumed from r, so the body
// that follows is never read into the header.
//
// It reads as leniently as Postfix's cleanup and Dovecot do, because content
// the mail store would take must not be refused here: a line that is neither
// a field, nor the continuation of one, nor blank ends the header and is the
// first line of the body (Lead); an mbox "From " line at the very start is
// kept as it is; field names may hold 8-bit bytes, values NULs. The only
// error besides a failed read is ErrHeaderTooLarge.
func ReadHeader(r *bufio.Reader, max int) (*Header, error) {
	h := &Header{parsed: true}
	remaining := max
	for first := true; ; first = false {
		line, err := readLine(r, &remaining)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if len(line) > 0 {
			switch {
			case isBlankLine(line):
				h.end = line
				return h, nil
			case (line[0] == ' ' || line[0] == '\t') && len(h.Fields) > 0 && h.Fields[len(h.Fields)-1].Name != "":
				// RFC 5322 §2.2.3: folding whitespace continues the previous field.
				f := &h.Fields[len(h.Fields)-1]
				f.Raw = append(f.Raw, line...)
			case first && bytes.HasPrefix(line, []byte("From ")):
				h.Fields = append(h.Fields, Field{Raw: line})
			default:
				name, ok := fieldName(line)
				if !ok {
					h.lead = line
					return h, nil
				}
				h.Fields = append(h.Fields, Field{Name: name, Raw: line})
			}
		}
		if err != nil { // io.EOF: header-only message
			return h, nil
		}
	}
}

// Lead is the first line of the body when a line that is not a field ended
// the header, already consumed from the reader; nil otherwise. WriteTo writes
// it after the fields, so a header written back is followed by the rest of
// the body exactly as received.
func (h *Header) Lead() []byte { return h.lead }

// readLine returns the next line including its LF, never consuming more than
// *remaining bytes from r. A final line without LF comes back with io.EOF.
func readLine(r *bufio.Reader, remaining *int) ([]byte, error) {
	var line []byte
	for {
		if *remaining <= 0 {
			return nil, fmt.Errorf("%w: no end of header within the limit", ErrHeaderTooLarge)
		}
		// Peek what is buffered (at least one byte) so that a limit that ends
		// mid-line never consumes body bytes beyond it.
		if _, err := r.Peek(1); err != nil {
			if errors.Is(err, io.EOF) {
				return line, io.EOF
			}
			return line, fmt.Errorf("smime: reading header: %w", err)
		}
		n := min(r.Buffered(), *remaining)
		buf, _ := r.Peek(n)
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			line = append(line, buf[:i+1]...)
			_, _ = r.Discard(i + 1)
			*remaining -= i + 1
			return line, nil
		}
		line = append(line, buf...)
		_, _ = r.Discard(n)
		*remaining -= n
	}
}

func isBlankLine(line []byte) bool {
	return string(line) == "\r\n" || string(line) == "\n"
}

func endsWithNewline(b []byte) bool {
	return len(b) > 0 && b[len(b)-1] == '\n'
}

// fieldName returns the name of a field line: the bytes before the colon,
// optionally followed by whitespace (obsolete syntax, RFC 5322 §4.5.3, still
// seen in the wild). RFC 5322 ftext is printable US-ASCII, but Postfix and
// Dovecot take 8-bit and control bytes in names as well, and so does this:
// only a colon, whitespace and line ends cannot be part of a name.
func fieldName(line []byte) (string, bool) {
	i := 0
	for i < len(line) && line[i] != ':' && line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\n' {
		i++
	}
	if i == 0 {
		return "", false
	}
	j := i
	for j < len(line) && (line[j] == ' ' || line[j] == '\t') {
		j++
	}
	if j >= len(line) || line[j] != ':' {
		return "", false
	}
	return string(line[:i]), true
}

// Get returns the unfolded value of the first field with that name (compared
// case-insensitively), with surrounding whitespace removed, or "" if there is
// none.
func (h *Header) Get(name string) string {
	for _, f := range h.Fields {
		if strings.EqualFold(f.Name, name) {
			return fieldValue(f.Raw)
		}
	}
	return ""
}

// has reports whether a field with that name exists.
func (h *Header) has(name string) bool {
	for _, f := range h.Fields {
		if strings.EqualFold(f.Name, name) {
			return true
		}
	}
	return false
}

// fieldValue unfolds a raw field (RFC 5322 §2.2.3: remove each CRLF that
// precedes whitespace) and returns what follows the colon, trimmed.
func fieldValue(raw []byte) string {
	i := bytes.IndexByte(raw, ':')
	if i < 0 {
		return ""
	}
	v := raw[i+1:]
	var b strings.Builder
	b.Grow(len(v))
	for len(v) > 0 {
		j := bytes.IndexByte(v, '\n')
		if j < 0 {
			b.Write(v)
			break
		}
		line := v[:j]
		line = bytes.TrimSuffix(line, []byte("\r"))
		b.Write(line)
		v = v[j+1:]
	}
	return strings.Trim(b.String(), " \t\r\n")
}

// WriteTo writes the header as it was read, including the blank line that
// ended it (none if the message ended inside the header) or the Lead line. A
// Header built by hand gets a CRLF blank line.
func (h *Header) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for _, f := range h.Fields {
		n, err := w.Write(f.Raw)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	end := h.end
	if !h.parsed {
		end = crlf
	}
	n, err := w.Write(end)
	total += int64(n)
	if err != nil || len(h.lead) == 0 {
		return total, err
	}
	n, err = w.Write(h.lead)
	total += int64(n)
	return total, err
}

var crlf = []byte("\r\n")

// newline is the line ending the header used, so that lines this package adds
// match the message (the daemon sees CRLF; bare LF is kept for files).
func (h *Header) newline() []byte {
	if string(h.end) == "\n" {
		return h.end
	}
	for _, f := range h.Fields {
		if bytes.HasSuffix(f.Raw, crlf) {
			return crlf
		}
		if endsWithNewline(f.Raw) {
			return []byte("\n")
		}
	}
	return crlf
}
