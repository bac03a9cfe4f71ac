package pgpmime

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// The ASCII armor of the OpenPGP message (RFC 9580 §6.2, RFC 4880 §6.2):
// the header line, a blank line (no armor headers), the data in base64 in
// lines of 64 characters (RFC 4880 §6.3 allows up to 76; 64 is what GnuPG
// and go-crypto write), the checksum line ("=" and the base64 of the CRC-24
// of the data), and the tail line. The lines end as the message's do.
//
// go-crypto's armor.Encode writes the same bytes (with LF line ends), but
// computes the CRC bit by bit and writes each line with several small
// writes and an allocation: it was half of a copy's CPU time. Here the CRC
// is table-driven (crc24) and the base64 goes out in batches of whole
// lines, as in smime's base64 writer.
const (
	armorHeader     = "-----BEGIN PGP MESSAGE-----" // RFC 9580 §6.2: "PGP MESSAGE", used for encrypted messages
	armorTail       = "-----END PGP MESSAGE-----"
	armorLineBytes  = 48 // 64 base64 characters
	armorLineChars  = 64
	armorBatchLines = 1024 // 48 KiB of ciphertext per write to dst

	// RFC 4880 §6.1 (RFC 9580 §6.1): CRC-24 with this generator and
	// initial value, most significant bit first, over the data before
	// it is encoded.
	crc24Init = 0xB704CE
	crc24Poly = 0x1864CFB
)

// The CRC-24 is computed in a 32-bit register holding it in its top 24
// bits, so that the slicing-by-8 of CRC-32 implementations applies (as in
// Go's hash/crc32, there for the reflected CRC): crc24Tables[0][b] is the
// register after the byte b, crc24Tables[k][b] after b and k zero bytes, so
// eight lookups advance the CRC by eight bytes at once. With one table, a
// byte at a time, the CRC alone ran at about 360 MB/s here, the slowest
// step of a copy; with eight (8 KiB, in L1 cache) it is several times that.
var crc24Tables = func() (t [8][256]uint32) {
	for i := range t[0] {
		crc := uint32(i) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= crc24Poly
			}
		}
		t[0][i] = (crc & 0xFFFFFF) << 8
	}
	for k := 1; k < len(t); k++ {
		for i := range t[k] {
			prev := t[k-1][i]
			t[k][i] = prev<<8 ^ t[0][prev>>24]
		}
	}
	return t
}()

// crc24 continues the OpenPGP CRC-24 crc over p.
func crc24(crc uint32, p []byte) uint32 {
	t := &crc24Tables
	r := crc << 8
	for len(p) >= 8 {
		r ^= binary.BigEndian.Uint32(p)
		r = t[7][r>>24] ^ t[6][r>>16&0xFF] ^ t[5][r>>8&0xFF] ^ t[4][r&0xFF] ^
			t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]]
		p = p[8:]
	}
	for _, b := range p {
		r = r<<8 ^ t[0][byte(r>>24)^b]
	}
	return r >> 8
}

// armorWriter writes the armor of one OpenPGP message to dst. Bytes
// written to it are encoded in whole 48-byte lines straight from the
// caller's buffer, batch after batch; only the tail of a write that does
// not fill a line waits for the next.
type armorWriter struct {
	dst  io.Writer
	nl   []byte
	crc  uint32
	pend [armorLineBytes]byte // the start of the next line
	npen int
	buf  *[]byte // from armorBufs; nil once released
	out  []byte  // *buf: encoded lines, up to armorBatchLines of them
	err  error
}

// armorBufs keeps the batch buffers between copies: they only ever hold
// armored ciphertext.
var armorBufs = sync.Pool{New: func() any {
	b := make([]byte, armorBatchLines*(armorLineChars+2))
	return &b
}}

// newArmorWriter writes the header line and the blank line that ends the
// (empty) armor headers to dst, with nl as line end ("\n" or "\r\n").
func newArmorWriter(dst io.Writer, nl []byte) (*armorWriter, error) {
	if len(nl) == 0 || len(nl) > 2 {
		return nil, errors.New("pgpmime: armor line end must be LF or CRLF")
	}
	w := &armorWriter{dst: dst, nl: nl, crc: crc24Init, buf: armorBufs.Get().(*[]byte)}
	w.out = *w.buf
	o := copy(w.out, armorHeader)
	o += copy(w.out[o:], nl)
	o += copy(w.out[o:], nl)
	if err := w.flush(o); err != nil {
		w.release()
		return nil, err
	}
	return w, nil
}

// line encodes one full line of in at w.out[o:] and returns the new end.
func (w *armorWriter) line(o int, in []byte) int {
	base64.StdEncoding.Encode(w.out[o:o+armorLineChars], in)
	o += armorLineChars
	return o + copy(w.out[o:], w.nl)
}

func (w *armorWriter) flush(o int) error {
	if o == 0 {
		return nil
	}
	if _, err := w.dst.Write(w.out[:o]); err != nil {
		w.err = fmt.Errorf("pgpmime: writing armor: %w", err)
		return w.err
	}
	return nil
}

func (w *armorWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.buf == nil {
		return 0, ErrClosed
	}
	n := len(p)
	w.crc = crc24(w.crc, p)
	o := 0
	if w.npen > 0 {
		k := copy(w.pend[w.npen:], p)
		w.npen += k
		p = p[k:]
		if w.npen < armorLineBytes {
			return n, nil
		}
		o = w.line(o, w.pend[:])
		w.npen = 0
	}
	full := len(w.out) - armorLineChars - len(w.nl)
	for len(p) >= armorLineBytes {
		o = w.line(o, p[:armorLineBytes])
		p = p[armorLineBytes:]
		if o > full {
			if err := w.flush(o); err != nil {
				return 0, err
			}
			o = 0
		}
	}
	w.npen = copy(w.pend[:], p)
	if err := w.flush(o); err != nil {
		return 0, err
	}
	return n, nil
}

// Close writes the last, short line, the checksum line and the tail line
// (without a line end: what follows decides) and hands the buffer back. It
// does not close dst.
func (w *armorWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.buf == nil {
		return ErrClosed
	}
	o := 0
	if w.npen > 0 {
		enc := base64.StdEncoding.EncodedLen(w.npen)
		base64.StdEncoding.Encode(w.out[:enc], w.pend[:w.npen])
		o = enc + copy(w.out[enc:], w.nl)
	}
	crc := [3]byte{byte(w.crc >> 16), byte(w.crc >> 8), byte(w.crc)}
	w.out[o] = '='
	base64.StdEncoding.Encode(w.out[o+1:o+5], crc[:])
	o += 5
	o += copy(w.out[o:], w.nl)
	o += copy(w.out[o:], armorTail)
	err := w.flush(o)
	w.release()
	return err
}

// release hands the batch buffer back to the pool, once.
func (w *armorWriter) release() {
	if w.buf != nil {
		armorBufs.Put(w.buf)
		w.buf, w.out = nil, nil
	}
}
