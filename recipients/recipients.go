// Package recipients rewrites envelope recipient addresses through ordered
// regular-expression rules before delivery.
//
// Rules apply in sequence, the way a chain of Postfix canonical maps or
// samotop's Mapper does: every rule sees the output of the rule before it, and
// a rule that does not match leaves the address as it is. The result must still
// be a deliverable mailbox (RFC 5321 §4.1.2, §4.5.3.1.3): a local part and a
// domain, no control characters, at most 254 octets. Addresses are in the
// form go-smtp gives them: a quoted local part by its content.
//
// The package is pure: the standard library and internal/mailbox, no I/O.
package recipients

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/smimefilter/smimefilter/internal/mailbox"
)

// MaxAddressLength is the longest mailbox accepted, in octets: the 256-octet
// path limit of RFC 5321 §4.5.3.1.3 minus the angle brackets.
const MaxAddressLength = 254

// ErrInvalidAddress is wrapped by every error about a malformed address.
var ErrInvalidAddress = errors.New("invalid mailbox")

// Rule is one configured rewrite: addresses matching Match are replaced by
// Replace, in which $1, ${name} and so on refer to capture groups.
type Rule struct {
	Match   string `toml:"match"`
	Replace string `toml:"replace"`
}

type compiledRule struct {
	re      *regexp.Regexp
	replace string
}

// Rewriter applies compiled rules. It is immutable and safe for concurrent use.
type Rewriter struct {
	rules []compiledRule
}

// Compile checks and compiles rules in order. Every bad rule is reported, not
// just the first, so an administrator fixes the config in one go.
func Compile(rules []Rule) (*Rewriter, error) {
	rw := &Rewriter{rules: make([]compiledRule, 0, len(rules))}
	var errs []error
	for i, r := range rules {
		re, err := regexp.Compile(r.Match)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %d: match %q: %w", i+1, r.Match, err))
			continue
		}
		rw.rules = append(rw.rules, compiledRule{re: re, replace: r.Replace})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rw, nil
}

// Len is the number of rules.
func (rw *Rewriter) Len() int {
	if rw == nil {
		return 0
	}
	return len(rw.rules)
}

// Rewrite returns addr after every rule has been applied in order. The input
// is not validated: the SMTP layer accepted it, and when no rule changed it
// the next hop decides about it exactly as it would without this filter. A
// changed address is validated, because a rule can produce anything and a bad
// result must never reach delivery.
func (rw *Rewriter) Rewrite(addr string) (string, error) {
	out := addr
	if rw != nil {
		for _, r := range rw.rules {
			// Only the leftmost match is replaced: a rule describes one
			// address, and replacing every match of a pattern that can match
			// the empty string would insert text between every character.
			loc := r.re.FindStringSubmatchIndex(out)
			if loc == nil {
				continue
			}
			var b []byte
			b = append(b, out[:loc[0]]...)
			b = r.re.ExpandString(b, r.replace, out, loc)
			b = append(b, out[loc[1]:]...)
			out = string(b)
		}
	}
	if out == addr {
		return out, nil
	}
	// Addresses travel in the form go-smtp gives them: a quoted local part
	// by its content, without the quotes (deliver quotes it again on the
	// command line). A rule that writes the quoted form means the same.
	if at := strings.LastIndexByte(out, '@'); at > 0 {
		out = mailbox.UnquoteLocal(out[:at]) + out[at:]
	}
	if err := Validate(out); err != nil {
		return out, fmt.Errorf("rewriting %q gave %q: %w", addr, out, err)
	}
	return out, nil
}

// Validate checks that addr (go-smtp's form: a quoted local part by its
// content) can be used as an RFC 5321 forward-path mailbox.
// It checks structure, not deliverability: that is the final server's call.
func Validate(addr string) error {
	switch {
	case addr == "":
		return fmt.Errorf("%w: empty", ErrInvalidAddress)
	case len(addr) > MaxAddressLength:
		return fmt.Errorf("%w: %d octets, more than %d", ErrInvalidAddress, len(addr), MaxAddressLength)
	case strings.ContainsAny(addr, "\r\n\x00"):
		return fmt.Errorf("%w: contains CR, LF or NUL", ErrInvalidAddress)
	case strings.ContainsAny(addr, "<>"):
		// Brackets would corrupt the RCPT TO line that carries the address
		// onwards.
		return fmt.Errorf("%w: contains an angle bracket", ErrInvalidAddress)
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return fmt.Errorf("%w: no @", ErrInvalidAddress)
	}
	local, domain := addr[:at], addr[at+1:]
	if local == "" {
		return fmt.Errorf("%w: empty local part", ErrInvalidAddress)
	}
	// The local part is checked as what it means (go-smtp's form: a quoted
	// one by its content): RFC 5321 §4.1.2's quoted-string can carry any
	// printable character and space, nothing else. The 64-octet limit of
	// §4.5.3.1.1 is a minimum servers must support, not a maximum, so the
	// next hop decides.
	for i := 0; i < len(local); i++ {
		if c := local[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: local part %q has a control character", ErrInvalidAddress, local)
		}
	}
	if strings.ContainsAny(domain, " \t") {
		return fmt.Errorf("%w: domain %q has a space or tab", ErrInvalidAddress, domain)
	}
	if domain == "" {
		return fmt.Errorf("%w: empty domain", ErrInvalidAddress)
	}
	if strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") {
		return fmt.Errorf("%w: malformed domain %q", ErrInvalidAddress, domain)
	}
	return nil
}

// Domain returns the part after the last "@", lowercased, or "" if there is none.
func Domain(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(addr[at+1:])
}
