package encrypted

import (
	"bytes"
	"encoding/base64"
	"errors"
)

// b64 undoes a base64 transfer encoding (RFC 2045 §6.8) as bytes arrive:
// line breaks and blanks may sit anywhere, padding ends the data and only
// whitespace may follow it.
type b64 struct {
	next   stage
	clean  [4096]byte // alphabet characters not yet decoded
	nclean int
	pads   int // '=' seen; >0 means the data has ended
	out    [3072]byte
}

const b64Invalid = 0xff

// b64Class maps a byte to its 6-bit value, or b64Invalid.
var b64Class = func() (t [256]byte) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = b64Invalid
	}
	for i := range len(alphabet) {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

var (
	errB64Char     = errors.New("base64: invalid character")
	errB64AfterPad = errors.New("base64: data after the padding")
	errB64Length   = errors.New("base64: incomplete final group")
)

func newBase64(next stage) *b64 { return &b64{next: next} }

func (d *b64) write(p []byte) error {
	for len(p) > 0 {
		if d.nclean == 0 && d.pads == 0 {
			n, err := d.fast(p)
			if err != nil {
				return err
			}
			p = p[n:]
			if len(p) == 0 {
				return nil
			}
		}
		if d.pads > 0 {
			for _, c := range p {
				switch {
				case c == '=':
					d.pads++
					if d.pads > 2 {
						return errB64AfterPad
					}
				case isSpace(c):
				default:
					return errB64AfterPad
				}
			}
			return nil
		}
		i, n := 0, d.nclean
		for ; i < len(p) && n < len(d.clean); i++ {
			c := p[i]
			if b64Class[c] != b64Invalid {
				d.clean[n] = c
				n++
				continue
			}
			if isSpace(c) {
				continue
			}
			if c != '=' {
				// What came before goes on first, so that the
				// reason does not depend on how writes split.
				d.nclean = n
				if err := d.flush(false); err != nil {
					return err
				}
				return errB64Char
			}
			break
		}
		d.nclean = n
		p = p[i:]
		if err := d.flush(false); err != nil {
			return err
		}
		if len(p) > 0 && p[0] == '=' {
			// The padding goes in the stream state, checked once the
			// group it completes is known in close.
			d.pads = 1
			p = p[1:]
		}
	}
	return nil
}

// fast decodes whole lines (or a window of one long line) straight from p
// when they hold complete groups and no padding, which is every line but the
// last one of any real encoder (76 or 64 characters): encoding/base64 skips
// the line breaks itself and refuses anything else, and then the byte-wise
// path takes over. It returns how much of p it consumed.
func (d *b64) fast(p []byte) (int, error) {
	const window = len(d.out) / 3 * 4
	consumed := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > window {
			chunk = chunk[:window]
			if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
				chunk = chunk[:i+1]
			}
		}
		if bytes.IndexByte(chunk, '=') >= 0 {
			return consumed, nil
		}
		m, err := base64.StdEncoding.Decode(d.out[:], chunk)
		if err != nil {
			return consumed, nil
		}
		if err := d.next.write(d.out[:m]); err != nil {
			return consumed, err
		}
		consumed += len(chunk)
		p = p[len(chunk):]
	}
	return consumed, nil
}

// flush decodes the complete groups of four; at the end it also decodes the
// last, partial group.
func (d *b64) flush(final bool) error {
	n := d.nclean / 4 * 4
	if final {
		n = d.nclean
	}
	if n == 0 {
		return nil
	}
	var m int
	if n%4 == 0 {
		m, _ = base64.StdEncoding.Decode(d.out[:], d.clean[:n])
	} else {
		if n%4 == 1 || (d.pads > 0 && d.pads != 4-n%4) {
			return errB64Length
		}
		var err error
		m, err = base64.RawStdEncoding.Decode(d.out[:], d.clean[:n])
		if err != nil {
			// Non-zero bits in the last character's unused part.
			return errB64Length
		}
	}
	d.nclean = copy(d.clean[:], d.clean[n:d.nclean])
	return d.next.write(d.out[:m])
}

func (d *b64) close() error {
	if d.pads > 0 && d.nclean%4 == 0 {
		return errB64Length // padding with nothing to pad
	}
	if err := d.flush(true); err != nil {
		return err
	}
	return d.next.close()
}

// qp undoes a quoted-printable transfer encoding (RFC 2045 §6.7): =XX
// escapes and soft line breaks ("=" at the end of a line, trailing blanks
// allowed). Anything that is not valid quoted-printable makes the body not
// qualify.
type qp struct {
	next  stage
	state int
	hi    byte
	out   [4096]byte
	n     int
}

const (
	qpText   = iota
	qpEq     // after '='
	qpEqHex  // after '=' and one hex digit
	qpSoftWS // after '=' and blanks: a soft line break
	qpSoftCR // after '=' [blanks] CR
)

var errQP = errors.New("quoted-printable: invalid escape")

func newQP(next stage) *qp { return &qp{next: next} }

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func (q *qp) write(p []byte) error {
	for _, c := range p {
		switch q.state {
		case qpText:
			if c == '=' {
				q.state = qpEq
				continue
			}
			q.out[q.n] = c
			q.n++
		case qpEq:
			if v, ok := unhex(c); ok {
				q.hi, q.state = v, qpEqHex
				continue
			}
			switch c {
			case ' ', '\t':
				q.state = qpSoftWS
			case '\r':
				q.state = qpSoftCR
			case '\n':
				q.state = qpText
			default:
				return q.fail()
			}
		case qpEqHex:
			v, ok := unhex(c)
			if !ok {
				return q.fail()
			}
			q.out[q.n] = q.hi<<4 | v
			q.n++
			q.state = qpText
		case qpSoftWS:
			switch c {
			case ' ', '\t':
			case '\r':
				q.state = qpSoftCR
			case '\n':
				q.state = qpText
			default:
				return q.fail()
			}
		case qpSoftCR:
			if c != '\n' {
				return q.fail()
			}
			q.state = qpText
		}
		if q.n == len(q.out) {
			if err := q.next.write(q.out[:]); err != nil {
				return err
			}
			q.n = 0
		}
	}
	if q.n > 0 {
		err := q.next.write(q.out[:q.n])
		q.n = 0
		return err
	}
	return nil
}

// fail passes on what was decoded before the bad escape, so that the reason
// does not depend on how writes split.
func (q *qp) fail() error {
	if q.n > 0 {
		if err := q.next.write(q.out[:q.n]); err != nil {
			return err
		}
		q.n = 0
	}
	return errQP
}

func (q *qp) close() error {
	// A soft line break may end the body (blanks after it were removed by
	// the transport, or it sits on the last line); a cut escape may not.
	if q.state == qpEqHex {
		return errQP
	}
	return q.next.close()
}
