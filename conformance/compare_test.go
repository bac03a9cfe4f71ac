package conformance

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// The comparison, for one recipient whose message both sides stored:
//
//  1. Dovecot's trace fields are removed from both copies: LMTP prepends
//     Return-Path, Delivered-To (only when the transaction has one
//     recipient) and one Received field naming the client and the
//     envelope recipient (lmtp-local.c). They differ between the sides by
//     construction (recipient domain, LMTP id, time, the client's LHLO
//     name). Fields of the same names inside the message are kept.
//  2. Mail that is already encrypted must be stored as it came: the
//     filter's copy must equal the direct copy byte for byte.
//  3. Any other message must be stored encrypted: the filter's copy is an
//     RFC 8551 enveloped-data message whose outer header holds the
//     message's non-Content-* fields, MIME-Version: 1.0, and the three
//     application/pkcs7-mime Content-* fields, nothing else. Its
//     RecipientInfos must name the recipient's own certificates, each
//     once, by issuer and serial number, and nobody else's: an envelope
//     shared with the transaction's other recipients decrypts for each
//     of them but tells every reader who else got the message (a Bcc
//     leak). Its envelope is decrypted for the recipient's key
//     (go.mozilla.org/pkcs7 via internal/smimetest). Dovecot stores lines ending in LF
//     (mail_save_crlf = no: each CRLF becomes LF, a lone CR or LF stays,
//     a CR at the very end goes), so the decrypted entity, which is what
//     Dovecot would have been given, is compared after that same
//     conversion (crlfToLF).
//  4. The header fields of the direct copy are compared with the outer
//     fields of the filter's copy without its S/MIME fields plus the
//     fields of the decrypted entity, as multisets of raw field bytes
//     (name, colon, value and folding, the line end included): the filter
//     moves the Content-* fields inside, so order cannot be kept. Two
//     normalisations, both legitimate: MIME-Version is left out on both
//     sides (the filter must write its own outside, RFC 8551 §3.2, and
//     none belongs inside), and the Content-Type: text/plain;
//     charset=us-ascii the filter writes inside when the message had
//     none is left out (that is the type such a message has, RFC 2045
//     §5.2). A message that ends inside its last header field, with no
//     line end, gets one there: the filter must end the field to write
//     its own after it. The bodies (what follows the header's blank line)
//     must be equal byte for byte.
//  5. A line in the header section that is neither a field nor a
//     continuation line (an mbox "From " line, a To: address folded
//     without its leading space, an 8-bit field name) has no place in RFC
//     5322's grammar. Dovecot stores it where it was. A filter may keep it
//     as a field, or read it as the first line of the body and encrypt it
//     with the body (putting the blank line before it that the body
//     needs), an mbox "From " line first and field names with 8-bit
//     bytes excepted or not: these readings are tried in turn when the
//     first fails, and the comparison then reads the direct copy the same
//     way.
//
// A field is a line not starting with space or tab plus the lines that do
// and follow it; the header ends at the first empty line ("\n" or "\r\n").

// dovecotTrace are the fields Dovecot's LMTP prepends, in order; the
// middle one is optional.
var dovecotTrace = []string{"return-path", "delivered-to", "received"}

// receivedEnd is the end of Dovecot's Received field: "; " and an RFC 5322
// date-time at the end of a line.
var receivedEnd = regexp.MustCompile(`; [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\n`)

// stripTrace removes the fields Dovecot prepended.
func stripTrace(msg []byte) ([]byte, error) {
	fields, _, _ := splitMessage(msg)
	rest := msg
	for i, name := range dovecotTrace {
		if len(fields) == 0 || fieldName(fields[0]) != name {
			if name == "delivered-to" {
				continue
			}
			return nil, fmt.Errorf("Dovecot's trace field %d is not %s: %q", i+1, name, firstLine(rest))
		}
		n := len(fields[0])
		if name == "received" {
			if !bytes.Contains(fields[0], []byte("with LMTP")) {
				return nil, fmt.Errorf("Received field is not Dovecot's LMTP one: %q", fields[0])
			}
			// Dovecot's field ends with its date; lines after it that start
			// with white space are the message's (a continuation line first
			// in the message becomes part of the field once prepended).
			loc := receivedEnd.FindIndex(fields[0])
			if loc == nil {
				return nil, fmt.Errorf("Received field does not end in a date: %q", fields[0])
			}
			n = loc[1]
		}
		rest = rest[n:]
		fields = fields[1:]
	}
	return rest, nil
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i]
	}
	return b
}

// splitMessage returns the header fields (raw, with their line ends), the
// body after the blank line, and whether there was a blank line.
func splitMessage(msg []byte) (fields [][]byte, body []byte, blank bool) {
	rest := msg
	for len(rest) > 0 {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		switch {
		case string(line) == "\n" || string(line) == "\r\n":
			return fields, rest, true
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			f := fields[len(fields)-1]
			fields[len(fields)-1] = f[:len(f)+len(line)] // line follows f in msg
		default:
			fields = append(fields, line)
		}
	}
	return fields, nil, false
}

// reading is how a filter may tell a field from a line that starts the
// body (point 5).
type reading struct {
	mbox     bool // an mbox "From " line first is a field
	eightBit bool // a field name may have 8-bit bytes (RFC 6532 style)
}

// splitAtNonField is splitMessage reading a line in the header that is
// neither a field nor a continuation as the start of the body (point 5).
func splitAtNonField(msg []byte, r reading) (fields [][]byte, body []byte) {
	all, _, _ := splitMessage(msg)
	off := 0
	for i, f := range all {
		field := isField(f) || r.eightBit && isField8(f) || r.mbox && i == 0 && bytes.HasPrefix(f, []byte("From "))
		if !field {
			return fields, msg[off:]
		}
		fields = append(fields, f)
		off += len(f)
	}
	f, b, _ := splitMessage(msg)
	return f, b
}

// isField reports whether a raw field starts with an RFC 5322 field name
// (printable US-ASCII but colon) and a colon, allowing the obsolete
// whitespace before the colon (RFC 5322 §4.5.3).
func isField(f []byte) bool {
	i := 0
	for i < len(f) && f[i] >= 33 && f[i] <= 126 && f[i] != ':' {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(f) && (f[i] == ' ' || f[i] == '\t') {
		i++
	}
	return i < len(f) && f[i] == ':'
}

// isField8 is isField allowing bytes over 127 in the name.
func isField8(f []byte) bool {
	ascii := bytes.Map(func(r rune) rune {
		if r >= 0x80 || r == utf8.RuneError {
			return 'x'
		}
		return r
	}, f)
	return isField(ascii)
}

// fieldName is the lower-cased name of a raw field, "" when it has none.
func fieldName(f []byte) string {
	if !isField(f) {
		return ""
	}
	name, _, _ := bytes.Cut(f, []byte(":"))
	return strings.ToLower(strings.TrimRight(string(name), " \t"))
}

// crlfToLF is what Dovecot does to the lines it stores: each CRLF becomes
// LF, and a CR that is the message's last byte is dropped (measured: BDAT
// of "\n\r" is stored as "\n").
func crlfToLF(b []byte) []byte {
	return bytes.TrimSuffix(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\r"))
}

// smimeOuter are the fields an enveloped message has outside besides the
// message's own: name and a prefix of the unfolded value.
var smimeOuter = map[string]string{
	"mime-version":              "1.0",
	"content-type":              "application/pkcs7-mime",
	"content-transfer-encoding": "base64",
	"content-disposition":       "attachment",
}

// decryptFunc decrypts a CMS ContentInfo for the copy's recipient.
type decryptFunc func(der []byte) ([]byte, error)

// owner is what the comparison knows of the recipient of a filtered copy.
type owner struct {
	// certs are the recipient's certificates: the envelope must name
	// each of them once and no other (point 3).
	certs []*x509.Certificate
	// recipientInfos reads whom a ContentInfo(EnvelopedData) names
	// (smimetest.RecipientsOf).
	recipientInfos func(der []byte) ([]smimetest.RecipientInfo, error)
	decrypt        decryptFunc
}

// compareEncrypted checks the filter's copy against the direct copy, both
// without Dovecot's trace fields (points 3 to 5); "" means equal.
func compareEncrypted(direct, filtered []byte, own owner) string {
	outer, payload, blank := splitMessage(filtered)
	if !blank {
		return "filter's copy has no body: not S/MIME"
	}
	var kept [][]byte
	seen := map[string]int{}
	for _, f := range outer {
		name := fieldName(f)
		if name != "mime-version" && !strings.HasPrefix(name, "content-") {
			kept = append(kept, f)
			continue
		}
		prefix, ok := smimeOuter[name]
		value := strings.TrimSpace(string(f[bytes.IndexByte(f, ':')+1:]))
		if !ok || !strings.HasPrefix(strings.ToLower(value), prefix) {
			return fmt.Sprintf("filter's copy is stored in plaintext or with a stray outer field: %q", f)
		}
		seen[name]++
	}
	for name := range smimeOuter {
		if seen[name] != 1 {
			return fmt.Sprintf("filter's copy has %d %s fields outside, want 1: not S/MIME", seen[name], name)
		}
	}
	der, err := base64.StdEncoding.DecodeString(string(bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, payload)))
	if err != nil {
		return fmt.Sprintf("filter's copy: base64 payload: %v", err)
	}
	ris, err := own.recipientInfos(der)
	if err != nil {
		return fmt.Sprintf("filter's copy: reading its envelope: %v", err)
	}
	if diff := namesExactly(ris, own.certs); diff != "" {
		return "filter's copy: " + diff
	}
	plain, err := own.decrypt(der)
	if err != nil {
		return fmt.Sprintf("filter's copy does not decrypt for its recipient: %v", err)
	}
	plain = crlfToLF(plain)
	inner, innerBody, _ := splitMessage(plain)

	directFields, directBody, _ := splitMessage(direct)
	diff := compareParts(directFields, directBody, kept, inner, innerBody)
	if diff == "" {
		return ""
	}
	// Point 5: the other readings of a non-field line in the header.
	for _, r := range []reading{{}, {mbox: true}, {eightBit: true}, {mbox: true, eightBit: true}} {
		altFields, altBody := splitAtNonField(direct, r)
		if len(altFields) != len(directFields) && compareParts(altFields, altBody, kept, inner, innerBody) == "" {
			return ""
		}
	}
	return diff
}

// namesExactly checks that the RecipientInfos name each certificate once
// (issuer and serial number, RFC 5652 §6.2.1) and nothing else; "" means
// they do.
func namesExactly(ris []smimetest.RecipientInfo, certs []*x509.Certificate) string {
	times := make([]int, len(certs))
	var others []string
	for _, ri := range ris {
		if i := slices.IndexFunc(certs, ri.Is); i >= 0 {
			times[i]++
		} else {
			others = append(others, ri.String())
		}
	}
	if len(others) > 0 {
		return fmt.Sprintf("envelope names %d RecipientInfos, %d of them not the recipient's certificates (another recipient's: a Bcc leak): %s",
			len(ris), len(others), strings.Join(others, ", "))
	}
	for i, n := range times {
		if n != 1 {
			return fmt.Sprintf("envelope names the recipient's certificate (serial %x) %d times, want once", certs[i].SerialNumber, n)
		}
	}
	return ""
}

// compareParts compares the direct copy's fields and body with the
// filter's outer fields (without the S/MIME ones), its entity's fields and
// its entity's body.
func compareParts(directFields [][]byte, directBody []byte, outer, inner [][]byte, innerBody []byte) string {
	hasType := false
	var want []string
	if n := len(directFields); n > 0 && !bytes.HasSuffix(directFields[n-1], []byte("\n")) {
		// Point 4: a message ending inside its last field.
		last := directFields[n-1]
		directFields = append(directFields[:n-1:n-1], append(last[:len(last):len(last)], '\n'))
	}
	for _, f := range directFields {
		if fieldName(f) == "content-type" {
			hasType = true
		}
		if fieldName(f) != "mime-version" {
			want = append(want, string(f))
		}
	}
	var got []string
	for _, f := range outer {
		got = append(got, string(f))
	}
	for _, f := range inner {
		if !hasType && fieldName(f) == "content-type" && strings.EqualFold(strings.TrimSpace(string(f)), "Content-Type: text/plain; charset=us-ascii") {
			hasType = true // the default once, point 4
			continue
		}
		if fieldName(f) == "mime-version" {
			return fmt.Sprintf("MIME-Version inside the envelope: %q", f)
		}
		got = append(got, string(f))
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		onlyDirect, onlyFilter := multisetDiff(want, got)
		return fmt.Sprintf("header fields differ: only direct %q, only through the filter %q", onlyDirect, onlyFilter)
	}
	if !bytes.Equal(directBody, innerBody) {
		return "body differs: " + firstDifference(directBody, innerBody)
	}
	return ""
}

// multisetDiff returns what only a has and what only b has; both sorted.
func multisetDiff(a, b []string) (onlyA, onlyB []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			onlyA = append(onlyA, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return onlyA, onlyB
}

// firstDifference describes where two byte strings first differ, with
// some context.
func firstDifference(want, got []byte) string {
	n := 0
	for n < len(want) && n < len(got) && want[n] == got[n] {
		n++
	}
	ctx := func(b []byte) string {
		lo, hi := max(0, n-30), min(len(b), n+30)
		return fmt.Sprintf("%q", b[lo:hi])
	}
	return fmt.Sprintf("first difference at byte %d of %d (direct) / %d (filter): direct %s, filter %s",
		n, len(want), len(got), ctx(want), ctx(got))
}
