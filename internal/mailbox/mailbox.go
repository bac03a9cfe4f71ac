// Package mailbox writes and reads the local part of an RFC 5321 §4.1.2
// Mailbox: a Dot-string as it is, anything else as a Quoted-string. go-smtp
// hands the daemon a quoted local part without its quotes, so the daemon
// quotes again where a command line needs it (deliver) and compares
// addresses in one form (certs).
package mailbox

import "strings"

// Quote writes addr as a Mailbox for a command line: a local part that is
// not a Dot-string ("john doe"@example.org arrives from go-smtp as
// john doe@example.org) is quoted, with `"` and `\` escaped; anything else
// is returned as it is.
func Quote(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 {
		return addr // "" (the null reverse-path) or Postmaster
	}
	return QuoteLocal(addr[:at]) + addr[at:]
}

// QuoteLocal returns a local part as a Dot-string when it is one, else as
// a Quoted-string.
func QuoteLocal(local string) string {
	if isDotString(local) {
		return local
	}
	var b strings.Builder
	b.Grow(len(local) + 4)
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	return b.String()
}

// UnquoteLocal returns what a local part means: the content of a
// Quoted-string without its escapes, or the Dot-string as it is.
func UnquoteLocal(local string) string {
	if len(local) < 2 || local[0] != '"' || local[len(local)-1] != '"' {
		return local
	}
	in := local[1 : len(local)-1]
	var b strings.Builder
	for i := 0; i < len(in); i++ {
		if in[i] == '\\' && i+1 < len(in) {
			i++
		}
		b.WriteByte(in[i])
	}
	return b.String()
}

// isDotString: Atom *("." Atom), RFC 5321 §4.1.2, with UTF-8 allowed in
// atoms (RFC 6531 §3.3).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80, c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0:
		default:
			return false
		}
	}
	return true
}
