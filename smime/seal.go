package smime

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
)

// A Seal encrypts one message once, for any number of copies. The MIME
// entity (the inner header and the body) is encrypted a single time under a
// fresh AES-256-CBC content-encryption key that never leaves memory; each
// copy is then an EnvelopedData (RFC 5652 §6) whose RecipientInfos name only
// that copy's certificates, wrapped around the same ciphertext. Copies that
// are not encrypted (plaintext by policy, pass-through, re-injection) are
// read back from the ciphertext with the key, so the message's plaintext is
// never stored anywhere, not even in a spool file.
//
// Sharing the content key between copies reveals nothing a recipient does
// not already have: every copy holds the same content, and a copy names no
// other copy's recipients (RFC 8551 §3.3 allows one envelope per recipient
// set; Bcc stays private).
type Seal struct {
	h    *Header
	opts Options

	key   [keySize]byte
	iv    [aes.BlockSize]byte
	block cipher.Block
	mode  cipher.BlockMode

	dst     io.Writer
	partial [aes.BlockSize]byte // plaintext not yet a whole block
	npart   int
	out     []byte // ciphertext of one Write, pooled
	prefix  int64  // plaintext bytes before the body: inner header and Lead
	size    int64  // ciphertext bytes written to dst
	err     error  // sticky
	closed  bool
}

// sealBufs keeps the per-message ciphertext buffers: the daemon seals
// thousands of small messages a second. They only ever hold ciphertext.
var sealBufs = sync.Pool{New: func() any { b := make([]byte, defaultSegmentSize); return &b }}

// NewSeal draws a content key and IV from opts.Rand (crypto/rand when nil)
// and starts encrypting the entity of the message whose header is h into
// dst: the inner header at once (with RFC 9788 header protection when
// opts.HeaderProtection is set), then every body byte written to the Seal.
// dst receives raw CBC ciphertext, to be framed per copy by WriteEnveloped.
func NewSeal(dst io.Writer, h *Header, opts Options) (*Seal, error) {
	if h == nil {
		return nil, errors.New("smime: nil header")
	}
	if opts.KeyTransport != RSAPKCS1v15 && opts.KeyTransport != RSAOAEP {
		return nil, fmt.Errorf("smime: unknown key transport %v", opts.KeyTransport)
	}
	s := &Seal{h: h, opts: opts, dst: dst}
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	if _, err := io.ReadFull(rnd, s.key[:]); err != nil {
		return nil, fmt.Errorf("smime: generating content key: %w", err)
	}
	if _, err := io.ReadFull(rnd, s.iv[:]); err != nil {
		return nil, fmt.Errorf("smime: generating IV: %w", err)
	}
	block, err := aes.NewCipher(s.key[:])
	if err != nil {
		return nil, fmt.Errorf("smime: content cipher: %w", err)
	}
	s.block = block
	s.mode = cipher.NewCBCEncrypter(block, s.iv[:])
	s.out = *sealBufs.Get().(*[]byte)
	inner := innerPrefix(h, opts.HeaderProtection)
	s.prefix = int64(len(inner))
	if _, err := s.Write(inner); err != nil {
		s.Destroy()
		return nil, err
	}
	return s, nil
}

// Write encrypts body bytes. The caller's buffer is not retained.
func (s *Seal) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.closed {
		return 0, ErrClosed
	}
	written := 0
	if s.npart > 0 {
		n := copy(s.partial[s.npart:], p)
		s.npart += n
		p = p[n:]
		written += n
		if s.npart < aes.BlockSize {
			return written, nil
		}
		if err := s.encrypt(s.partial[:]); err != nil {
			return written, err
		}
		s.npart = 0
	}
	for len(p) >= aes.BlockSize {
		n := min(len(p), len(s.out)) / aes.BlockSize * aes.BlockSize
		if err := s.encrypt(p[:n]); err != nil {
			return written, err
		}
		p = p[n:]
		written += n
	}
	s.npart = copy(s.partial[:], p)
	written += s.npart
	return written, nil
}

// encrypt writes the ciphertext of plain (whole blocks, at most len(s.out)).
func (s *Seal) encrypt(plain []byte) error {
	out := s.out[:len(plain)]
	s.mode.CryptBlocks(out, plain)
	if _, err := s.dst.Write(out); err != nil {
		s.err = fmt.Errorf("smime: writing ciphertext: %w", err)
		return s.err
	}
	s.size += int64(len(out))
	return nil
}

// Close pads the last block (PKCS #7, RFC 5652 §6.3) and writes it. The
// Seal can then make copies; it does not close dst.
func (s *Seal) Close() error {
	if s.err != nil {
		return s.err
	}
	if s.closed {
		return nil
	}
	pad := aes.BlockSize - s.npart
	for i := s.npart; i < aes.BlockSize; i++ {
		s.partial[i] = byte(pad)
	}
	err := s.encrypt(s.partial[:])
	clear(s.partial[:])
	s.npart = 0
	s.closed = true
	return err
}

// Size is the length of the ciphertext written to dst.
func (s *Seal) Size() int64 { return s.size }

// Destroy forgets the key: no copy can be made afterwards. Call it when the
// message is done, whatever happened.
func (s *Seal) Destroy() {
	clear(s.key[:])
	clear(s.partial[:])
	s.block, s.mode = nil, nil
	if out := s.out; out != nil {
		s.out = nil
		sealBufs.Put(&out)
	}
	if s.err == nil {
		s.err = ErrClosed
	}
}

// WriteEnveloped writes one encrypted copy to dst: the outer header (as
// Encrypt writes it), then base64 in 76-character lines of a ContentInfo
// whose EnvelopedData names exactly recipients and carries the sealed
// ciphertext, read from ciphertext (the bytes the Seal wrote to its dst, from
// the start). The BER has the shape `openssl cms -encrypt -stream` writes:
// indefinite lengths, the ciphertext in OCTET STRING segments.
func (s *Seal) WriteEnveloped(dst io.Writer, ciphertext io.Reader, recipients []*x509.Certificate) error {
	if err := s.ready(); err != nil {
		return err
	}
	prefix, err := s.envelopePrefix(recipients)
	if err != nil {
		return err
	}
	if err := s.writeOuter(dst); err != nil {
		return err
	}
	b64 := newBase64Lines(dst)
	if _, err := b64.Write(prefix); err != nil {
		return err
	}
	if err := s.writeSegments(b64, ciphertext); err != nil {
		return err
	}
	var eoc [2 * openIndefinite]byte // X.690 §8.1.5: 00 00 per open encoding
	if _, err := b64.Write(eoc[:]); err != nil {
		return err
	}
	return b64.Close()
}

// LiveCopy is an encrypted copy written while the message is still being
// sealed: its outer header and RecipientInfos go out at once, then each
// piece of ciphertext the Seal produces is passed to Write, and Close ends
// the envelope. It lets the first copy of a message stream to its next hop
// as the message arrives, as a one-copy filter would, instead of waiting for
// the end; the other copies are made from the spool afterwards.
type LiveCopy struct {
	b64 *base64Lines
	err error
}

// NewLiveCopy starts a copy for recipients on dst. Call it before the first
// body byte is written to the Seal, and give it, in order, every byte the
// Seal writes from the start (its dst output).
func (s *Seal) NewLiveCopy(dst io.Writer, recipients []*x509.Certificate) (*LiveCopy, error) {
	if s.mode == nil || s.closed {
		return nil, errors.New("smime: seal closed or destroyed")
	}
	prefix, err := s.envelopePrefix(recipients)
	if err != nil {
		return nil, err
	}
	if err := s.writeOuter(dst); err != nil {
		return nil, err
	}
	lc := &LiveCopy{b64: newBase64Lines(dst)}
	if _, err := lc.b64.Write(prefix); err != nil {
		return nil, err
	}
	return lc, nil
}

// Write frames p, a piece of the sealed ciphertext, as one OCTET STRING
// segment (any segment lengths are valid BER, X.690 §8.7.3.2).
func (lc *LiveCopy) Write(p []byte) (int, error) {
	if lc.err != nil {
		return 0, lc.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var hdr [maxOctetStringHL]byte
	hl := putOctetStringHeader(hdr[:], len(p))
	if _, err := lc.b64.Write(hdr[:hl]); err != nil {
		lc.err = err
		return 0, err
	}
	if _, err := lc.b64.Write(p); err != nil {
		lc.err = err
		return 0, err
	}
	return len(p), nil
}

// Close writes the end-of-contents octets and the last base64 line. The
// Seal must have been closed, so that the padding went through Write.
func (lc *LiveCopy) Close() error {
	if lc.err != nil {
		return lc.err
	}
	var eoc [2 * openIndefinite]byte // X.690 §8.1.5: 00 00 per open encoding
	if _, err := lc.b64.Write(eoc[:]); err != nil {
		lc.err = err
		return err
	}
	lc.err = ErrClosed
	return lc.b64.Close()
}

// envelopePrefix encodes the BER up to the encrypted content for a copy
// naming exactly recipients.
func (s *Seal) envelopePrefix(recipients []*x509.Certificate) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, ErrNoRecipients
	}
	for _, c := range recipients {
		if err := checkRecipient(c); err != nil {
			return nil, err
		}
	}
	rnd := s.opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	infos := make([]recipientInfo, 0, len(recipients))
	for _, c := range recipients {
		ri, err := keyTransRecipientInfo(c, s.key[:], s.opts.KeyTransport, rnd)
		if err != nil {
			return nil, err
		}
		infos = append(infos, ri)
	}
	return envelopePrefix(infos, s.iv[:])
}

// writeOuter writes the outer header of an encrypted copy.
func (s *Seal) writeOuter(dst io.Writer) error {
	var outer bytes.Buffer
	writeOuterHeader(&outer, s.h, s.opts.HeaderProtection, s.h.newline())
	if _, err := dst.Write(outer.Bytes()); err != nil {
		return fmt.Errorf("smime: writing outer header: %w", err)
	}
	return nil
}

// writeSegments frames the ciphertext as primitive OCTET STRINGs of the
// segment size. Exactly Size bytes must come: a spool that gives fewer or
// more would make an envelope no client can open.
func (s *Seal) writeSegments(dst io.Writer, ciphertext io.Reader) error {
	seg := s.segmentSize()
	bufp := sealBufs.Get().(*[]byte)
	defer sealBufs.Put(bufp)
	buf := *bufp
	if len(buf) < maxOctetStringHL+seg {
		buf = make([]byte, maxOctetStringHL+seg)
	}
	left := s.size
	for left > 0 {
		n := int(min(int64(seg), left))
		body := buf[maxOctetStringHL : maxOctetStringHL+n]
		if _, err := io.ReadFull(ciphertext, body); err != nil {
			return fmt.Errorf("smime: reading sealed content: %w", err)
		}
		var hdr [maxOctetStringHL]byte
		hl := putOctetStringHeader(hdr[:], n)
		copy(buf[maxOctetStringHL-hl:], hdr[:hl])
		if _, err := dst.Write(buf[maxOctetStringHL-hl : maxOctetStringHL+n]); err != nil {
			return err
		}
		left -= int64(n)
	}
	var one [1]byte
	if n, _ := ciphertext.Read(one[:]); n != 0 {
		return errors.New("smime: sealed content longer than written")
	}
	return nil
}

func (s *Seal) segmentSize() int {
	seg := s.opts.SegmentSize
	if seg <= 0 || seg > maxSegmentSize {
		seg = defaultSegmentSize
	}
	return seg
}

func (s *Seal) ready() error {
	if !s.closed || s.mode == nil {
		if s.err != nil && !errors.Is(s.err, ErrClosed) {
			return s.err
		}
		return errors.New("smime: seal not closed, or destroyed")
	}
	return nil
}

// OpenBody returns a reader of the rest of the message after what
// Header.WriteTo writes (the header and its Lead), as received, decrypted
// from ciphertext (the bytes the Seal wrote, from the start). It is
// how copies that go out unencrypted are made without plaintext ever having
// been stored. The caller clears the buffers it reads into.
func (s *Seal) OpenBody(ciphertext io.Reader) (io.Reader, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	r := &openReader{
		src:  ciphertext,
		mode: cipher.NewCBCDecrypter(s.block, s.iv[:]),
		left: s.size,
		skip: s.prefix,
	}
	return r, nil
}

// openReader decrypts CBC ciphertext of known length, skips the inner
// header and removes the padding.
type openReader struct {
	src  io.Reader
	mode cipher.BlockMode
	left int64 // ciphertext bytes not yet read
	skip int64 // plaintext bytes still to drop
	buf  [16 << 10]byte
	out  []byte // decrypted, not yet returned (a slice of buf)
	err  error
}

func (r *openReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.left == 0 {
			clear(r.buf[:])
			r.err = io.EOF
			return 0, io.EOF
		}
		n := int(min(int64(len(r.buf)), r.left))
		if _, err := io.ReadFull(r.src, r.buf[:n]); err != nil {
			r.err = fmt.Errorf("smime: reading sealed content: %w", err)
			return 0, r.err
		}
		r.left -= int64(n)
		r.mode.CryptBlocks(r.buf[:n], r.buf[:n])
		out := r.buf[:n]
		if r.left == 0 {
			// The last block ends in the padding Close wrote.
			pad := int(out[len(out)-1])
			if pad < 1 || pad > aes.BlockSize || pad > len(out) {
				r.err = errors.New("smime: sealed content has bad padding")
				return 0, r.err
			}
			out = out[:len(out)-pad]
		}
		if d := min(r.skip, int64(len(out))); d > 0 {
			out = out[d:]
			r.skip -= d
		}
		r.out = out
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}
