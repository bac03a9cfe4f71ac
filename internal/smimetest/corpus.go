package smimetest

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Message is one corpus message, CRLF throughout.
type Message struct {
	Name string
	Raw  []byte
	// Encrypted messages are already encrypted (S/MIME or PGP) and must pass
	// unchanged.
	Encrypted bool
	// Signed messages carry S/MIME signed data, signed by a certificate of
	// DefaultCA: after encryption and decryption they must still verify
	// (VerifySigned).
	Signed bool
	// Large messages take seconds to push through every decryptor.
	Large bool
	// Inner is the entity expected after decryption: the Content-* fields
	// byte for byte (a text/plain; charset=us-ascii Content-Type when there
	// is none), a blank line, the body byte for byte. Nil when Encrypted.
	Inner []byte
}

// LargeAttachmentSize is the size of the large message's attachment before
// base64.
const LargeAttachmentSize = 25 << 20

// Corpus returns messages covering what a mail filter meets: plain and 8-bit
// text, attachments, nested multiparts, multipart/signed and opaque
// signed-data (signed with openssl), S/MIME and PGP messages that are already
// encrypted, odd headers, 998-character lines, and with testing.Short() unset
// a message with a 25 MiB attachment. It needs openssl. The messages are
// built once per test binary and shared: do not modify them.
func Corpus(t testing.TB) []Message {
	t.Helper()
	Require(t, "openssl")
	msgs, err := corpusOnce()
	if err != nil {
		t.Fatalf("smimetest: building corpus: %v", err)
	}
	out := append([]Message(nil), msgs...)
	if !testing.Short() {
		out = append(out, largeOnce())
	}
	return out
}

var (
	corpusOnce = sync.OnceValues(buildCorpus)
	largeOnce  = sync.OnceValue(buildLarge)
)

// outerFields are RFC 5322 fields of a delivered message, the ones that stay
// outside the envelope.
func outerFields(subject, id string) string {
	return "Return-Path: <alice@example.test>\r\n" +
		"Received: from mx.example.test (mx.example.test [192.0.2.1])\r\n" +
		"\tby mail.example.test (Postfix) with ESMTPS id 4ABC123\r\n" +
		"\tfor <bob@example.test>; Mon, 02 Jun 2025 10:00:01 +0000 (UTC)\r\n" +
		"From: Alice Sender <alice@example.test>\r\n" +
		"To: Bob Recipient <bob@example.test>\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n" +
		"Message-ID: <" + id + "@example.test>\r\n"
}

func buildCorpus() ([]Message, error) {
	rnd := rand.New(rand.NewChaCha8([32]byte{'s', 'm', 'i', 'm', 'e'}))
	var msgs []Message
	add := func(name, raw string, signed bool) {
		msgs = append(msgs, Message{Name: name, Raw: []byte(raw), Signed: signed, Inner: expectedInner([]byte(raw))})
	}
	addEncrypted := func(name, raw string) {
		msgs = append(msgs, Message{Name: name, Raw: []byte(raw), Encrypted: true})
	}

	add("plain-ascii", outerFields("Plain ASCII", "plain")+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n"+
		"Content-Transfer-Encoding: 7bit\r\n"+
		"\r\n"+
		"Hello Bob,\r\n\r\nthis is plain text.\r\n-- \r\nAlice\r\n", false)

	add("utf8-8bit", outerFields("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "utf8")+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\n"+
		"\r\n"+
		"Grüße aus Köln, ☃ and 日本語, no transfer encoding.\r\n"+
		"Trailing space \r\n.\r\n..leading dots\r\n", false)

	attachment := make([]byte, 3000)
	fillRandom(rnd, attachment)
	add("multipart-attachment", outerFields("With attachment", "attach")+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=\"outer-boundary\"\r\n"+
		"\r\n"+
		"This is a multi-part message in MIME format.\r\n"+
		"--outer-boundary\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n"+
		"\r\n"+
		"See the attachment.\r\n"+
		"--outer-boundary\r\n"+
		"Content-Type: application/octet-stream; name=\"data.bin\"\r\n"+
		"Content-Transfer-Encoding: base64\r\n"+
		"Content-Disposition: attachment; filename=\"data.bin\"\r\n"+
		"\r\n"+
		base64Lines(attachment)+
		"--outer-boundary--\r\n", false)

	add("nested-multipart", outerFields("Nested", "nested")+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=\"b-mixed\"\r\n"+
		"\r\n"+
		"--b-mixed\r\n"+
		"Content-Type: multipart/alternative; boundary=\"b-alt\"\r\n"+
		"\r\n"+
		"--b-alt\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\n"+
		"Content-Transfer-Encoding: quoted-printable\r\n"+
		"\r\n"+
		"Caf=C3=A9 soft line=\r\n break\r\n"+
		"--b-alt\r\n"+
		"Content-Type: multipart/related; boundary=\"b-rel\"\r\n"+
		"\r\n"+
		"--b-rel\r\n"+
		"Content-Type: text/html; charset=utf-8\r\n"+
		"\r\n"+
		"<p>Café <img src=\"cid:dot@example.test\"></p>\r\n"+
		"--b-rel\r\n"+
		"Content-Type: image/gif\r\n"+
		"Content-ID: <dot@example.test>\r\n"+
		"Content-Transfer-Encoding: base64\r\n"+
		"\r\n"+
		"R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==\r\n"+
		"--b-rel--\r\n"+
		"--b-alt--\r\n"+
		"--b-mixed\r\n"+
		"Content-Type: message/rfc822\r\n"+
		"\r\n"+
		"From: someone@example.test\r\n"+
		"Subject: forwarded\r\n"+
		"Content-Type: text/plain\r\n"+
		"\r\n"+
		"forwarded body\r\n"+
		"--b-mixed--\r\n", false)

	add("no-content-type", outerFields("No Content-Type", "noct")+
		"\r\n"+
		"A message with no MIME fields at all.\r\n", false)

	add("header-only", outerFields("Header only", "hdronly"), false)

	add("interleaved-content-fields",
		"Content-Type: text/plain;\r\n\tcharset=\"iso-8859-1\"\r\n"+
			outerFields("Interleaved", "interleaved")+
			"content-transfer-encoding: 8bit\r\n"+
			"X-Mailer: test\r\n"+
			"Content-Language: de\r\n"+
			"MIME-Version: 1.0\r\n"+
			"\r\n"+
			"Gr\xfc\xdfe in Latin-1.\r\n", false)

	add("folded-encoded-headers",
		"Return-Path: <alice@example.test>\r\n"+
			"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.test>\r\n"+
			"To: Bob Recipient <bob@example.test>,\r\n"+
			" \"Carol, with comma\" <carol@example.test>,\r\n"+
			"\t=?ISO-8859-1?Q?Andr=E9?= <andre@example.test>\r\n"+
			"Subject: =?UTF-8?B?w5xiZXIgZGllIEdyw7bDn2UgZGVyIFfDtnJ0ZXI=?=\r\n"+
			" =?UTF-8?Q?_und_Zeilen?=\r\n"+
			"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"+
			"Message-ID: <folded@example.test>\r\n"+
			"MIME-Version: 1.0\r\n"+
			"Content-Type: multipart/alternative;\r\n"+
			"\tboundary=\"=_folded_boundary\";\r\n"+
			" charset=\"utf-8\"\r\n"+
			"Content-Description:\r\n =?UTF-8?Q?Beschreibung_=C3=A4?=\r\n"+
			"\r\n"+
			"--=_folded_boundary\r\n"+
			"Content-Type: text/plain; charset=utf-8\r\n"+
			"\r\n"+
			"Über.\r\n"+
			"--=_folded_boundary--\r\n", false)

	longSubject := "Subject: " + strings.Repeat("s", 998-len("Subject: "))
	longLine := strings.Repeat("0123456789", 99) + "01234567" // 998 characters
	add("long-lines-998",
		"From: alice@example.test\r\n"+
			"To: bob@example.test\r\n"+
			longSubject+"\r\n"+
			"Content-Type: text/plain; charset=us-ascii\r\n"+
			"\r\n"+
			longLine+"\r\n"+longLine+"\r\n"+longLine, false)

	signed, err := buildSigned()
	if err != nil {
		return nil, err
	}
	msgs = append(msgs, signed...)

	encrypted, err := buildEncrypted()
	if err != nil {
		return nil, err
	}
	for _, m := range encrypted {
		addEncrypted(m[0], m[1])
	}

	armored := armoredPGPMessage(rnd)
	addEncrypted("pgp-mime", outerFields("PGP/MIME", "pgpmime")+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: multipart/encrypted;\r\n"+
		" protocol=\"application/pgp-encrypted\";\r\n"+
		" boundary=\"pgp-boundary\"\r\n"+
		"\r\n"+
		"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"+
		"--pgp-boundary\r\n"+
		"Content-Type: application/pgp-encrypted\r\n"+
		"Content-Description: PGP/MIME version identification\r\n"+
		"\r\n"+
		"Version: 1\r\n"+
		"\r\n"+
		"--pgp-boundary\r\n"+
		"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"+
		"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n"+
		"\r\n"+
		armored+
		"\r\n"+
		"--pgp-boundary--\r\n")
	addEncrypted("pgp-inline", outerFields("Inline PGP", "pgpinline")+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n"+
		"\r\n"+
		armored)
	addEncrypted("pgp-inline-no-content-type", outerFields("Inline PGP, no MIME", "pgpinline2")+
		"\r\n"+
		"\r\n"+
		armored)
	return msgs, nil
}

// buildSigned signs with openssl as a user's client would: multipart/signed
// (detached) and opaque signed-data, with and without the smime-type
// parameter.
func buildSigned() ([]Message, error) {
	signer, err := mustDefaultCA().newRecipient("signer@example.test")
	if err != nil {
		return nil, err
	}
	entity := "Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: quoted-printable\r\n" +
		"\r\n" +
		"Signed, then encrypted: Gr=C3=BC=C3=9Fe.\r\n" +
		"Trailing whitespace matters for signatures. \r\n"
	dir, remove, err := tempFiles(map[string][]byte{"cert.pem": signer.CertPEM, "key.pem": signer.KeyPEM, "content.eml": []byte(entity)})
	if err != nil {
		return nil, err
	}
	defer remove()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	content := filepath.Join(dir, "content.eml")

	// -binary keeps the entity's bytes as they are; -crlfeol makes openssl's
	// own MIME lines CRLF (its base64 stays LF, fixed by toCRLF).
	detached, err := run(nil, nil, "openssl", "smime", "-sign", "-binary", "-crlfeol",
		"-in", content, "-signer", cert, "-inkey", key)
	if err != nil {
		return nil, err
	}
	opaque, err := run(nil, nil, "openssl", "smime", "-sign", "-nodetach", "-binary",
		"-in", content, "-signer", cert, "-inkey", key, "-outform", "DER")
	if err != nil {
		return nil, err
	}
	p7m := func(ct string) string {
		return "MIME-Version: 1.0\r\n" +
			"Content-Type: " + ct + "\r\n" +
			"Content-Transfer-Encoding: base64\r\n" +
			"Content-Disposition: attachment; filename=smime.p7m\r\n" +
			"\r\n" +
			base64Lines(opaque)
	}
	raws := []struct{ name, raw string }{
		{"multipart-signed", outerFields("Signed", "signed") + string(toCRLF(detached))},
		{"opaque-signed", outerFields("Opaque signed", "opaque") + p7m("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m")},
		{"opaque-signed-no-smime-type", outerFields("Opaque signed, no smime-type", "opaque2") + p7m("application/pkcs7-mime; name=smime.p7m")},
		{"opaque-signed-x-pkcs7", outerFields("Opaque signed, x-pkcs7", "opaque3") + p7m("application/x-pkcs7-mime; name=\"smime.p7m\"")},
	}
	var out []Message
	for _, r := range raws {
		out = append(out, Message{Name: r.name, Raw: []byte(r.raw), Signed: true, Inner: expectedInner([]byte(r.raw))})
	}
	return out, nil
}

// buildEncrypted makes S/MIME messages already encrypted for someone else,
// with openssl: enveloped-data and authEnveloped-data (AES-GCM, RFC 5083),
// each with and without the smime-type parameter.
func buildEncrypted() ([][2]string, error) {
	other, err := mustDefaultCA().newRecipient("carol@example.test")
	if err != nil {
		return nil, err
	}
	dir, remove, err := tempFiles(map[string][]byte{"cert.pem": other.CertPEM, "content.eml": []byte("Content-Type: text/plain\r\n\r\nsecret\r\n")})
	if err != nil {
		return nil, err
	}
	defer remove()
	cert, content := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "content.eml")
	enveloped, err := run(nil, nil, "openssl", "cms", "-encrypt", "-aes256", "-binary", "-outform", "DER", "-in", content, cert)
	if err != nil {
		return nil, err
	}
	authEnveloped, err := run(nil, nil, "openssl", "cms", "-encrypt", "-aes-256-gcm", "-binary", "-outform", "DER", "-in", content, cert)
	if err != nil {
		return nil, err
	}
	smimeOut, err := run(nil, nil, "openssl", "smime", "-encrypt", "-aes256", "-binary", "-crlfeol", "-in", content, cert)
	if err != nil {
		return nil, err
	}
	msg := func(name, ct string, der []byte) [2]string {
		return [2]string{name, outerFields(name, name) +
			"MIME-Version: 1.0\r\n" +
			"Content-Type: " + ct + "\r\n" +
			"Content-Transfer-Encoding: base64\r\n" +
			"Content-Disposition: attachment; filename=smime.p7m\r\n" +
			"\r\n" +
			base64Lines(der)}
	}
	return [][2]string{
		{"smime-encrypted-openssl", outerFields("S/MIME by openssl smime", "smimeout") + string(toCRLF(smimeOut))},
		msg("smime-enveloped", "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m", enveloped),
		msg("smime-enveloped-no-smime-type", "application/pkcs7-mime; name=smime.p7m", enveloped),
		msg("smime-enveloped-x-no-smime-type", "application/x-pkcs7-mime; name=\"smime.p7m\"", enveloped),
		msg("smime-authenveloped", "application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m", authEnveloped),
		msg("smime-authenveloped-no-smime-type", "application/pkcs7-mime; name=smime.p7m", authEnveloped),
	}, nil
}

// armoredPGPMessage is an OpenPGP message as a client writes one, in its
// structure (RFC 9580 §10.3): a v3 public-key encrypted session key packet
// and a v1 SEIPD packet, their contents random, in ASCII armor with its
// CRC-24 (§6.1). The daemon checks the structure before it lets a message
// pass unencrypted; nobody needs to decrypt this one.
func armoredPGPMessage(rnd *rand.Rand) string {
	packet := func(tag byte, version byte, n int) []byte {
		// New-format header with a one-octet length (RFC 9580 §4.2.1).
		return append([]byte{0xc0 | tag, byte(n + 1), version}, randomBytes(rnd, n)...)
	}
	data := append(packet(1, 3, 140), packet(18, 1, 180)...)
	crc := uint32(0xb704ce)
	for _, b := range data {
		crc ^= uint32(b) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864cfb
			}
		}
	}
	sum := base64.StdEncoding.EncodeToString([]byte{byte(crc >> 16), byte(crc >> 8), byte(crc)})
	return "-----BEGIN PGP MESSAGE-----\r\n\r\n" + base64Lines(data) + "=" + sum + "\r\n-----END PGP MESSAGE-----\r\n"
}

func mustDefaultCA() *CA {
	ca, err := defaultCA()
	if err != nil {
		panic(err) // only fails when crypto/rand does
	}
	return ca
}

// buildLarge makes a multipart message with a LargeAttachmentSize binary
// attachment, from a fixed seed so that every run sees the same bytes.
func buildLarge() Message {
	rnd := rand.New(rand.NewChaCha8([32]byte{'l', 'a', 'r', 'g', 'e'}))
	data := make([]byte, LargeAttachmentSize)
	fillRandom(rnd, data)
	var b bytes.Buffer
	b.Grow(LargeAttachmentSize*4/3 + LargeAttachmentSize/38 + 4096)
	b.WriteString(outerFields("25 MiB attachment", "large"))
	b.WriteString("MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"large-boundary\"\r\n" +
		"\r\n" +
		"--large-boundary\r\n" +
		"Content-Type: text/plain; charset=us-ascii\r\n" +
		"\r\n" +
		"A large attachment follows.\r\n" +
		"--large-boundary\r\n" +
		"Content-Type: application/octet-stream; name=\"large.bin\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"large.bin\"\r\n" +
		"\r\n")
	writeBase64Lines(&b, data)
	b.WriteString("--large-boundary--\r\n")
	raw := b.Bytes()
	return Message{Name: "large-25MiB", Raw: raw, Large: true, Inner: expectedInner(raw)}
}

// expectedInner computes the entity that should come out of the envelope,
// with its own header splitting so that it does not share bugs with the code
// under test.
func expectedInner(raw []byte) []byte {
	header, body := raw, []byte(nil)
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		header, body = raw[:i+2], raw[i+4:]
	}
	var fields []string
	for _, line := range strings.SplitAfter(string(header), "\r\n") {
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] += line
			continue
		}
		fields = append(fields, line)
	}
	var content []string
	hasType := false
	for _, f := range fields {
		name, _, _ := strings.Cut(f, ":")
		lower := strings.ToLower(strings.TrimSpace(name))
		if strings.HasPrefix(lower, "content-") {
			content = append(content, f)
			hasType = hasType || lower == "content-type"
		}
	}
	var b bytes.Buffer
	if !hasType {
		b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
	}
	for _, f := range content {
		b.WriteString(f)
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// toCRLF turns bare LF into CRLF and leaves CRLF alone: openssl writes its
// base64 with LF even with -crlfeol.
func toCRLF(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/64)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

func base64Lines(data []byte) string {
	var b bytes.Buffer
	writeBase64Lines(&b, data)
	return b.String()
}

func writeBase64Lines(b *bytes.Buffer, data []byte) {
	line := make([]byte, 76)
	for len(data) > 0 {
		n := min(len(data), 57)
		m := base64.StdEncoding.EncodedLen(n)
		base64.StdEncoding.Encode(line, data[:n])
		b.Write(line[:m])
		b.WriteString("\r\n")
		data = data[n:]
	}
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) / 8 * 8; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	fillRandom(r, b)
	return b
}

// String names a message in test output.
func (m Message) String() string {
	return fmt.Sprintf("%s (%d bytes)", m.Name, len(m.Raw))
}
