package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// Read returns the message data of a DATA command: the lines up to the
// end-of-data line ".CRLF", with the leading dot of every other line that
// starts with one removed (RFC 5321 sections 4.1.1.4 and 4.5.2). Line
// endings stay CRLF. It returns io.EOF after the end-of-data line and
// io.ErrUnexpectedEOF if the connection ends before it.
//
// Only CRLF ends a line: a CR or LF on its own is data, and after a CR that
// is not followed by LF the next byte is examined again (it may be the CR of
// a CRLF). Accepting a bare LF as a line end would let one message smuggle
// another past a server that does not
// (https://www.postfix.org/smtp-smuggling.html).
//
// With a size limit, the limit is the number of data bytes returned (after
// dot-unstuffing, without the end-of-data line): ErrDataTooLarge comes when
// one more data byte is due, not when the budget reaches zero, so a message
// of exactly the limit is accepted.
func (r *dataReader) Read(b []byte) (n int, err error) {
	// smimefilter patch: the framing above replaces upstream's copy of
	// net/textproto's state machine, which lost the byte after a bare CR
	// (so "\r\r\n.\r\n" did not end the data) and refused a message of
	// exactly MaxMessageBytes.
	const (
		stateBeginLine = iota // beginning of line; initial state; must be zero
		stateDot              // read . at beginning of line, not yet returned
		stateDotCR            // read .\r at beginning of line, not yet returned
		stateCR               // returned \r (possibly at end of line)
		stateData             // reading data in middle of line
		stateEOF              // reached .\r\n end marker line
	)
	for n < len(b) && r.state != stateEOF {
		// smimefilter patch: hand over what has arrived instead of
		// blocking until b is full, so the body streams as it comes.
		if n > 0 && r.r.Buffered() == 0 {
			break
		}
		// smimefilter patch: in the middle of a line only CR can change
		// the state, so copy everything buffered up to the next CR at
		// once instead of one ReadByte call per byte.
		if r.state == stateData && r.r.Buffered() > 0 {
			buf, _ := r.r.Peek(r.r.Buffered())
			i := bytes.IndexByte(buf, '\r')
			if i < 0 {
				i = len(buf)
			}
			if r.limited && int64(i) > r.n {
				i = int(r.n)
			}
			if i > 0 {
				k := copy(b[n:], buf[:i])
				r.r.Discard(k)
				n += k
				if r.limited {
					r.n -= int64(k)
				}
				continue
			}
		}
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch {
		case r.state == stateBeginLine && c == '.':
			r.state = stateDot
			continue
		case r.state == stateDot && c == '\r':
			r.state = stateDotCR
			continue
		case r.state == stateDotCR && c == '\n':
			r.state = stateEOF
			continue
		}
		// A byte of data is due. Over the limit, leave it unread and the
		// state as it is, so that every later Read says the same.
		if r.limited && r.n <= 0 {
			r.r.UnreadByte()
			if n == 0 {
				err = ErrDataTooLarge
			}
			break
		}
		if r.state == stateDotCR {
			// ".\r" then not "\n": the dot was stuffing, the CR is
			// data and c is examined again after it.
			r.r.UnreadByte()
			c = '\r'
		}
		switch {
		case c == '\r':
			r.state = stateCR
		case c == '\n' && r.state == stateCR:
			r.state = stateBeginLine
		default:
			r.state = stateData
		}
		b[n] = c
		n++
		if r.limited {
			r.n--
		}
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	return
}
