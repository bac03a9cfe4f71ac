package encrypted

import (
	"bytes"
	"errors"
	"strings"

	"github.com/smimefilter/smimefilter/internal/mediatype"
)

// pgpMIME checks a multipart/encrypted body (RFC 3156 §4, RFC 2046 §5.1.1):
// a short preamble, the application/pgp-encrypted control part holding
// "Version: 1", the application/octet-stream part holding one armored
// message, the close delimiter and a short or blank epilogue. Only the
// armored message streams; every other line is bounded and buffered.
type pgpMIME struct {
	delim    []byte // "--" boundary
	state    int
	part     int // body parts begun
	line     [pgpMIMEMaxLine]byte
	nline    int
	passing  bool // the current line of part 2 goes to the armor
	hdr      []byte
	control  []byte
	preamble int
	epilogue int
	text     bool // the epilogue has more than whitespace
	armor    *armor
}

const (
	pgpMIMEMaxLine     = 1024
	pgpMIMEMaxPreamble = 1024
	pgpMIMEMaxHeader   = 4096
	pgpMIMEMaxControl  = 1024
	pgpMIMEMaxEpilogue = 1024
)

const (
	mPreamble = iota
	mHeader
	mControl
	mArmor
	mEpilogue
)

var (
	errMIMEPreamble  = errors.New("PGP/MIME: preamble longer than 1 KiB")
	errMIMELine      = errors.New("PGP/MIME: line too long")
	errMIMEHeader    = errors.New("PGP/MIME: body part header too long")
	errMIMEField     = errors.New("PGP/MIME: malformed body part header")
	errMIMEControl   = errors.New("PGP/MIME: first body part is not \"Version: 1\"")
	errMIMEType1     = errors.New("PGP/MIME: first body part is not application/pgp-encrypted")
	errMIMEType2     = errors.New("PGP/MIME: second body part is not application/octet-stream")
	errMIMECTE       = errors.New("PGP/MIME: body part with a transfer encoding")
	errMIMEParts     = errors.New("PGP/MIME: not exactly two body parts")
	errMIMEDelimiter = errors.New("PGP/MIME: line starts with the boundary but is no delimiter")
	errMIMENoClose   = errors.New("PGP/MIME: no close delimiter")
	errMIMEEpilogue  = errors.New("PGP/MIME: epilogue longer than 1 KiB")
)

func newPGPMIME(boundary string) *pgpMIME {
	return &pgpMIME{delim: []byte("--" + boundary), armor: newArmor()}
}

func (m *pgpMIME) write(p []byte) error {
	for len(p) > 0 {
		switch {
		case m.state == mEpilogue:
			for _, c := range p {
				if !isSpace(c) {
					m.text = true
				}
			}
			m.epilogue += len(p)
			if m.text && m.epilogue > pgpMIMEMaxEpilogue {
				return errMIMEEpilogue
			}
			return nil
		case m.passing:
			// The rest of a part 2 line that is no delimiter.
			i := bytes.IndexByte(p, '\n') + 1
			if i == 0 {
				i = len(p)
			} else {
				m.passing = false
			}
			if err := m.armor.write(p[:i]); err != nil {
				return err
			}
			p = p[i:]
		case m.state == mArmor && m.nline == 0:
			// A line of the armored message: decide from p itself
			// whether it can be a delimiter, so that the line goes on
			// in one piece.
			n := min(len(p), len(m.delim))
			k := 0
			for k < n && p[k] == m.delim[k] {
				k++
			}
			switch {
			case k < n:
				m.passing = true
			case n < len(m.delim):
				m.nline = copy(m.line[:], p)
				return nil
			default:
				m.nline = copy(m.line[:], p[:n])
				p = p[n:]
			}
		default:
			c := p[0]
			p = p[1:]
			if c == '\n' {
				if err := m.endLine(); err != nil {
					return err
				}
				continue
			}
			if m.nline == len(m.line) {
				return errMIMELine
			}
			m.line[m.nline] = c
			m.nline++
			if m.state == mArmor && !m.maybeDelimiter() {
				// Not a delimiter: hand over what was held back.
				if err := m.armor.write(m.line[:m.nline]); err != nil {
					return err
				}
				m.nline = 0
				m.passing = true
			}
		}
	}
	return nil
}

// maybeDelimiter reports whether the buffered start of a line could still be
// a delimiter line.
func (m *pgpMIME) maybeDelimiter() bool {
	l := m.line[:m.nline]
	if len(l) <= len(m.delim) {
		return bytes.HasPrefix(m.delim, l)
	}
	return bytes.HasPrefix(l, m.delim)
}

// delimiter classifies a line (without its line break): 0 for none, 1 for
// a delimiter, 2 for the close delimiter (RFC 2046 §5.1.1: the boundary,
// "--" for the close one, then optional blanks). A line that starts with
// the boundary and goes on otherwise is an error.
func (m *pgpMIME) delimiter(l []byte) (int, error) {
	if !bytes.HasPrefix(l, m.delim) {
		return 0, nil
	}
	rest := l[len(m.delim):]
	kind := 1
	if bytes.HasPrefix(rest, []byte("--")) {
		kind, rest = 2, rest[2:]
	}
	if len(bytes.TrimRight(rest, " \t\r")) > 0 {
		return 0, errMIMEDelimiter
	}
	return kind, nil
}

// endLine handles a complete buffered line.
func (m *pgpMIME) endLine() error {
	full := m.line[:m.nline]
	m.nline = 0
	l := bytes.TrimSuffix(full, []byte("\r"))
	d, err := m.delimiter(l)
	if err != nil {
		return err
	}
	if d != 0 {
		return m.boundary(d)
	}
	switch m.state {
	case mPreamble:
		m.preamble += len(full) + 1
		if m.preamble > pgpMIMEMaxPreamble {
			return errMIMEPreamble
		}
	case mHeader:
		if len(l) == 0 {
			return m.endHeader()
		}
		if len(m.hdr)+len(l)+1 > pgpMIMEMaxHeader {
			return errMIMEHeader
		}
		m.hdr = append(append(m.hdr, l...), '\n')
	case mControl:
		if len(m.control)+len(full)+1 > pgpMIMEMaxControl {
			return errMIMEControl
		}
		m.control = append(append(m.control, full...), '\n')
	case mArmor:
		// A line shorter than the boundary that was held back.
		return m.armor.write(append(full, '\n'))
	}
	return nil
}

// boundary handles a delimiter line (d 1) or the close delimiter (d 2).
func (m *pgpMIME) boundary(d int) error {
	switch m.state {
	case mHeader:
		return errMIMEField
	case mControl:
		// RFC 3156 §4: the control part's content.
		f := strings.Fields(string(m.control))
		if len(f) != 2 || !strings.EqualFold(f[0], "Version:") || f[1] != "1" {
			return errMIMEControl
		}
	case mArmor:
		if err := m.armor.close(); err != nil {
			return err
		}
	}
	m.part++
	if d == 2 {
		if m.part != 3 {
			return errMIMEParts
		}
		m.state = mEpilogue
		return nil
	}
	if m.part > 2 {
		return errMIMEParts
	}
	m.state, m.hdr = mHeader, m.hdr[:0]
	return nil
}

// endHeader checks the header of body part 1 or 2.
func (m *pgpMIME) endHeader() error {
	var ct, cte string
	for _, f := range unfold(m.hdr) {
		name, value, ok := strings.Cut(f, ":")
		if !ok || name == "" || strings.TrimSpace(name) != name {
			return errMIMEField
		}
		switch strings.ToLower(name) {
		case "content-type":
			ct = value
		case "content-transfer-encoding":
			cte = strings.ToLower(strings.TrimSpace(value))
		}
	}
	if cte != "" && cte != "7bit" && cte != "8bit" && cte != "binary" {
		return errMIMECTE
	}
	mt, _ := mediatype.Parse(ct)
	if m.part == 1 {
		if mt != "application/pgp-encrypted" {
			return errMIMEType1
		}
		m.state, m.control = mControl, m.control[:0]
		return nil
	}
	if mt != "application/octet-stream" {
		return errMIMEType2
	}
	m.state = mArmor
	return nil
}

// unfold returns the header fields, continuation lines joined (RFC 5322
// §2.2.3).
func unfold(h []byte) []string {
	var fields []string
	for _, l := range strings.Split(strings.TrimSuffix(string(h), "\n"), "\n") {
		if len(fields) > 0 && l != "" && (l[0] == ' ' || l[0] == '\t') {
			fields[len(fields)-1] += l
			continue
		}
		fields = append(fields, l)
	}
	return fields
}

func (m *pgpMIME) close() error {
	if m.nline > 0 && !m.passing {
		// The last line has no line break.
		if err := m.endLine(); err != nil {
			return err
		}
	}
	if m.state != mEpilogue {
		return errMIMENoClose
	}
	return nil
}
