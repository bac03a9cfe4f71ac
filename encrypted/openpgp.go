package encrypted

import (
	"errors"
	"fmt"
)

// armor checks one ASCII-armored OpenPGP message (RFC 9580 §6.2, RFC 4880
// §6.2) between optional whitespace, and passes the decoded bytes to the
// packet parser. Base64 lines stream through; only the few framing lines are
// buffered.
type armor struct {
	state     int
	lineStart bool
	line      [armorMaxLine]byte
	nline     int
	headers   int
	crc       crc24
	dec       *b64
	haveCRC   bool
}

const (
	armorMaxLine    = 1024
	armorMaxHeaders = 64

	armorBegin = "-----BEGIN PGP MESSAGE-----"
	armorEnd   = "-----END PGP MESSAGE-----"
	crc24Init  = 0xb704ce
	crc24Poly  = 0x1864cfb
	crc24Mask  = 0xffffff
)

const (
	aPre      = iota // whitespace before the BEGIN line
	aBegin           // the BEGIN line (buffered)
	aHeader          // armor header lines (buffered)
	aData            // base64 lines (streamed)
	aDataTail        // blanks after a line's base64
	aCRC             // the checksum line (buffered)
	aEnd             // the END line (buffered)
	aPost            // whitespace after the END line
)

var (
	errArmorBefore   = errors.New("armor: text before the BEGIN PGP MESSAGE line")
	errArmorNoBegin  = errors.New("armor: no BEGIN PGP MESSAGE line")
	errArmorBegin    = errors.New("armor: text before the BEGIN PGP MESSAGE line")
	errArmorHeader   = errors.New("armor: header line is not \"Key: value\"")
	errArmorHeaders  = errors.New("armor: too many header lines")
	errArmorLine     = errors.New("armor: line too long")
	errArmorChar     = errors.New("armor: invalid character in the base64 data")
	errArmorCRCLine  = errors.New("armor: malformed checksum line")
	errArmorCRC      = errors.New("armor: checksum does not match the data")
	errArmorEndLine  = errors.New("armor: END PGP MESSAGE line expected")
	errArmorNoEnd    = errors.New("armor: no END PGP MESSAGE line")
	errArmorAfterEnd = errors.New("armor: text after the END PGP MESSAGE line")
)

func newArmor() *armor {
	a := &armor{lineStart: true}
	a.dec = newBase64(&crcTee{crc: &a.crc, next: &packets{}})
	a.crc = crc24Init
	return a
}

func (a *armor) write(p []byte) error {
	for len(p) > 0 {
		switch a.state {
		case aPre, aPost:
			c := p[0]
			p = p[1:]
			switch {
			case c == '\n':
				a.lineStart = true
			case isSpace(c):
				a.lineStart = false
			case a.state == aPost:
				return errArmorAfterEnd
			case !a.lineStart:
				return errArmorBefore
			default:
				a.state = aBegin
				a.line[0], a.nline = c, 1
			}
		case aData:
			c := p[0]
			switch {
			case a.lineStart && (c == '=' || c == '-'):
				// The data ends here (RFC 9580 §6.2: an optional
				// checksum line, then the tail line).
				if err := a.dec.close(); err != nil {
					return err
				}
				a.state = aEnd
				if c == '=' {
					a.state = aCRC
				}
				a.line[0], a.nline = c, 1
				p = p[1:]
			case b64Class[c] != b64Invalid || c == '=':
				i := 1
				for i < len(p) && (b64Class[p[i]] != b64Invalid || p[i] == '=') {
					i++
				}
				if err := a.dec.write(p[:i]); err != nil {
					return err
				}
				a.lineStart = false
				p = p[i:]
			case c == '\n':
				a.lineStart = true
				p = p[1:]
			case c == ' ' || c == '\t' || c == '\r':
				a.state = aDataTail
				p = p[1:]
			default:
				return errArmorChar
			}
		case aDataTail:
			c := p[0]
			p = p[1:]
			switch c {
			case ' ', '\t', '\r':
			case '\n':
				a.state, a.lineStart = aData, true
			default:
				return errArmorChar
			}
		default: // a buffered line
			c := p[0]
			p = p[1:]
			if c != '\n' {
				if a.nline == len(a.line) {
					return errArmorLine
				}
				a.line[a.nline] = c
				a.nline++
				continue
			}
			if err := a.endLine(); err != nil {
				return err
			}
		}
	}
	return nil
}

// endLine handles a complete buffered line.
func (a *armor) endLine() error {
	l := a.line[:a.nline]
	for len(l) > 0 && isSpace(l[len(l)-1]) {
		l = l[:len(l)-1]
	}
	a.nline = 0
	a.lineStart = true
	switch a.state {
	case aBegin:
		if string(l) != armorBegin {
			return errArmorBegin
		}
		a.state = aHeader
	case aHeader:
		if len(l) == 0 {
			a.state = aData
			return nil
		}
		// RFC 9580 §6.2.2: "Key: Value".
		k := 0
		for k < len(l) && l[k] > ' ' && l[k] < 0x7f && l[k] != ':' {
			k++
		}
		if k == 0 || k+1 >= len(l) || l[k] != ':' || l[k+1] != ' ' {
			return errArmorHeader
		}
		if a.headers++; a.headers > armorMaxHeaders {
			return errArmorHeaders
		}
	case aCRC:
		// "=" and four base64 characters: the CRC-24 of the data.
		if len(l) != 5 {
			return errArmorCRCLine
		}
		var v uint32
		for _, c := range l[1:] {
			d := b64Class[c]
			if d == b64Invalid {
				return errArmorCRCLine
			}
			v = v<<6 | uint32(d)
		}
		if v != uint32(a.crc)&crc24Mask {
			return errArmorCRC
		}
		a.haveCRC = true
		a.state = aEnd
	case aEnd:
		if string(l) != armorEnd {
			return errArmorEndLine
		}
		a.state = aPost
	}
	return nil
}

func (a *armor) close() error {
	if a.nline > 0 {
		// The last line has no line break.
		if err := a.endLine(); err != nil {
			return err
		}
	}
	switch a.state {
	case aPost:
		return nil
	case aPre:
		return errArmorNoBegin
	}
	return errArmorNoEnd
}

// crc24 is the armor checksum (RFC 9580 §6.1).
type crc24 uint32

// crc24Tables are slicing-by-8 tables for the CRC kept in the top 24 bits
// of a uint32: crc24Tables[k][b] is the register after byte b followed by k
// zero bytes.
var crc24Tables = func() (t [8][256]uint32) {
	for i := range 256 {
		c := uint32(i) << 24
		for range 8 {
			if c&0x80000000 != 0 {
				c = c<<1 ^ (crc24Poly&crc24Mask)<<8
			} else {
				c <<= 1
			}
		}
		t[0][i] = c
	}
	for k := 1; k < 8; k++ {
		for i := range 256 {
			v := t[k-1][i]
			t[k][i] = v<<8 ^ t[0][v>>24]
		}
	}
	return t
}()

func (c crc24) update(p []byte) crc24 {
	t := &crc24Tables
	v := uint32(c) << 8
	for len(p) >= 8 {
		x := v ^ uint32(p[0])<<24 ^ uint32(p[1])<<16 ^ uint32(p[2])<<8 ^ uint32(p[3])
		y := uint32(p[4])<<24 | uint32(p[5])<<16 | uint32(p[6])<<8 | uint32(p[7])
		v = t[7][x>>24] ^ t[6][x>>16&0xff] ^ t[5][x>>8&0xff] ^ t[4][x&0xff] ^
			t[3][y>>24] ^ t[2][y>>16&0xff] ^ t[1][y>>8&0xff] ^ t[0][y&0xff]
		p = p[8:]
	}
	for _, b := range p {
		v = v<<8 ^ t[0][v>>24^uint32(b)]
	}
	return crc24(v >> 8)
}

type crcTee struct {
	crc  *crc24
	next stage
}

func (t *crcTee) write(p []byte) error {
	*t.crc = t.crc.update(p)
	return t.next.write(p)
}

func (t *crcTee) close() error { return t.next.close() }

// packets checks the decoded OpenPGP packet sequence (RFC 9580 §4.2, §10.3):
// Marker packets, then one or more PKESK or SKESK packets, then exactly one
// encrypted data packet running to the end. Packet bodies are skipped.
type packets struct {
	phase    int
	hdr      [6]byte
	nhdr     int
	newFmt   bool
	lenOnly  bool // reading the length after a partial body chunk
	inBody   bool
	remain   int64
	partial  bool // the current chunk is a partial body: more lengths follow
	indef    bool // old-format indeterminate length: runs to the end
	tag      byte
	pos      int64 // body bytes seen of the current packet
	esks     int
	anything bool
}

const (
	phaseMarker = iota // Marker packets, or the first session key packet
	phaseESK           // after a session key packet
	phaseData          // inside the encrypted data packet
	phaseEnd           // after it
)

const pgpMaxESK = 1 << 16

const (
	tagPKESK   = 1
	tagSKESK   = 3
	tagComp    = 8
	tagSED     = 9
	tagMarker  = 10
	tagLiteral = 11
	tagSEIPD   = 18
	tagAEAD    = 20
)

var (
	errPGPEmpty     = errors.New("OpenPGP: no packets")
	errPGPNotPacket = errors.New("OpenPGP: not a packet header")
	errPGPAfter     = errors.New("OpenPGP: data after the encrypted data packet")
	errPGPNoESK     = errors.New("OpenPGP: encrypted data without a session key packet")
	errPGPNoData    = errors.New("OpenPGP: no encrypted data packet")
	errPGPCut       = errors.New("OpenPGP: data ends inside a packet")
	errPGPPartial   = errors.New("OpenPGP: partial body length on a packet that cannot have one")
	errPGPIndef     = errors.New("OpenPGP: indeterminate length on a packet that cannot have one")
	errPGPEmptyPkt  = errors.New("OpenPGP: empty packet")
	errPGPMarker    = errors.New("OpenPGP: malformed Marker packet")
	errPGPLength    = errors.New("OpenPGP: malformed length")
)

func (s *packets) write(p []byte) error {
	for len(p) > 0 {
		if s.inBody {
			n := int64(len(p))
			if !s.indef && n > s.remain {
				n = s.remain
			}
			if err := s.body(p[:n]); err != nil {
				return err
			}
			s.pos += n
			p = p[n:]
			if s.indef {
				continue
			}
			s.remain -= n
			if s.remain == 0 {
				if err := s.endChunk(); err != nil {
					return err
				}
			}
			continue
		}
		if s.phase == phaseEnd {
			return errPGPAfter
		}
		s.hdr[s.nhdr] = p[0]
		s.nhdr++
		p = p[1:]
		if err := s.header(); err != nil {
			return err
		}
	}
	return nil
}

// header decodes s.hdr once it is complete (RFC 9580 §4.2).
func (s *packets) header() error {
	h := s.hdr[:s.nhdr]
	if !s.lenOnly {
		s.anything = true
		if h[0]&0x80 == 0 {
			return errPGPNotPacket
		}
		s.newFmt = h[0]&0x40 != 0
		if !s.newFmt {
			// Old format: tag in bits 5-2, length type in bits 1-0.
			s.tag = h[0] >> 2 & 0x0f
			lt := h[0] & 3
			if lt == 3 {
				s.nhdr = 0
				return s.startPacket(0, false, true)
			}
			n := 1 << lt
			if len(h) < 1+n {
				return nil
			}
			var l int64
			for _, c := range h[1 : 1+n] {
				l = l<<8 | int64(c)
			}
			s.nhdr = 0
			return s.startPacket(l, false, false)
		}
		s.tag = h[0] & 0x3f
		h = h[1:]
	}
	if len(h) == 0 {
		return nil
	}
	// New-format length (RFC 9580 §4.2.1).
	var l int64
	partial := false
	switch c := h[0]; {
	case c < 192:
		l = int64(c)
	case c < 224:
		if len(h) < 2 {
			return nil
		}
		l = (int64(c)-192)<<8 + int64(h[1]) + 192
	case c == 255:
		if len(h) < 5 {
			return nil
		}
		l = int64(h[1])<<24 | int64(h[2])<<16 | int64(h[3])<<8 | int64(h[4])
	default:
		l, partial = 1<<(c&0x1f), true
	}
	s.nhdr = 0
	if s.lenOnly {
		s.lenOnly = false
		s.remain, s.partial, s.inBody = l, partial, true
		if l == 0 {
			s.inBody = false
			return s.endChunk()
		}
		return nil
	}
	return s.startPacket(l, partial, false)
}

// startPacket checks the packet's place in the sequence.
func (s *packets) startPacket(length int64, partial, indef bool) error {
	s.pos = 0
	data := false
	switch s.tag {
	case tagMarker:
		if s.phase != phaseMarker {
			return errors.New("OpenPGP: Marker packet after a session key packet")
		}
		if length != 3 || partial || indef {
			return errPGPMarker
		}
	case tagPKESK, tagSKESK:
		if s.phase > phaseESK {
			return errPGPAfter
		}
		if s.esks++; s.esks > pgpMaxESK {
			return errors.New("OpenPGP: too many session key packets")
		}
		s.phase = phaseESK
	case tagSED, tagSEIPD, tagAEAD:
		if s.phase != phaseESK {
			return errPGPNoESK
		}
		s.phase = phaseData
		data = true
	case tagLiteral:
		return errors.New("OpenPGP: literal data packet where the encrypted data belongs")
	case tagComp:
		return errors.New("OpenPGP: compressed data packet where the encrypted data belongs")
	default:
		return fmt.Errorf("OpenPGP: unexpected packet with tag %d", s.tag)
	}
	switch {
	case partial && !data:
		return errPGPPartial
	case indef && !data:
		return errPGPIndef
	}
	s.remain, s.partial, s.indef, s.inBody = length, partial, indef, true
	if length == 0 && !indef {
		s.inBody = false
		return s.endChunk()
	}
	return nil
}

// body looks at the first body byte, the version of the packets that have
// one, and the Marker's fixed body.
func (s *packets) body(p []byte) error {
	if s.tag == tagMarker {
		for i, c := range p {
			if "PGP"[s.pos+int64(i)] != c {
				return errPGPMarker
			}
		}
		return nil
	}
	if s.pos > 0 || len(p) == 0 {
		return nil
	}
	v := p[0]
	ok := true
	switch s.tag {
	case tagPKESK: // RFC 9580 §5.1
		ok = v == 3 || v == 6
	case tagSKESK: // RFC 9580 §5.3, RFC 4880bis v5
		ok = v == 4 || v == 5 || v == 6
	case tagSEIPD: // RFC 9580 §5.13
		ok = v == 1 || v == 2
	case tagAEAD: // draft-ietf-openpgp-rfc4880bis-10 §5.16
		ok = v == 1
	}
	if !ok {
		return fmt.Errorf("OpenPGP: packet with tag %d has unknown version %d", s.tag, v)
	}
	return nil
}

// endChunk runs when the current length is used up.
func (s *packets) endChunk() error {
	if s.partial {
		s.inBody, s.lenOnly = false, true
		return nil
	}
	s.inBody = false
	if s.pos == 0 {
		return errPGPEmptyPkt
	}
	if s.phase == phaseData {
		s.phase = phaseEnd
	}
	return nil
}

func (s *packets) close() error {
	switch {
	case !s.anything:
		return errPGPEmpty
	case s.indef && s.phase == phaseData:
		if s.pos == 0 {
			return errPGPEmptyPkt
		}
		return nil
	case s.inBody || s.nhdr > 0 || s.lenOnly:
		return errPGPCut
	case s.phase == phaseEnd:
		return nil
	}
	return errPGPNoData
}
