// Package encrypted decides whether a message body is encrypted as a whole, so
// that the filter may deliver it unchanged ("pass-through") without storing
// any plaintext.
//
// A Checker is fed the body as it streams through the filter and keeps only a
// small, bounded state: the encrypted content itself (which may be gigabytes)
// is skipped, never buffered. A body qualifies only when every byte of it
// belongs to one complete encrypted structure:
//
//   - application/pkcs7-mime (RFC 8551 §3.2.2): exactly one BER/DER ContentInfo
//     (RFC 5652 §3) holding EnvelopedData (RFC 5652 §6.1) or AuthEnvelopedData
//     (RFC 5083 §2.1), raw or base64 (RFC 2045 §6.8);
//   - multipart/encrypted with protocol application/pgp-encrypted (RFC 3156
//     §4): the "Version: 1" control part and one ASCII-armored OpenPGP message;
//   - text/plain or no Content-Type (RFC 2045 §5.2): one armored OpenPGP
//     message between optional whitespace, in 7bit, 8bit, base64 or
//     quoted-printable (RFC 2045 §6.7).
//
// An armored OpenPGP message (RFC 9580 §6, RFC 4880 §6) must decode, CRC-24
// included when present, to optional Marker packets, one or more public- or
// symmetric-key encrypted session key packets and exactly one encrypted data
// packet (SED, SEIPD or AEAD) that runs to the end (RFC 9580 §10.3).
//
// A body that merely starts like encrypted mail, or carries anything after
// the encrypted structure, does not qualify: the filter encrypts it like any
// other mail.
package encrypted

import (
	"errors"
	"strings"

	"github.com/smimefilter/smimefilter/internal/mediatype"
)

// stage is one layer of the body's decoding: a transfer decoding, a MIME or
// armor framing, or a parser of the decoded structure. An error means the body
// does not qualify; its text is the reason given by Result.
type stage interface {
	write(p []byte) error
	close() error
}

// Checker decides, streaming, whether a body is encrypted as a whole. Its
// zero value is not usable; see NewChecker. A nil *Checker is a body the
// header already ruled out: Write discards and Result says no.
type Checker struct {
	head   stage
	err    error
	closed bool
}

var errNotCandidate = errors.New("header: the media type or transfer encoding rules out an encrypted body")

// NewChecker returns a checker for a body with these header values (the
// unfolded Content-Type and Content-Transfer-Encoding field values, "" when
// absent), or nil when the header rules out pass-through: any media type other
// than application/pkcs7-mime, application/x-pkcs7-mime, multipart/encrypted,
// text/plain or none; an smime-type other than enveloped-data or
// authEnveloped-data; a multipart/encrypted protocol other than
// application/pgp-encrypted or without a usable boundary; or a transfer
// encoding the body type cannot have.
func NewChecker(contentType, transferEncoding string) *Checker {
	mt, params := mediatype.Parse(contentType)
	cte := strings.ToLower(strings.TrimSpace(transferEncoding))
	identity := cte == "" || cte == "7bit" || cte == "8bit" || cte == "binary"
	switch mt {
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		// RFC 8551 §3.2.2: signed-data, certs-only and compressed-data
		// are not encrypted, whatever the body holds.
		if st, ok := params["smime-type"]; ok {
			if st = strings.ToLower(st); st != "enveloped-data" && st != "authenveloped-data" {
				return nil
			}
		}
		switch {
		case cte == "base64":
			return &Checker{head: newBase64(newCMS(false))}
		case identity:
			return &Checker{head: newCMS(true)}
		}
	case "multipart/encrypted":
		// RFC 2045 §6.4: a multipart body has no transfer encoding of its
		// own; RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
		b := params["boundary"]
		if !strings.EqualFold(params["protocol"], "application/pgp-encrypted") ||
			!identity || len(b) == 0 || len(b) > 70 {
			return nil
		}
		return &Checker{head: newPGPMIME(b)}
	case "", "text/plain":
		switch {
		case cte == "base64":
			return &Checker{head: newBase64(newArmor())}
		case cte == "quoted-printable":
			return &Checker{head: newQP(newArmor())}
		case identity:
			return &Checker{head: newArmor()}
		}
	}
	return nil
}

// Write takes the next body bytes (everything after the header's blank
// line, as received, CRLF line ends). It never returns an error, so it can
// sit in an io.MultiWriter; once the body is known not to qualify it stops
// working on it.
func (c *Checker) Write(p []byte) (int, error) {
	if c == nil || c.err != nil || c.closed {
		return len(p), nil
	}
	c.err = c.head.write(p)
	return len(p), nil
}

// Refused reports whether the body is already known not to qualify, before
// its end: the caller can then treat the message as plaintext at once. A
// nil Checker (the header ruled pass-through out) is refused.
func (c *Checker) Refused() bool { return c == nil || c.err != nil }

// Result is the verdict after the whole body was written: ok only for a
// complete encrypted structure; reason says why not (for the log), e.g.
// "CMS: data after the end of the ContentInfo". Writes after Result are
// ignored.
func (c *Checker) Result() (ok bool, reason string) {
	if c == nil {
		return false, errNotCandidate.Error()
	}
	if !c.closed {
		c.closed = true
		if c.err == nil {
			c.err = c.head.close()
		}
	}
	if c.err != nil {
		return false, c.err.Error()
	}
	return true, ""
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }
