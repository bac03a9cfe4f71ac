package smime

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/smimefilter/smimefilter/internal/mediatype"
)

// The outer MIME fields of an enveloped message (RFC 8551 §3.2, §3.2.1:
// name and filename smime.p7m help clients that only look at extensions).
const (
	outerContentType        = "Content-Type: application/pkcs7-mime; smime-type=enveloped-data;"
	outerContentTypeFold    = " name=smime.p7m"
	outerTransferEncoding   = "Content-Transfer-Encoding: base64"
	outerContentDisposition = "Content-Disposition: attachment; filename=smime.p7m"
	defaultContentType      = "Content-Type: text/plain; charset=us-ascii" // RFC 2045 §5.2
)

// protectedFields are the user-facing fields that RFC 9788 header protection
// copies into the encrypted entity (RFC 9787 §1.1.2 lists them as what a
// reader sees). Transport fields added after composition (Received, DKIM,
// Return-Path) are not part of what the sender wrote and stay outside only.
// Bcc is never copied: it would reach every recipient.
var protectedFields = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
	"In-Reply-To", "References", "Followup-To", "Mail-Followup-To",
	"Keywords", "Comments",
}

func isProtected(name string) bool {
	for _, p := range protectedFields {
		if strings.EqualFold(p, name) {
			return true
		}
	}
	return false
}

// isEntityField reports whether a field describes the MIME entity, and so
// belongs inside the envelope (RFC 8551 §3.1: the Content-* fields).
func isEntityField(name string) bool {
	return len(name) >= 8 && strings.EqualFold(name[:8], "Content-")
}

// Encrypt writes the outer header of the enveloped message to dst at once:
// the RFC 5322 fields as received (every field except Content-* and
// MIME-Version), then MIME-Version: 1.0 and the application/pkcs7-mime
// fields. It returns a writer for the body, the bytes after the blank line,
// which it streams encrypted as base64 in 76-character CRLF lines to dst.
//
// The encrypted entity is the Content-* fields byte for byte (or a
// text/plain; charset=us-ascii Content-Type when there is none), a blank
// line, and the body byte for byte, so that signed content still verifies
// after decryption (RFC 8551 §3.7). With Options.HeaderProtection the entity
// also carries the protected fields (RFC 9788 §2).
//
// Close flushes the padding, the BER end-of-contents octets and the last
// base64 line; it does not close dst. Memory use does not depend on the
// message size. Nothing is written to dst when Encrypt returns an error
// about its arguments.
func Encrypt(dst io.Writer, h *Header, recipients []*x509.Certificate, opts Options) (io.WriteCloser, error) {
	if h == nil {
		return nil, errors.New("smime: nil header")
	}
	env, err := newEnvelope(recipients, opts)
	if err != nil {
		return nil, err
	}
	nl := h.newline()
	var outer bytes.Buffer
	writeOuterHeader(&outer, h, opts.HeaderProtection, nl)
	if _, err := dst.Write(outer.Bytes()); err != nil {
		return nil, fmt.Errorf("smime: writing outer header: %w", err)
	}
	b64 := newBase64Lines(dst)
	ew, err := env.start(b64)
	if err != nil {
		return nil, err
	}
	inner := innerPrefix(h, opts.HeaderProtection)
	if _, err := ew.Write(inner); err != nil {
		return nil, err
	}
	return &encryptWriter{env: ew, b64: b64}, nil
}

type encryptWriter struct {
	env *envelopedWriter
	b64 *base64Lines
}

func (w *encryptWriter) Write(p []byte) (int, error) { return w.env.Write(p) }

func (w *encryptWriter) Close() error {
	if err := w.env.Close(); err != nil {
		return err
	}
	return w.b64.Close()
}

// writeField writes a raw field, ending it when the message ended inside the
// header without a line break.
func writeField(b *bytes.Buffer, raw, nl []byte) {
	b.Write(raw)
	if !endsWithNewline(raw) {
		b.Write(nl)
	}
}

func writeLine(b *bytes.Buffer, s string, nl []byte) {
	b.WriteString(s)
	b.Write(nl)
}

// writeOuterHeader writes the outer header of an S/MIME copy: the fields
// OuterFields returns, then the application/pkcs7-mime fields and the blank
// line.
func writeOuterHeader(b *bytes.Buffer, h *Header, hp bool, nl []byte) {
	writeOuterFields(b, h, hp, nl)
	writeLine(b, "MIME-Version: 1.0", nl)
	writeLine(b, outerContentType, nl)
	writeLine(b, outerContentTypeFold, nl)
	writeLine(b, outerTransferEncoding, nl)
	writeLine(b, outerContentDisposition, nl)
	b.Write(nl)
}

// obscured applies RFC 9788's baseline Header Confidentiality Policy
// (hcp_baseline, §3.2.1) to an outer field: the Subject becomes "[...]",
// Keywords and Comments are removed, everything else stays as it was.
func obscured(f Field, nl []byte) (raw []byte, keep bool) {
	switch {
	case strings.EqualFold(f.Name, "Subject"):
		return append([]byte("Subject: [...]"), nl...), true
	case strings.EqualFold(f.Name, "Keywords"), strings.EqualFold(f.Name, "Comments"):
		return nil, false
	}
	return f.Raw, true
}

// innerPrefix is what the encrypted entity holds before the rest of the body
// (Header.EntityPrefix).
func innerPrefix(h *Header, hp bool) []byte { return h.EntityPrefix(hp) }

func writeInnerHeader(b *bytes.Buffer, h *Header, hp bool, nl []byte) {
	if hp {
		// RFC 9788 §2: the protected fields as the sender wrote them...
		for _, f := range h.Fields {
			if isProtected(f.Name) {
				writeField(b, f.Raw, nl)
			}
		}
		// ...and HP-Outer (§2.2) recording what the outer header shows, so a
		// receiver can tell what was hidden or changed on the outside.
		for _, f := range h.Fields {
			if !isProtected(f.Name) {
				continue
			}
			if raw, keep := obscured(f, nl); keep {
				b.WriteString("HP-Outer: ")
				writeField(b, raw, nl)
			}
		}
	}
	if !h.has("Content-Type") {
		ct := defaultContentType
		if hp {
			ct += `; hp="cipher"`
		}
		writeLine(b, ct, nl)
	}
	for _, f := range h.Fields {
		if !isEntityField(f.Name) {
			continue
		}
		if hp && strings.EqualFold(f.Name, "Content-Type") {
			writeField(b, withHPCipher(f.Raw, nl), nl)
			continue
		}
		writeField(b, f.Raw, nl)
	}
	b.Write(nl)
}

// withHPCipher adds hp="cipher" (RFC 9788 §2.1.1) to a Content-Type field on
// a continuation line, leaving the original bytes before it untouched. A
// field that already has an hp parameter is left alone: a second one would
// make the field invalid.
func withHPCipher(raw, nl []byte) []byte {
	if _, params := mediatype.Parse(fieldValue(raw)); params != nil {
		if _, ok := params["hp"]; ok {
			return raw
		}
	}
	v := bytes.TrimRight(raw, " \t\r\n")
	v = bytes.TrimSuffix(v, []byte(";"))
	out := make([]byte, 0, len(v)+len(nl)*2+16)
	out = append(out, v...)
	out = append(out, ';')
	out = append(out, nl...)
	out = append(out, ` hp="cipher"`...)
	return append(out, nl...)
}
