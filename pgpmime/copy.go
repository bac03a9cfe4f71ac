package pgpmime

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// The fixed parts of an RFC 3156 §4 message. The control part's
// Content-Description and the second part's name, disposition and the
// preamble are what Thunderbird and Enigmail write: clients that do not
// know PGP/MIME then show an attachment "encrypted.asc".
const (
	preamble        = "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"
	controlHeader   = "Content-Type: application/pgp-encrypted\nContent-Description: PGP/MIME version identification\n\nVersion: 1\n"
	encryptedHeader = "Content-Type: application/octet-stream; name=\"encrypted.asc\"\nContent-Description: OpenPGP encrypted message\nContent-Disposition: inline; filename=\"encrypted.asc\"\n"
)

// copyBufs keeps the per-copy output buffers and the ciphertext read buffer:
// they only ever hold ciphertext and its armor.
var (
	copyBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
	readBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// WriteCopy writes one complete encrypted copy to dst: the outer header
// (the message's fields as smime.Header.OuterFields gives them, then
// MIME-Version and the multipart/encrypted Content-Type), the control part,
// and the armored OpenPGP message: one key packet per key in keys, then the
// sealed SEIPD packet read from ciphertext (the bytes the Seal wrote to its
// dst, from the start; exactly Size of them), then the close delimiter.
// Line ends are the message's (Header.Newline).
//
// keys are the recipients' encryption keys, e.g. certs.Key.EncryptionKeys.
// Nothing is written to dst when a key cannot be encrypted to.
func (s *Seal) WriteCopy(dst io.Writer, ciphertext io.Reader, keys []*packet.PublicKey) error {
	if err := s.ready(); err != nil {
		return err
	}
	c, err := s.startCopy(dst, keys)
	if err != nil {
		return err
	}
	defer c.release()
	bufp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bufp)
	// Exactly Size bytes must come: a spool that gives fewer or more would
	// make a message no client can open.
	n, err := io.CopyBuffer(c.armor, io.LimitReader(ciphertext, s.Size()), *bufp)
	if err != nil {
		return fmt.Errorf("pgpmime: copying sealed data: %w", err)
	}
	if n != s.Size() {
		return fmt.Errorf("pgpmime: reading sealed data: %w", io.ErrUnexpectedEOF)
	}
	var one [1]byte
	if n, _ := ciphertext.Read(one[:]); n != 0 {
		return errors.New("pgpmime: sealed data longer than written")
	}
	return c.finish()
}

// LiveCopy is an encrypted copy written while the message is still being
// sealed: its header and key packets go out at once, then each piece of
// ciphertext the Seal produces is passed to Write, and Close ends the
// message. It lets the first copy stream to its next hop as the message
// arrives; the other copies are made from the spool afterwards.
type LiveCopy struct {
	s   *Seal
	c   *copyWriter
	n   int64 // ciphertext bytes written
	err error
}

// NewLiveCopy starts a copy for keys on dst. Give it, in order, every byte
// the Seal writes to its dst from the start (what was written before
// NewLiveCopy included), then Close it after the Seal's Close.
func (s *Seal) NewLiveCopy(dst io.Writer, keys []*packet.PublicKey) (*LiveCopy, error) {
	if s.key == nil || s.closed {
		return nil, errors.New("pgpmime: seal closed or destroyed")
	}
	c, err := s.startCopy(dst, keys)
	if err != nil {
		return nil, err
	}
	return &LiveCopy{s: s, c: c}, nil
}

// Write armors p, a piece of the sealed ciphertext.
func (lc *LiveCopy) Write(p []byte) (int, error) {
	if lc.err != nil {
		return 0, lc.err
	}
	n, err := lc.c.armor.Write(p)
	lc.n += int64(n)
	if err != nil {
		lc.fail(fmt.Errorf("pgpmime: writing copy: %w", err))
		return n, lc.err
	}
	return n, nil
}

// Close ends the armor and the multipart body and flushes them to dst. The
// Seal must have been closed and all its ciphertext written, so that the
// copy holds the whole SEIPD packet, MDC included: anything else is an
// error, not a truncated message.
func (lc *LiveCopy) Close() error {
	if lc.err != nil {
		return lc.err
	}
	if !lc.s.closed || lc.n != lc.s.Size() {
		lc.fail(fmt.Errorf("pgpmime: live copy has %d of %d bytes of a closed seal: %w", lc.n, lc.s.Size(), io.ErrUnexpectedEOF))
		return lc.err
	}
	err := lc.c.finish()
	lc.c.release()
	lc.err = ErrClosed
	return err
}

func (lc *LiveCopy) fail(err error) {
	lc.err = err
	lc.c.release()
}

// copyWriter is one copy being written: dst behind a buffer, and the armor
// encoder, which writes the message's line ends.
type copyWriter struct {
	bw       *bufio.Writer
	nl       []byte
	boundary string
	armor    *armorWriter
}

// startCopy encodes the key packets for keys (before anything is written,
// so that an unusable key leaves dst untouched), then writes the header, the
// control part, the second part's header, the armor header and the key
// packets.
func (s *Seal) startCopy(dst io.Writer, keys []*packet.PublicKey) (*copyWriter, error) {
	pkesks, err := s.keyPackets(keys)
	if err != nil {
		return nil, err
	}
	boundary, err := s.boundary()
	if err != nil {
		return nil, err
	}
	nl := s.h.Newline()
	bw := copyBufs.Get().(*bufio.Writer)
	bw.Reset(dst)
	c := &copyWriter{bw: bw, nl: nl, boundary: boundary}
	bw.Write(s.h.OuterFields(s.opts.HeaderProtection))
	c.line("MIME-Version: 1.0")
	// RFC 3156 §4: both parameters are required. The boundary goes on a
	// continuation line to keep lines under 78 characters (RFC 5322 §2.1.1).
	c.line(`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";`)
	c.line(` boundary="` + boundary + `"`)
	c.line("")
	c.line(preamble)
	c.line("--" + boundary)
	c.lines(controlHeader)
	c.line("--" + boundary)
	c.lines(encryptedHeader)
	c.line("")
	// With the CRC-24 line: RFC 9580 §6.1 would have encoders omit it,
	// but GnuPG 2.2.40 and RNP 0.16 refuse armor without it (checked:
	// "invalid radix64 character", "wrong padding").
	aw, err := newArmorWriter(bw, nl)
	if err != nil {
		c.release()
		return nil, fmt.Errorf("pgpmime: starting armor: %w", err)
	}
	c.armor = aw
	if _, err := aw.Write(pkesks); err != nil {
		c.release()
		return nil, fmt.Errorf("pgpmime: writing copy: %w", err)
	}
	return c, nil
}

func (c *copyWriter) line(s string) {
	c.bw.WriteString(s)
	c.bw.Write(c.nl)
}

// lines writes LF-separated text with the message's line ends.
func (c *copyWriter) lines(s string) {
	for len(s) > 0 {
		line, rest, _ := strings.Cut(s, "\n")
		c.line(line)
		s = rest
	}
}

// finish ends the armor (the checksum and END line) and the multipart body
// (RFC 2046 §5.1.1: the close delimiter), and flushes.
func (c *copyWriter) finish() error {
	if err := c.armor.Close(); err != nil {
		return fmt.Errorf("pgpmime: ending armor: %w", err)
	}
	c.bw.Write(c.nl)
	c.line("--" + c.boundary + "--")
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("pgpmime: writing copy: %w", err)
	}
	return nil
}

func (c *copyWriter) release() {
	if c.armor != nil {
		c.armor.release()
		c.armor = nil
	}
	if c.bw != nil {
		c.bw.Reset(nil)
		copyBufs.Put(c.bw)
		c.bw = nil
	}
}

// keyPackets encodes one v3 PKESK (RFC 9580 §5.1.1) per key, each carrying
// the session key for AES-256.
func (s *Seal) keyPackets(keys []*packet.PublicKey) ([]byte, error) {
	if len(keys) == 0 {
		return nil, ErrNoRecipients
	}
	config := &packet.Config{Rand: s.rand()}
	var b bytes.Buffer
	for _, k := range keys {
		if k == nil {
			return nil, errors.New("pgpmime: nil key")
		}
		// aeadSupported=false: a v3 PKESK, the one SEIPD v1 goes with.
		if err := packet.SerializeEncryptedKeyAEADwithHiddenOption(&b, k, cipherFunc, false, s.key, s.opts.HideRecipients, config); err != nil {
			return nil, fmt.Errorf("pgpmime: encrypting the session key to %s: %w", k.KeyIdString(), err)
		}
	}
	return b.Bytes(), nil
}

// boundary returns a fresh MIME boundary. It cannot occur in the body: the
// armor is base64 and two lines that start with five dashes (RFC 2046
// §5.1.1 asks the boundary not to appear in the parts).
func (s *Seal) boundary() (string, error) {
	var r [12]byte
	if _, err := io.ReadFull(s.rand(), r[:]); err != nil {
		return "", fmt.Errorf("pgpmime: generating boundary: %w", err)
	}
	return "pgp-" + hex.EncodeToString(r[:]), nil
}
