package pgpmime

import (
	"bufio"
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
	// chunkSize is the size of the pieces of plaintext the Seal hands to
	// go-crypto's writers. Smaller writes are gathered: the DATA reader
	// passes on what has arrived, often a few hundred bytes, and each
	// write would otherwise become its own partial body chunk (RFC 9580
	// §4.2.1.4, one length octet each) and its own pass through
	// go-crypto's CFB writer, which allocates and hashes per call. Bigger
	// writes are cut: go-crypto's partial-length writers buffer what they
	// are given whole.
	chunkSize = 32 << 10
	// outBufSize batches the ciphertext go-crypto writes (a length octet,
	// then a chunk) into fewer, larger writes to the spool.
	outBufSize = 64 << 10
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
	buf    *bufio.Writer  // batches ciphertext into out
	seipd  io.WriteCloser // SEIPD v1 contents: the literal packet, then the MDC
	lit    io.WriteCloser // Literal Data contents: the entity
	inBuf  *[]byte        // from plainBufs; nil once released
	in     []byte         // plaintext gathered for lit, less than chunkSize
	prefix int64          // plaintext bytes before the body: EntityPrefix
	err    error          // sticky
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

// outBufs keeps the ciphertext buffers between messages: they only ever
// hold ciphertext. plainBufs keeps the plaintext buffers, which are
// cleared before they go back.
var (
	outBufs   = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, outBufSize) }}
	plainBufs = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}
)

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
	s.buf = outBufs.Get().(*bufio.Writer)
	s.buf.Reset(s.out)
	s.inBuf = plainBufs.Get().(*[]byte)
	s.in = (*s.inBuf)[:0]
	config := &packet.Config{Rand: s.rand()}
	// aeadSupported=false: SEIPD v1 with MDC (RFC 9580 §5.13.1), which
	// GnuPG 2.2 reads; the cipher suite argument is then unused.
	seipd, err := packet.SerializeSymmetricallyEncrypted(s.buf, cipherFunc, false, packet.CipherSuite{}, s.key, config)
	if err != nil {
		s.Destroy()
		return nil, fmt.Errorf("pgpmime: starting encrypted data: %w", err)
	}
	s.seipd = seipd
	// RFC 9580 §5.9: 'b' binary, so that no implementation converts line
	// ends; no file name and date 0, which say nothing about the message.
	lit, err := packet.SerializeLiteral(seipd, true, "", 0)
	if err != nil {
		s.Destroy()
		return nil, fmt.Errorf("pgpmime: starting literal data: %w", err)
	}
	s.lit = lit
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
		if len(s.in) == 0 && len(p) >= chunkSize {
			// A whole chunk at hand: straight from the caller's buffer.
			if err := s.encrypt(p[:chunkSize]); err != nil {
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
		if len(s.in) == cap(s.in) {
			if err := s.flushIn(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flushIn encrypts the gathered plaintext.
func (s *Seal) flushIn() error {
	if len(s.in) == 0 {
		return nil
	}
	err := s.encrypt(s.in)
	s.in = s.in[:0]
	return err
}

func (s *Seal) encrypt(p []byte) error {
	if _, err := s.lit.Write(p); err != nil {
		s.err = fmt.Errorf("pgpmime: writing encrypted data: %w", err)
		return s.err
	}
	return nil
}

// releaseIn clears the plaintext buffer and hands it back.
func (s *Seal) releaseIn() {
	if s.inBuf != nil {
		clear(*s.inBuf)
		plainBufs.Put(s.inBuf)
		s.inBuf, s.in = nil, nil
	}
}

// Close ends the literal packet and the SEIPD packet with its MDC (RFC 9580
// §5.13.1) and flushes the ciphertext to dst, which it does not close. The
// Seal can then make copies.
func (s *Seal) Close() error {
	if s.err != nil {
		return s.err
	}
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.flushIn()
	s.releaseIn()
	if err != nil {
		return err
	}
	// The literal writer's Close ends its packet and closes the SEIPD
	// writer beneath it, which appends the MDC packet and ends the SEIPD
	// packet.
	if err := s.lit.Close(); err != nil {
		s.err = fmt.Errorf("pgpmime: ending encrypted data: %w", err)
		return s.err
	}
	if err := s.buf.Flush(); err != nil {
		s.err = fmt.Errorf("pgpmime: writing encrypted data: %w", err)
		return s.err
	}
	s.releaseBuf()
	return nil
}

func (s *Seal) releaseBuf() {
	if s.buf != nil {
		s.buf.Reset(nil)
		outBufs.Put(s.buf)
		s.buf = nil
	}
}

// Size is the length of the ciphertext written to dst: once the Seal is
// closed, the length of the SEIPD packet.
func (s *Seal) Size() int64 { return s.out.n }

// Destroy forgets the session key and clears the plaintext the Seal still
// holds: no copy can be made and nothing opened afterwards. Call it when
// the message is done, whatever happened. (The AES key schedule inside
// go-crypto's writer, and up to a chunk of pending plaintext in its
// buffers, are left to the garbage collector: go-crypto offers no way to
// clear them.)
func (s *Seal) Destroy() {
	clear(s.key)
	s.key = nil
	s.releaseIn()
	s.lit, s.seipd = nil, nil
	if !s.closed {
		// Ciphertext pending in the buffer is of no use without the
		// key; drop it rather than write half a packet.
		s.releaseBuf()
	}
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
