package pgpmime

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/smime"
)

var (
	// ErrClosed: the Seal was closed (no more body) or destroyed (no more
	// copies), or the LiveCopy was closed.
	ErrClosed = errors.New("pgpmime: closed")
	// ErrNoRecipients: a copy needs at least one key.
	ErrNoRecipients = errors.New("pgpmime: no recipient keys")
)

// Options for a Seal.
type Options struct {
	// Rand is the source of the session key, the SEIPD prefix, the key
	// packets' randomness and the MIME boundaries; crypto/rand when nil.
	Rand io.Reader
	// HideRecipients writes wildcard key IDs (zero) in the key packets,
	// as gpg --throw-keyids does (RFC 9580 §5.1.1): a copy then says
	// nothing about who can read it, and the recipient's software tries
	// its secret keys in turn. GnuPG and Sequoia do; RNP 0.16 (Debian 12)
	// does not and fails to decrypt such a copy.
	HideRecipients bool
	// HeaderProtection applies RFC 9788 header protection.
	HeaderProtection bool
}

const (
	sessionKeySize = 32 // AES-256
	cipherFunc     = packet.CipherAES256
)

// A Seal encrypts one message once, for any number of copies. The MIME
// entity (its inner header and the body) goes into one SEIPD packet under a
// fresh AES-256 session key that never leaves memory; each copy is then a
// PGP/MIME message whose key packets carry that session key to that copy's
// recipients only, followed by the very same SEIPD packet. Copies that are
// not encrypted are read back from the ciphertext with the key (OpenBody),
// so the message's plaintext is never stored anywhere.
//
// Sharing the session key between copies reveals nothing a recipient does
// not already have: every copy holds the same content, and no copy names
// another copy's recipients (RFC 3156 §4 allows any set of recipients per
// message; Bcc stays private).
type Seal struct {
	h    *smime.Header
	opts Options
	key  []byte // the session key; nil once destroyed

	out    *countingWriter
	seipd  *seipdWriter // nil once closed or destroyed
	inBuf  *[]byte      // from plainBufs; nil once released
	in     []byte       // the Literal Data body's current chunk, at most chunkSize
	hdr    [5]byte      // a length header for the literal packet
	prefix int64        // plaintext bytes before the body: EntityPrefix
	err    error        // sticky
	closed bool
}

// countingWriter counts what reaches the Seal's dst: Size.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// plainBufs keeps the plaintext buffers between messages; they are cleared
// before they go back.
var plainBufs = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// NewSeal draws a session key from opts.Rand (crypto/rand when nil) and
// starts encrypting the entity of the message whose header is h into dst:
// the SEIPD packet header and the entity's header at once (with RFC 9788
// header protection when opts.HeaderProtection is set), then every body
// byte written to the Seal. dst receives one complete SEIPD packet once the
// Seal is closed, to be preceded by each copy's key packets.
func NewSeal(dst io.Writer, h *smime.Header, opts Options) (*Seal, error) {
	if h == nil {
		return nil, errors.New("pgpmime: nil header")
	}
	s := &Seal{h: h, opts: opts, key: make([]byte, sessionKeySize), out: &countingWriter{w: dst}}
	if _, err := io.ReadFull(s.rand(), s.key); err != nil {
		return nil, fmt.Errorf("pgpmime: generating session key: %w", err)
	}
	seipd, err := newSEIPDWriter(s.out, s.key, s.rand())
	if err != nil {
		s.Destroy()
		return nil, fmt.Errorf("pgpmime: starting encrypted data: %w", err)
	}
	s.seipd = seipd
	// The Literal Data packet (RFC 9580 §5.9) has a new-format header and
	// partial body lengths (§4.2.1.4): the entity's length is not known
	// until Close. Its body starts with literalHeader.
	s.hdr[0] = tagLiteral
	if err := s.seipd.write(s.hdr[:1]); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("pgpmime: writing encrypted data: %w", err)
	}
	s.inBuf = plainBufs.Get().(*[]byte)
	s.in = append((*s.inBuf)[:0], literalHeader[:]...)
	prefix := h.EntityPrefix(opts.HeaderProtection)
	s.prefix = int64(len(prefix))
	if _, err := s.Write(prefix); err != nil {
		s.Destroy()
		return nil, err
	}
	return s, nil
}

func (s *Seal) rand() io.Reader {
	if s.opts.Rand != nil {
		return s.opts.Rand
	}
	return rand.Reader
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
	for len(p) > 0 {
		if len(s.in) == chunkSize {
			// More is coming, so this chunk is not the last: it goes out
			// as a partial one. Sent only now, never on filling up, so
			// that the final chunk Close writes holds at least one octet.
			if err := s.literalChunk(s.in); err != nil {
				return written, err
			}
			s.in = s.in[:0]
		}
		if len(s.in) == 0 && len(p) > chunkSize {
			// A whole chunk at hand and more after it: straight from the
			// caller's buffer.
			if err := s.literalChunk(p[:chunkSize]); err != nil {
				return written, err
			}
			p = p[chunkSize:]
			written += chunkSize
			continue
		}
		n := copy(s.in[len(s.in):cap(s.in)], p)
		s.in = s.in[:len(s.in)+n]
		p = p[n:]
		written += n
	}
	return written, nil
}

// literalChunk encrypts one partial chunk of the literal packet's body,
// after its Partial Body Length header (RFC 9580 §4.2.1.4).
func (s *Seal) literalChunk(p []byte) error {
	s.hdr[0] = partialOctet
	if err := s.seipd.write(s.hdr[:1]); err != nil {
		return s.fail(err)
	}
	if err := s.seipd.write(p); err != nil {
		return s.fail(err)
	}
	return nil
}

func (s *Seal) fail(err error) error {
	s.err = fmt.Errorf("pgpmime: writing encrypted data: %w", err)
	return s.err
}

// releaseIn clears the plaintext buffer and hands it back.
func (s *Seal) releaseIn() {
	if s.inBuf != nil {
		clear(*s.inBuf)
		plainBufs.Put(s.inBuf)
		s.inBuf, s.in = nil, nil
	}
}

// Close ends the literal packet with its final chunk (a definite length,
// RFC 9580 §4.2.1.4), then the SEIPD packet with its MDC (§5.13.1, §5.14),
// and writes the rest of the ciphertext to dst, which it does not close.
// The Seal can then make copies.
func (s *Seal) Close() error {
	if s.err != nil {
		return s.err
	}
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.seipd.write(putLength(s.hdr[:], len(s.in)))
	if err == nil {
		err = s.seipd.write(s.in)
	}
	s.releaseIn()
	if err == nil {
		err = s.seipd.close()
	}
	s.releaseSEIPD()
	if err != nil {
		return s.fail(err)
	}
	return nil
}

func (s *Seal) releaseSEIPD() {
	if s.seipd != nil {
		s.seipd.release()
		s.seipd = nil
	}
}

// Size is the length of the ciphertext written to dst: once the Seal is
// closed, the length of the SEIPD packet.
func (s *Seal) Size() int64 { return s.out.n }

// Destroy forgets the session key and clears the plaintext the Seal still
// holds: no copy can be made and nothing opened afterwards. Call it when
// the message is done, whatever happened. Ciphertext not yet written is
// dropped: it is of no use without the key, and half a packet is worse than
// none. (The AES key schedule and the SHA-1 state, which holds up to 63
// octets of the last plaintext hashed, are left to the garbage collector:
// crypto/aes and crypto/sha1 offer no way to clear them.)
func (s *Seal) Destroy() {
	clear(s.key)
	s.key = nil
	s.releaseIn()
	s.releaseSEIPD()
	if s.err == nil {
		s.err = ErrClosed
	}
}

// ready reports whether copies can be made: closed and not destroyed.
func (s *Seal) ready() error {
	if !s.closed || s.key == nil {
		if s.err != nil && !errors.Is(s.err, ErrClosed) {
			return s.err
		}
		return errors.New("pgpmime: seal not closed, or destroyed")
	}
	return nil
}
