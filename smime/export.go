package smime

import (
	"bytes"
	"strings"
)

// What another writer of encrypted mail needs from a parsed header, so that
// every output carries the same entity inside and the same fields outside:
// PGP/MIME (RFC 3156 §4) encrypts the very MIME entity that S/MIME
// enveloped-data does (RFC 8551 §3.1), and RFC 9788 header protection is the
// same for both.

// EntityPrefix returns the bytes of the encrypted MIME entity that precede
// the rest of the body: the inner header (the Content-* fields byte for byte,
// or Content-Type: text/plain; charset=us-ascii when there is none, RFC 2045
// §5.2; with hp, the protected fields, HP-Outer fields and hp="cipher" of RFC
// 9788 §2), the blank line, and the Lead line when a line that is not a field
// ended the header. The entity is EntityPrefix followed by the body as
// received, after what WriteTo writes.
func (h *Header) EntityPrefix(hp bool) []byte {
	var b bytes.Buffer
	writeInnerHeader(&b, h, hp, h.newline())
	b.Write(h.lead)
	return b.Bytes()
}

// OuterFields returns the fields that stay outside the encryption, as every
// encrypted copy writes them: each field except Content-* and MIME-Version,
// byte for byte and in order (an mbox From_ line included), each ended by a
// line break; with hp, obscured by RFC 9788's baseline policy (§3.2.1: the
// Subject becomes "[...]", Keywords and Comments are dropped). The copy's own
// MIME-Version and Content-* fields and the blank line are for the caller to
// write.
func (h *Header) OuterFields(hp bool) []byte {
	var b bytes.Buffer
	writeOuterFields(&b, h, hp, h.newline())
	return b.Bytes()
}

// Newline is the line ending of the message ("\r\n", or "\n" for a message
// read with bare LFs), for the lines a writer adds to match it. The caller
// may modify the returned slice.
func (h *Header) Newline() []byte {
	return append([]byte(nil), h.newline()...)
}

// writeOuterFields is OuterFields into b.
func writeOuterFields(b *bytes.Buffer, h *Header, hp bool, nl []byte) {
	for _, f := range h.Fields {
		if isEntityField(f.Name) || strings.EqualFold(f.Name, "MIME-Version") {
			continue
		}
		if hp {
			if raw, keep := obscured(f, nl); keep {
				writeField(b, raw, nl)
			}
			continue
		}
		writeField(b, f.Raw, nl)
	}
}
