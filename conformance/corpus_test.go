package conformance

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// testCase is one LMTP session, played to Dovecot directly and through the
// filter, and what may differ between the two.
type testCase struct {
	name string
	// class is the class of input the case covers (1-7), or what
	// else it covers.
	class string
	// rcpts recipients, named after the case, or locals: these local
	// parts. A local part starting with "nouser" is not a Dovecot user.
	rcpts  int
	locals []string
	s      session
	want   want
}

// want lists the intended differences: none unless a field is set.
type want struct {
	// passThrough: the message is really encrypted; the filter must store
	// it exactly as Dovecot does, not encrypt it again. Otherwise the
	// filter's copy must be encrypted.
	passThrough bool
	// mayPassThrough: stored unchanged or encrypted, both are right (the
	// fuzz target's really encrypted inputs).
	mayPassThrough bool
	// filterClass is the reply class (per recipient) the filter must give
	// where a policy of its own decides, whatever Dovecot answers.
	filterClass int
	// policyMay: the filter may also answer as Dovecot did (a limit it
	// need not enforce on every path).
	policyMay bool
	// otherContent: the stored messages differ by design; only the reply
	// classes and that the filter's copy is encrypted are checked.
	otherContent bool
	why          string
}

// localsOf returns the local parts of c's recipients.
func (c testCase) localsOf(index int) []string {
	if c.locals != nil {
		return c.locals
	}
	n := max(c.rcpts, 1)
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("c%02dr%02d", index, i+1)
	}
	return out
}

// dot dot-stuffs a message (RFC 5321 §4.5.2) and ends it with CRLF.CRLF,
// adding the CRLF a message without one at its end needs.
func dot(msg string) string {
	var b strings.Builder
	for line := range strings.SplitAfterSeq(msg, "\r\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	if msg != "" && !strings.HasSuffix(msg, "\r\n") {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.String()
}

// data is a lock-step DATA session for msg.
func data(msg string) session { return session{data: dot(msg)} }

// wire is a lock-step DATA session whose data is written exactly as given.
func wire(raw string) session { return session{data: raw} }

// bdat is a BDAT session with one chunk per part, the last one LAST.
func bdat(m mode, parts ...string) session {
	s := session{mode: m}
	for i, p := range parts {
		s.chunks = append(s.chunks, chunk{size: len(p), data: p, last: i == len(parts)-1})
	}
	return s
}

func pipelinedData(msg string) session { return session{mode: pipelined, data: dot(msg)} }

const simple = "From: Alice <alice@example.com>\r\n" +
	"To: Bob <bob@example.org>\r\n" +
	"Subject: conformance\r\n" +
	"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n" +
	"Message-ID: <conformance@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"\r\n" +
	"Grüße.\r\n" +
	".a line starting with a dot\r\n" +
	"..two dots\r\n" +
	".\r\n" +
	"end\r\n"

// sized returns a message of exactly n bytes whose lines start with dots,
// so that the wire (dot-stuffed) is longer than the message: RFC 1870's
// size counts the message, not the stuffing.
func sized(n int) string {
	var b strings.Builder
	b.WriteString("Subject: exactly " + fmt.Sprint(n) + " bytes\r\n\r\n")
	for n-b.Len() > 102 {
		b.WriteString("." + strings.Repeat("x", 97) + "\r\n")
	}
	b.WriteString(strings.Repeat("y", n-b.Len()-2) + "\r\n")
	if b.Len() != n {
		panic(fmt.Sprintf("sized(%d) made %d bytes", n, b.Len()))
	}
	return b.String()
}

// binary returns n pseudo-random bytes (a fixed seed): every octet value,
// lone CRs and LFs, CRLF followed by a dot.
func binary(n int) string {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
		if i%61 == 0 && i+3 < n {
			copy(b[i:], "\r\n.")
		}
	}
	return string(b)
}

// envelopedHeader is the start of a CMS ContentInfo(EnvelopedData) in
// indefinite-length BER: SEQUENCE, OID 1.2.840.113549.1.7.3, [0], and the
// EnvelopedData SEQUENCE, all open.
const envelopedHeader = "\x30\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x03\xa0\x80\x30\x80"

func base64Lines(b []byte) string {
	enc := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(enc) > 76 {
		out.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	return out.String() + enc + "\r\n"
}

// cases is the corpus: the generated classes, smimetest's corpus of
// real-world shapes, and the public messages in testdata.
func cases(t testing.TB) []testCase {
	t.Helper()
	overSize := maxMessageSize + 1
	longLocal := strings.Repeat("l", 70)
	cs := []testCase{
		// Framing.
		{name: "data-lockstep", class: "framing", s: data(simple)},
		{name: "data-pipelined", class: "framing/pipelining", rcpts: 3, s: pipelinedData(simple)},
		{name: "bdat-one-chunk", class: "framing", s: bdat(lockstep, simple)},
		{name: "bdat-chunks-split-in-crlf", class: "framing", s: bdat(lockstep, simple[:20]+"\r", "\n"+simple[21:90], simple[90:])},
		{name: "bdat-three-chunks-lockstep", class: "framing", s: bdat(lockstep, simple[:34], simple[34:90], simple[90:])},
		{name: "bdat-three-chunks-pipelined", class: "framing", s: bdat(pipelined, simple[:34], simple[34:90], simple[90:])},
		{name: "bdat-pipelined", class: "framing/pipelining", rcpts: 2, s: bdat(pipelined, simple[:50], simple[50:])},
		{name: "bdat-no-final-newline", class: "framing", s: bdat(lockstep, "Subject: no newline\r\n\r\nends here")},
		{name: "bdat-cut-short", class: "4", s: session{chunks: []chunk{{size: 1000, data: simple[:52], last: true}}, eof: true}},
		{name: "bdat-cut-short-second-chunk", class: "4", s: session{chunks: []chunk{{size: 40, data: simple[:40]}, {size: 1000, data: simple[40:92], last: true}}, eof: true}},
		{name: "data-cut-short", class: "framing", s: session{data: simple, eof: true}},
		{name: "empty-message", class: "framing", s: wire(".\r\n")},
		{name: "header-only-no-blank-line", class: "framing", s: data("Subject: header only\r\nFrom: a@example.com\r\n")},

		// CR and LF.
		{name: "lone-cr-before-end", class: "2", s: wire("Subject: lone CR\r\n\r\nlast line\r\r\n.\r\n")},
		{name: "dot-stuffed-after-lone-cr", class: "2", s: wire("Subject: lone CR, then a dot\r\n\r\nline\r\r\n..stuffed\r\nend\r\n.\r\n")},
		{name: "lone-cr-line-in-header", class: "2", s: wire("\r\r\nSubject: after a lone CR line\r\n\r\nbody\r\n.\r\n"),
			want: want{otherContent: true, why: "a header line that is a lone CR becomes a blank line when Dovecot turns CRLF into LF " +
				"(CR CR LF is CR LF): Dovecot's copy has an empty header and the rest as body, the filter reads the line as a non-field line"}},
		{name: "lone-cr-inside-lines", class: "CR/LF", s: wire("Subject: a\rb\r\n\r\nx\ry\r\n\r\r\r\n.\r\n")},
		{name: "bare-lf-lines", class: "CR/LF", s: wire("Subject: bare LF\nFrom: a@example.com\n\nline one\nline two\r\n.\r\n")},
		{name: "lf-dot-lf-is-data", class: "CR/LF", s: wire("Subject: LF.LF\r\n\r\nbefore\n.\nafter\r\n.\r\n"),
			want: want{otherContent: true, why: "Dovecot ends the data at LF.LF, the filter at CRLF.CRLF only (RFC 5321 §4.1.1.4); " +
				"Postfix never sends a bare LF (its lmtp client writes CRLF and dot-stuffs), so only direct LMTP clients see it"}},
		{name: "dot-lines", class: "dot-stuffing/2", s: wire("Subject: dots\r\n\r\n..\r\n...\r\n.. x\r\n..\r\r\n.\r\n")},

		// Sizes at the limits.
		{name: "size-exact-declared", class: "3", s: session{mailParams: fmt.Sprintf(" SIZE=%d", maxMessageSize), data: dot(sized(maxMessageSize))}},
		{name: "size-exact-undeclared", class: "3", s: data(sized(maxMessageSize))},
		{name: "size-exact-bdat", class: "3", s: bdat(pipelined, sized(maxMessageSize)[:30000], sized(maxMessageSize)[30000:])},
		{name: "size-over-declared", class: "3", s: session{mailParams: fmt.Sprintf(" SIZE=%d", overSize), data: dot(sized(overSize))},
			want: want{filterClass: 5, why: "limits.max_message_size: 552 5.3.4 at MAIL"}},
		{name: "size-over-undeclared", class: "3", s: data(sized(overSize)),
			want: want{filterClass: 5, why: "limits.max_message_size: 552 5.3.4 after the data"}},
		{name: "line-at-limit", class: "sizes", s: data("Subject: long line\r\n\r\n" + strings.Repeat("z", maxLineLength-2) + "\r\n")},
		{name: "line-998", class: "sizes", s: data("Subject: " + strings.Repeat("s", 989) + "\r\n\r\n" + strings.Repeat("z", 998) + "\r\n")},
		{name: "line-over-limit", class: "sizes", s: data("Subject: too long\r\n\r\n" + strings.Repeat("z", maxLineLength+1) + "\r\n"),
			want: want{filterClass: 5, why: "limits.max_line_length: 500 5.6.0"}},
		{name: "line-over-limit-bdat", class: "sizes", s: bdat(lockstep, "Subject: too long\r\n\r\n"+strings.Repeat("z", maxLineLength+1)+"\r\n"),
			want: want{filterClass: 5, policyMay: true, why: "limits.max_line_length, which the daemon enforces on DATA only"}},

		// Headers good and broken.
		{name: "mbox-from-line", class: "5", s: data("From sender@example.com Mon Jan  1 00:00:00 2024\r\n" + simple)},
		{name: "non-field-line-without-blank-line", class: "5", s: data("From: a@example.com\r\nSubject: no blank line\r\nthis is the body\r\nsecond line\r\n")},
		{name: "folded-address-missing-space", class: "5", s: data("From: a@example.com\r\nTo: b@example.org,\r\nc@example.org\r\nSubject: fold\r\n\r\nbody\r\n")},
		{name: "8bit-field-name", class: "5", s: data("From: a@example.com\r\nS\xfcbject: 8-bit name\r\nSubject: x\r\n\r\nbody\r\n")},
		{name: "nul-bytes", class: "5", s: data("From: a@example.com\r\nSubject: N\x00UL\r\n\r\nbo\x00dy\r\n")},
		{name: "utf8-header-values", class: "headers", s: data("From: Jörg <jörg@example.com>\r\nSubject: Grüße 日本語\r\n\r\nbody\r\n")},
		{name: "duplicate-content-type", class: "headers", s: data("Subject: two types\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n")},
		{name: "whitespace-before-colon", class: "headers", s: data("Subject : obsolete syntax\r\nContent-Type : text/plain\r\n\r\nbody\r\n")},
		{name: "continuation-first", class: "headers", s: data(" continued nothing\r\nSubject: x\r\n\r\nbody\r\n")},

		// Bodies.
		{name: "8bit-body", class: "bodies", s: data("Subject: 8-bit\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe \xff\x80\r\n")},
		{name: "binary-body-data", class: "bodies", s: data("Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n" + binary(5000) + "\r\n")},
		{name: "binary-body-bdat", class: "bodies", s: bdat(lockstep, "Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n"+binary(5000))},

		// Recipients.
		{name: "many-recipients-own-certificates", class: "1", rcpts: 50, s: pipelinedData(simple)},
		{name: "unknown-recipient-among-known", class: "recipients", locals: []string{"mixed1", "nouser-mixed", "mixed2"}, s: pipelinedData(simple)},
		{name: "quoted-local-part-with-space", class: "6", locals: []string{`"john doe"`}, s: data(simple)},
		{name: "local-part-over-64-octets", class: "6", locals: []string{longLocal}, s: data(simple)},
		// Addresses recipients.Validate refuses (an angle bracket; more
		// than the 254 octets of RFC 5321 §4.5.3.1.3) but go-smtp and
		// Dovecot accept: with no rewrite rule changing them, the daemon
		// must hand them on for Dovecot to decide.
		{name: "quoted-local-part-with-angle-brackets", class: "6", locals: []string{`"a<b>c"`}, s: data(simple)},
		{name: "address-over-254-octets", class: "6", locals: []string{strings.Repeat("m", 250)}, s: data(simple)},

		// Plaintext that only starts like encrypted mail, and real encrypted mail.
		{name: "pgp-armor-line-then-plaintext", class: "7", s: data("Subject: not encrypted\r\nContent-Type: text/plain\r\n\r\n" +
			"-----BEGIN PGP MESSAGE-----\r\n\r\nThis is not encrypted at all: meet me at noon.\r\n")},
		{name: "pkcs7-header-then-plaintext", class: "7", s: data("Subject: not encrypted either\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\n" +
			base64Lines([]byte(envelopedHeader+"The secret plan, in plaintext after a CMS header.\r\n")))},
		{name: "gpg-encrypted-armored", class: "7", s: data(gpgEncrypted(t)), want: want{passThrough: true, why: "already encrypted"}},
	}
	for _, m := range smimetest.Corpus(t) {
		if m.Large {
			continue // over maxMessageSize; the size classes cover limits
		}
		c := testCase{name: "smimetest-" + m.Name, class: "corpus", s: data(string(m.Raw))}
		if m.Encrypted {
			c.class = "7"
			c.want = want{passThrough: true, why: "already encrypted"}
		}
		cs = append(cs, c)
	}
	for _, m := range publicMessages(t) {
		cs = append(cs, testCase{name: "public-" + m.name, class: "public", s: data(m.raw)})
	}
	return cs
}

// gpgEncrypted is a message encrypted by gpg --encrypt --armor for a key
// made for the purpose, as a PGP user's mail client sends it (inline).
func gpgEncrypted(t testing.TB) string {
	t.Helper()
	smimetest.Require(t, "gpg")
	msg, err := gpgOnce()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// gpgOnce makes gpgEncrypted's message once per test binary.
var gpgOnce = sync.OnceValues(func() (string, error) {
	// Short: gpg-agent puts its socket in GNUPGHOME.
	home, err := os.MkdirTemp("", "cg")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(home)
	defer exec.Command("gpgconf", "--homedir", home, "--kill", "gpg-agent").Run()
	gpg := func(stdin string, args ...string) (string, error) {
		cmd := exec.Command("gpg", append([]string{"--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("gpg %s: %w", strings.Join(args, " "), err)
		}
		return string(out), nil
	}
	if _, err := gpg("", "--quick-gen-key", "PGP User <pgp@example.org>", "default", "default", "never"); err != nil {
		return "", err
	}
	armored, err := gpg("A secret written by a PGP user.\n", "--trust-model", "always", "--encrypt", "--armor", "-r", "pgp@example.org")
	if err != nil {
		return "", err
	}
	return "From: pgp@example.com\r\nTo: pgp@example.org\r\nSubject: inline PGP by gpg\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" +
		strings.ReplaceAll(armored, "\n", "\r\n"), nil
})

// publicMessage is a message from testdata, see testdata/README.md.
type publicMessage struct{ name, raw string }

// publicMessages reads testdata/public/*.eml, CRLF throughout.
func publicMessages(t testing.TB) []publicMessage {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "public", "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []publicMessage
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		raw := strings.ReplaceAll(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n", "\r\n")
		out = append(out, publicMessage{name: strings.TrimSuffix(filepath.Base(f), ".eml"), raw: raw})
	}
	return out
}
