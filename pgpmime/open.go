package pgpmime

import (
	"errors"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// OpenBody returns a reader of the rest of the message after what
// smime.Header.WriteTo writes (the header and its Lead), as received,
// decrypted from ciphertext (the bytes the Seal wrote, from the start). It
// is how copies that go out unencrypted are made without plaintext ever
// having been stored.
//
// The MDC (RFC 9580 §5.13.1) is checked at the end: the reader returns an
// error instead of io.EOF when the ciphertext was altered, or is shorter or
// longer than Size, so a caller must not act on what it read before it saw
// io.EOF. The caller clears the buffers it reads into.
func (s *Seal) OpenBody(ciphertext io.Reader) (io.Reader, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	src := &io.LimitedReader{R: ciphertext, N: s.Size()}
	p, err := packet.Read(src)
	if err != nil {
		return nil, fmt.Errorf("pgpmime: reading sealed data: %w", err)
	}
	se, ok := p.(*packet.SymmetricallyEncrypted)
	if !ok || !se.IntegrityProtected || se.Version != 1 {
		return nil, fmt.Errorf("pgpmime: sealed data is a %T, not SEIPD v1", p)
	}
	plain, err := se.Decrypt(cipherFunc, s.key)
	if err != nil {
		return nil, fmt.Errorf("pgpmime: decrypting sealed data: %w", err)
	}
	p, err = packet.Read(plain)
	if err != nil {
		return nil, fmt.Errorf("pgpmime: reading decrypted data: %w", err)
	}
	lit, ok := p.(*packet.LiteralData)
	if !ok {
		return nil, fmt.Errorf("pgpmime: decrypted data is a %T, not literal data", p)
	}
	return &openReader{src: src, ciphertext: ciphertext, mdc: plain, body: lit.Body, skip: s.prefix}, nil
}

// openReader reads the literal data after the entity prefix and, at its
// end, has the MDC checked and the ciphertext's length confirmed.
type openReader struct {
	src        *io.LimitedReader
	ciphertext io.Reader
	mdc        io.Closer
	body       io.Reader
	skip       int64 // plaintext bytes still to drop
	err        error
}

func (r *openReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for r.skip > 0 {
		n, err := r.body.Read(p[:min(int64(len(p)), r.skip)])
		clear(p[:n])
		r.skip -= int64(n)
		if err != nil {
			return 0, r.end(err)
		}
	}
	n, err := r.body.Read(p)
	if err != nil {
		return n, r.end(err)
	}
	return n, nil
}

// end turns the end of the literal data into io.EOF only when the MDC
// matches and exactly Size bytes of ciphertext were there.
func (r *openReader) end(err error) error {
	switch {
	case !errors.Is(err, io.EOF):
		r.err = fmt.Errorf("pgpmime: reading sealed data: %w", err)
	case r.skip > 0:
		r.err = fmt.Errorf("pgpmime: sealed data shorter than its header: %w", io.ErrUnexpectedEOF)
	default:
		// Close reads what follows the literal packet, the MDC packet,
		// and compares its hash with the one computed over everything.
		if cerr := r.mdc.Close(); cerr != nil {
			r.err = fmt.Errorf("pgpmime: sealed data fails its integrity check: %w", cerr)
			break
		}
		var one [1]byte
		if r.src.N != 0 {
			r.err = fmt.Errorf("pgpmime: sealed data ends before Size: %w", io.ErrUnexpectedEOF)
		} else if n, _ := r.ciphertext.Read(one[:]); n != 0 {
			r.err = errors.New("pgpmime: sealed data longer than written")
		} else {
			r.err = io.EOF
		}
	}
	return r.err
}
