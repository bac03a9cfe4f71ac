package certs

import (
	"strings"
	"unicode/utf8"

	"github.com/smimefilter/smimefilter/internal/mailbox"
)

// maxAddressLen guards the indexes against absurd input. RFC 5321
// §4.5.3.1 allows 64 octets of local part and 255 of domain; real systems
// are laxer about the local part, so only the sum is bounded here.
const maxAddressLen = 64 + 1 + 255 + 64

// normalizeAddress checks that s is a plausible mailbox, local@domain,
// and returns it with the domain lowercased (domains are case-insensitive,
// RFC 5321 §2.4) and the local part unchanged. It accepts what RFC 5321
// and RFC 6531 (UTF-8) allow and rejects what no mailbox can contain:
// control characters, an empty part. A quoted local part is kept by its
// content, without the quotes. Certificates and the daemon both go through
// it, so the two spellings meet in one form.
func normalizeAddress(s string) (string, bool) {
	if len(s) == 0 || len(s) > maxAddressLen || !utf8.ValidString(s) {
		return "", false
	}
	// The last '@' separates: a quoted local part may contain '@', a
	// domain never does.
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return "", false
	}
	local, domain := s[:at], s[at+1:]

	// A quoted local part means its content (RFC 5321 §4.1.2): "john
	// doe"@x and the john doe@x that go-smtp hands over (it drops the
	// quotes) are one mailbox, kept in one spelling: quoted only where a
	// Dot-string cannot say it.
	local = mailbox.UnquoteLocal(local)
	if local == "" {
		return "", false
	}
	for _, r := range local {
		if r < 0x20 || r == 0x7f {
			return "", false
		}
	}
	for _, r := range domain {
		if r <= 0x20 || r == 0x7f || strings.ContainsRune(`<>"\(),;:@`, r) {
			return "", false
		}
	}
	if domain[0] == '.' || domain[len(domain)-1] == '.' || strings.Contains(domain, "..") {
		return "", false
	}
	return mailbox.QuoteLocal(local) + "@" + strings.ToLower(domain), true
}

// foldKey is the key of the case-insensitive fallback index: the whole
// normalized address lowercased.
func foldKey(normalized string) string {
	return strings.ToLower(normalized)
}
