package pgpmime

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha1"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// The SEIPD v1 packet is framed here rather than by go-crypto's
// packet.SerializeSymmetricallyEncrypted, whose CFB writer allocates a
// buffer the size of every write (about a byte of garbage per byte of
// message, and a daemon's peak RSS above S/MIME's). go-crypto still does
// the cryptography: packet.NewOCFBEncrypter is the OpenPGP CFB of RFC 9580
// §5.13.1 with its random prefix, and crypto/sha1 the MDC of §5.14. The
// ciphertext goes into one pooled buffer and out in whole chunks.

const (
	// chunkSize is the length of every partial body chunk (RFC 9580
	// §4.2.1.4), of the SEIPD packet and of the Literal Data packet inside
	// it: a power of two, and at least the 512 octets the first chunk
	// needs.
	chunkSize = 64 << 10
	// partialOctet is the Partial Body Length header for chunkSize: 224 +
	// the power of two (§4.2.1.4); init checks it.
	partialOctet = 224 + 16
	// outHead is the room before the ciphertext in the output buffer for
	// what precedes a chunk: the packet tag (first chunk only) and a length
	// header of at most five octets (§4.2.1.3).
	outHead = 1 + 5

	// New-format packet tags (RFC 9580 §4.2.1: bits 7 and 6 set).
	tagSEIPD   = 0xc0 | 18 // §5.13
	tagLiteral = 0xc0 | 11 // §5.9
	tagMDC     = 0xc0 | 19 // §5.14
	seipdV1    = 1         // §5.13.1: version 1, CFB with an MDC
)

func init() {
	// §4.2.1.4: a partial length is a power of two; the first one is at
	// least 512 octets.
	if chunkSize < 512 || chunkSize&(chunkSize-1) != 0 || chunkSize > 1<<30 || 1<<(partialOctet-224) != chunkSize {
		panic("pgpmime: chunkSize must be a power of two between 512 and 2^30, and partialOctet its header")
	}
}

// literalHeader starts the Literal Data packet's body (RFC 9580 §5.9): 'b'
// binary, so that no implementation converts line ends; a file name of
// length 0, and the date 0, which say nothing about the message.
var literalHeader = [6]byte{'b', 0, 0, 0, 0, 0}

// cipherBufs keeps the output buffers between messages: they only ever hold
// ciphertext.
var cipherBufs = sync.Pool{New: func() any { b := make([]byte, outHead+chunkSize); return &b }}

// seipdWriter writes one SEIPD v1 packet (RFC 9580 §5.13.1) to dst with
// partial body lengths: the version octet, the encrypted random prefix and
// its two repeated octets, then the encryption of what write is given (the
// plaintext packets) and, on close, of the MDC packet (§5.14).
type seipdWriter struct {
	dst    io.Writer
	stream cipher.Stream // OpenPGP CFB without resynchronisation
	mdc    hash.Hash     // SHA-1 over prefix, repeat and every plaintext octet
	bufp   *[]byte       // from cipherBufs; nil once released
	n      int           // ciphertext octets in (*bufp)[outHead:]
	tagged bool          // the packet tag is out
}

// newSEIPDWriter draws the random prefix from rnd and starts the packet
// under an AES-256 key.
func newSEIPDWriter(dst io.Writer, key []byte, rnd io.Reader) (*seipdWriter, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	var prefix [aes.BlockSize]byte
	if _, err := io.ReadFull(rnd, prefix[:]); err != nil {
		return nil, fmt.Errorf("generating the random prefix: %w", err)
	}
	// §5.13.1: the prefix is a block of random octets, then its last two
	// repeated; NewOCFBEncrypter returns them encrypted, and the stream
	// goes on from there without the resynchronisation step (§5.7's is
	// only for the old SED packet).
	stream, encPrefix := packet.NewOCFBEncrypter(block, prefix[:], packet.OCFBNoResync)
	if stream == nil {
		return nil, fmt.Errorf("pgpmime: OCFB for a %d-octet block", block.BlockSize())
	}
	w := &seipdWriter{dst: dst, stream: stream, mdc: sha1.New(), bufp: cipherBufs.Get().(*[]byte)}
	// §5.14: the MDC hashes the prefix and its repetition in the clear.
	w.mdc.Write(prefix[:])
	w.mdc.Write(prefix[len(prefix)-2:])
	clear(prefix[:])
	buf := (*w.bufp)[outHead:]
	buf[0] = seipdV1
	w.n = 1 + copy(buf[1:], encPrefix)
	return w, nil
}

// write encrypts plaintext packet octets into the buffer, sending each full
// chunk on before more goes in: the final chunk, which close writes with a
// definite length, is then never empty.
func (w *seipdWriter) write(p []byte) error {
	w.mdc.Write(p)
	return w.encrypt(p)
}

func (w *seipdWriter) encrypt(p []byte) error {
	buf := (*w.bufp)[outHead:]
	for len(p) > 0 {
		if w.n == chunkSize {
			if err := w.flush(false); err != nil {
				return err
			}
		}
		k := min(len(p), chunkSize-w.n)
		w.stream.XORKeyStream(buf[w.n:w.n+k], p[:k])
		w.n += k
		p = p[k:]
	}
	return nil
}

// flush writes the buffered ciphertext as one chunk: a partial one of
// chunkSize octets, or the final one with its definite length.
func (w *seipdWriter) flush(final bool) error {
	buf := *w.bufp
	start := outHead
	if final {
		var l [5]byte
		h := putLength(l[:], w.n)
		start -= copy(buf[start-len(h):start], h)
	} else {
		start--
		buf[start] = partialOctet
	}
	if !w.tagged {
		start--
		buf[start] = tagSEIPD
		w.tagged = true
	}
	_, err := w.dst.Write(buf[start : outHead+w.n])
	w.n = 0
	return err
}

// close appends the MDC packet (§5.14: tag 19, length 20, then the SHA-1 of
// everything before, its own two header octets included) and writes the
// final chunk.
func (w *seipdWriter) close() error {
	mdcHeader := [2]byte{tagMDC, sha1.Size}
	if err := w.write(mdcHeader[:]); err != nil {
		return err
	}
	var sum [sha1.Size]byte
	if err := w.encrypt(w.mdc.Sum(sum[:0])); err != nil {
		return err
	}
	return w.flush(true)
}

// release hands the output buffer back; what it holds is ciphertext.
func (w *seipdWriter) release() {
	if w.bufp != nil {
		cipherBufs.Put(w.bufp)
		w.bufp = nil
	}
}

// putLength encodes n as a definite body length (RFC 9580 §4.2.1.1-3) in
// b, which has room for five octets, and returns the encoding.
func putLength(b []byte, n int) []byte {
	switch {
	case n < 192:
		b[0] = byte(n)
		return b[:1]
	case n < 8384:
		n -= 192
		b[0], b[1] = byte(n>>8)+192, byte(n)
		return b[:2]
	default:
		b[0], b[1], b[2], b[3], b[4] = 0xff, byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		return b[:5]
	}
}
