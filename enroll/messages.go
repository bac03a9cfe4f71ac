package enroll

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailbox"
)

// The texts of the outgoing messages. They are for people who never open a
// terminal: what happened, what it means, what to do, in that order.
// Everything that may be secret (codes) is in the body, which the caller
// encrypts; the Subject stays outside the encryption and says nothing
// secret.

// mailtoURL is an RFC 6068 mailto: URI that opens a message to addr with
// the given Subject.
func mailtoURL(addr, subject string) string {
	return "mailto:" + pctEncode(addr, "!$'()*+;=:@&") + "?subject=" + pctEncode(subject, "!$'()*,;:@")
}

// pctEncode percent-encodes the UTF-8 bytes of s that are neither
// unreserved (RFC 3986 §2.3) nor in keep. RFC 6068 §2: in the address,
// "%", "/", "?", "#", "[", "]" and whatever a URI cannot hold are encoded
// ("," too, as it separates addresses); in a header value, "&" and "="
// are as well, and a space is %20, never "+" (§5).
func pctEncode(s, keep string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~', strings.IndexByte(keep, c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// entity builds a complete message from the enrollment address. The body
// lines are joined with CRLF; non-ASCII text goes quoted-printable.
func (e *Engine) entity(to, subject string, now time.Time, body string) ([]byte, error) {
	var id [16]byte
	if _, err := io.ReadFull(e.opts.Rand, id[:]); err != nil {
		return nil, fmt.Errorf("enroll: Message-ID: %w", err)
	}
	domain := e.opts.Address[strings.LastIndexByte(e.opts.Address, '@')+1:]
	var b bytes.Buffer
	field := func(name, value string) { b.WriteString(name + ": " + value + "\r\n") }
	field("From", "Mail encryption <"+mailbox.Quote(e.opts.Address)+">")
	field("To", "<"+mailbox.Quote(to)+">")
	field("Subject", subject)
	field("Date", now.Format(time.RFC1123Z))
	field("Message-ID", "<"+hex.EncodeToString(id[:])+".enroll@"+domain+">")
	// RFC 3834 §5: automatic mail; well-behaved autoresponders stay quiet.
	field("Auto-Submitted", "auto-generated")
	field("MIME-Version", "1.0")
	ascii := true
	for i := 0; i < len(body); i++ {
		if body[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		field("Content-Type", "text/plain; charset=us-ascii")
		field("Content-Transfer-Encoding", "7bit")
		b.WriteString("\r\n")
		b.WriteString(strings.ReplaceAll(body, "\n", "\r\n"))
		return b.Bytes(), nil
	}
	field("Content-Type", "text/plain; charset=utf-8")
	field("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b) // text mode: "\n" becomes CRLF
	if _, err := qp.Write([]byte(body)); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := qp.Close(); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return b.Bytes(), nil
}

func when(t time.Time) string { return t.UTC().Format("Monday, 2 January 2006, 15:04 MST") }

// span says a duration in words: "3 days", "24 hours", "90 minutes".
func span(d time.Duration) string {
	unit := func(n int64, one string) string {
		if n == 1 {
			return "1 " + one
		}
		return fmt.Sprintf("%d %ss", n, one)
	}
	switch {
	case d >= 48*time.Hour && d%(24*time.Hour) == 0:
		return unit(int64(d/(24*time.Hour)), "day")
	case d >= time.Hour && d%time.Hour == 0:
		return unit(int64(d/time.Hour), "hour")
	case d%time.Minute == 0:
		return unit(int64(d/time.Minute), "minute")
	}
	return d.String()
}

// noun is what a person calls the kind of key c is.
func noun(c *Credential) string {
	if c.Key != nil {
		return "OpenPGP key"
	}
	return "certificate"
}

// validUntil says when a key stops being usable; zero is never.
func validUntil(t time.Time) string {
	if t.IsZero() {
		return "does not expire"
	}
	return when(t)
}

// describe names a certificate or key for a person: who it is for, who
// issued it, until when, and the fingerprint an administrator can compare
// (for an OpenPGP key, as "gpg --fingerprint" and Thunderbird's key manager
// show it).
func describe(c *Credential) string {
	var b strings.Builder
	if k := c.Key; k != nil {
		name := ""
		if id := k.Entity.PrimaryIdentity(); id != nil {
			name = id.Name
		}
		fmt.Fprintf(&b, "  OpenPGP key:  %s\n", clean(name, 200))
		fmt.Fprintf(&b, "  Addresses:    %s\n", strings.Join(c.Addresses, ", "))
		fmt.Fprintf(&b, "  Valid until:  %s\n", validUntil(c.NotAfter))
		fmt.Fprintf(&b, "  Fingerprint:  %s\n", strings.ToUpper(c.Fingerprint))
		return b.String()
	}
	if x := c.Certificate; x != nil {
		subject := x.Subject.CommonName
		if subject == "" {
			subject = x.Subject.String()
		}
		issuer := x.Issuer.CommonName
		if issuer == "" {
			issuer = x.Issuer.String()
		}
		fmt.Fprintf(&b, "  Certificate:  %s\n", clean(subject, 200))
		fmt.Fprintf(&b, "  Issued by:    %s\n", clean(issuer, 200))
	}
	fmt.Fprintf(&b, "  Addresses:    %s\n", strings.Join(c.Addresses, ", "))
	fmt.Fprintf(&b, "  Valid until:  %s\n", when(c.NotAfter))
	fmt.Fprintf(&b, "  Fingerprint:  SHA-256 %s\n", c.Fingerprint)
	return b.String()
}

func fingerprints(hs []holder) string {
	var b strings.Builder
	for _, h := range hs {
		if h.key != nil {
			end := "does not expire"
			if !h.until.IsZero() {
				end = "valid until " + when(h.until)
			}
			fmt.Fprintf(&b, "  OpenPGP key %s (%s)\n", strings.ToUpper(h.fp), end)
			continue
		}
		fmt.Fprintf(&b, "  SHA-256 %s (valid until %s)\n", h.fp, when(h.until))
	}
	return b.String()
}

// action is the paragraph with the mailto: link and the same in words.
func (e *Engine) action(verb, code string) string {
	subject := verb + " " + code
	return fmt.Sprintf("Click this link and send the message it opens (its subject is all that counts):\n\n"+
		"  %s\n\n"+
		"Or send a message to %s with this subject:\n\n"+
		"  %s\n", mailtoURL(e.opts.Address, subject), e.opts.Address, subject)
}

func (e *Engine) challengeText(addr string, c *Credential, requester, code string, expires time.Time, holders bool, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Someone asked that the mail stored for %s be encrypted to this %s:\n\n%s\n", addr, noun(c), describe(c))
	fmt.Fprintf(&b, "The request came from %s on %s.\n\n", requester, when(now))
	if c.Key != nil {
		b.WriteString("You can read this message, so you hold the secret key of that OpenPGP key. If the request was yours, confirm it. ")
	} else {
		b.WriteString("You can read this message, so you hold the key of that certificate. If the request was yours, confirm it. ")
	}
	b.WriteString(e.action("confirm", code))
	fmt.Fprintf(&b, "\nThe code works once, until %s.\n", when(expires))
	if holders {
		fmt.Fprintf(&b, "\n%s already has a certificate. The change takes effect %s after you confirm it; "+
			"until then mail stays encrypted to the current certificate only, and its holder has been told and can stop the change.\n",
			addr, span(e.opts.ChangeDelay))
	} else {
		fmt.Fprintf(&b, "\nFrom then on every message delivered to %s is stored encrypted to this %s.\n", addr, noun(c))
	}
	b.WriteString("\nIf you did not ask for this, do nothing: nothing changes.\n")
	return b.String()
}

func (e *Engine) changeNoticeText(addr string, c *Credential, requester string, current []holder, cancel string, codeExpires time.Time, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Someone asked that the mail stored for %s be encrypted to a new %s:\n\n%s\n", addr, noun(c), describe(c))
	fmt.Fprintf(&b, "The request came from %s on %s.\n\n", requester, when(now))
	fmt.Fprintf(&b, "A confirmation code went to %s, readable only with the new certificate's key. "+
		"If it is confirmed (by %s at the latest), the new certificate takes effect %s later. "+
		"Until then mail stays encrypted only to the current certificates:\n\n%s\n",
		addr, when(codeExpires), span(e.opts.ChangeDelay), fingerprints(current))
	b.WriteString("If this was you (a new certificate, a new device), there is nothing to do.\n\n")
	b.WriteString("If it was not you, stop it. ")
	b.WriteString(e.action("cancel", cancel))
	return b.String()
}

func (e *Engine) scheduledText(addr string, c *Credential, by string, at time.Time, current []holder, cancel string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "The change of certificate for %s was confirmed (by a message from %s). From %s on, "+
		"mail for %s will also be encrypted to:\n\n%s\n", addr, by, when(at), addr, describe(c))
	fmt.Fprintf(&b, "Until then mail stays encrypted only to the current certificates:\n\n%s\n", fingerprints(current))
	b.WriteString("If this was you, there is nothing to do.\n\nIf it was not you, stop it before then. ")
	b.WriteString(e.action("cancel", cancel))
	return b.String()
}

func (e *Engine) confirmedText(addr string, c *Credential, at time.Time) string {
	return fmt.Sprintf("Your confirmation arrived. %s already has a certificate, so the new one takes effect on %s, "+
		"unless the holder of the current certificate stops it:\n\n%s", addr, when(at), describe(c))
}

func (e *Engine) activatedText(addr string, c *Credential, requester string, all []holder) string {
	return fmt.Sprintf("From now on, mail delivered to %s is stored encrypted to this newly enrolled certificate "+
		"(requested by %s):\n\n%s\nAll certificates mail for %s is now encrypted to:\n\n%s\n"+
		"If you did not ask for this, tell the administrator of this mail server.\n",
		addr, requester, describe(c), addr, fingerprints(all))
}

func (e *Engine) cancelledText(addr string, c *Credential, by string) string {
	return fmt.Sprintf("The request to encrypt mail for %s to this certificate was cancelled (%s). Nothing changed:\n\n%s",
		addr, by, describe(c))
}

func (e *Engine) expiryText(addr string, last holder, all []holder, now time.Time) string {
	var b strings.Builder
	until := last.until
	left := "less than a day"
	switch days := int(until.Sub(now) / (24 * time.Hour)); {
	case days == 1:
		left = "1 day"
	case days > 1:
		left = fmt.Sprintf("%d days", days)
	}
	fmt.Fprintf(&b, "The last certificate that mail for %s is encrypted to expires on %s (in %s):\n\n%s\n",
		addr, when(until), left, fingerprints([]holder{last}))
	fmt.Fprintf(&b, "After that, new mail for %s can no longer be stored encrypted.\n\n", addr)
	fmt.Fprintf(&b, "To keep it encrypted: get a new certificate (from the same place as this one, or any other), "+
		"then send a message signed with the new certificate to %s. You will get a confirmation link, encrypted to the new certificate.\n", e.opts.Address)
	if last.key != nil {
		fmt.Fprintf(&b, "With OpenPGP: extend the key's expiry date (or make a new key), then send a message to %s "+
			"with your public key attached (Thunderbird: Attach My Public Key).\n", e.opts.Address)
	}
	if len(all) > 1 {
		fmt.Fprintf(&b, "\nCertificates mail for %s is encrypted to now:\n\n%s", addr, fingerprints(all))
	}
	return b.String()
}

func (e *Engine) removedText(addr string, c *Credential, rest []holder) string {
	var b strings.Builder
	fmt.Fprintf(&b, "The administrator removed this certificate from %s; new mail is no longer encrypted to it:\n\n%s\n", addr, describe(c))
	if len(rest) > 0 {
		fmt.Fprintf(&b, "Mail for %s stays encrypted to:\n\n%s", addr, fingerprints(rest))
	} else {
		fmt.Fprintf(&b, "%s has no other certificate. To keep new mail encrypted, send a message signed with your certificate to %s.\n", addr, e.opts.Address)
	}
	return b.String()
}
