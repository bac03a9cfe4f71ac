package smime

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"mime"
	"strings"
)

// peekLimit bounds how much of a body IsEncrypted looks at. A ContentInfo OID
// sits in the first 20 bytes and an armor line at the start of the text; the
// rest only allows for leading blank lines.
const peekLimit = 4096

// DER encodings of the content types that mean "already encrypted"
// (RFC 5652 §6.1 envelopedData, RFC 5083 §1 authEnvelopedData).
var (
	oidEnvelopedData     = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03}
	oidAuthEnvelopedData = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x17}
)

const pgpArmor = "-----BEGIN PGP MESSAGE-----"

// IsEncrypted reports whether the message is already encrypted and must pass
// unchanged: S/MIME enveloped or authEnveloped data (RFC 8551 §3.2.2, decided
// by the ContentInfo OID when smime-type is absent), PGP/MIME (RFC 3156 §4),
// or an inline PGP message in a text/plain body. It may Peek at body, a
// bounded prefix, and never consumes from it; body may be nil.
//
// Signed-only data is not encrypted: a peer that takes every pkcs7-mime part
// for encrypted would store opaque-signed mail in plaintext.
func IsEncrypted(h *Header, body *bufio.Reader) bool {
	ct := h.Get("Content-Type")
	mediatype, params := parseContentType(ct)
	switch mediatype {
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		if st, ok := params["smime-type"]; ok {
			st = strings.ToLower(st)
			if st != "enveloped-data" && st != "authenveloped-data" {
				return false
			}
		}
		// The label alone is not enough, with or without smime-type: a
		// message that only claims to be encrypted would be stored in
		// plaintext. The ContentInfo itself must say so.
		oid := contentInfoOID(peek(body, peekLimit))
		return bytes.Equal(oid, oidEnvelopedData) || bytes.Equal(oid, oidAuthEnvelopedData)
	case "multipart/encrypted":
		// RFC 3156 §4: the second part holds the armored message, right
		// after a short version part; it must be there, not just claimed.
		return strings.EqualFold(params["protocol"], "application/pgp-encrypted") &&
			bytes.Contains(peek(body, peekLimit), []byte(pgpArmor))
	case "", "text/plain":
		// RFC 2045 §5.2: no Content-Type means text/plain.
		prefix := peek(body, peekLimit)
		if strings.EqualFold(h.Get("Content-Transfer-Encoding"), "base64") {
			prefix = decodeBase64Prefix(prefix, len(prefix))
		}
		prefix = bytes.TrimLeft(prefix, " \t\r\n")
		return bytes.HasPrefix(prefix, []byte(pgpArmor))
	}
	return false
}

func peek(body *bufio.Reader, n int) []byte {
	if body == nil {
		return nil
	}
	b, _ := body.Peek(min(n, body.Size()))
	return b
}

// parseContentType returns the lower-case media type and the parameters
// (names lower-cased). A value that mime.ParseMediaType rejects is parsed
// leniently, because a sender's syntax error must not turn an encrypted
// message into one that gets encrypted again, nor the reverse.
func parseContentType(v string) (string, map[string]string) {
	if v == "" {
		return "", nil
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return mt, params
	}
	parts := strings.Split(v, ";")
	mt = strings.ToLower(strings.TrimSpace(parts[0]))
	params = make(map[string]string)
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = strings.Trim(strings.TrimSpace(val), `"`)
		if _, dup := params[k]; !dup {
			params[k] = val
		}
	}
	return mt, params
}

// contentInfoOID returns the contentType OID (contents octets) of a
// ContentInfo (RFC 5652 §3) at the start of b, which is DER/BER or base64 of
// it. It returns nil when b does not start like a ContentInfo.
func contentInfoOID(b []byte) []byte {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return nil
	}
	if b[0] != 0x30 {
		// 64 base64 characters give 48 bytes, enough for the tag, a long
		// length and the longest OID we look for.
		b = decodeBase64Prefix(b, 64)
	}
	if len(b) < 2 || b[0] != 0x30 {
		return nil
	}
	i := 2
	switch l := b[1]; {
	case l == 0x80: // indefinite length (BER)
	case l < 0x80:
	case l <= 0x84:
		i += int(l & 0x7f)
	default:
		return nil
	}
	if len(b) < i+2 || b[i] != 0x06 {
		return nil
	}
	n := int(b[i+1])
	if n >= 0x80 || len(b) < i+2+n {
		return nil
	}
	return b[i+2 : i+2+n]
}

// decodeBase64Prefix decodes the leading base64 of b, skipping line breaks,
// using at most max alphabet characters. Garbage ends the prefix.
func decodeBase64Prefix(b []byte, max int) []byte {
	enc := make([]byte, 0, min(len(b), max))
scan:
	for _, c := range b {
		switch {
		case len(enc) == max:
			break scan
		case c == '\r' || c == '\n' || c == ' ' || c == '\t':
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/', c == '=':
			enc = append(enc, c)
		default:
			break scan
		}
	}
	if i := bytes.IndexByte(enc, '='); i >= 0 {
		// Padding ends the data: keep the group it completes.
		enc = enc[:min(len(enc), (i+3)/4*4)]
	}
	enc = enc[:len(enc)/4*4]
	out := make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
	n, err := base64.StdEncoding.Decode(out, enc)
	if err != nil {
		return nil
	}
	return out[:n]
}
