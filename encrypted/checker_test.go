package encrypted

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"mime/quotedprintable"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/mediatype"
)

// verdict feeds body to a checker whole, one byte at a time and in random
// chunks, and fails the test unless all three agree.
func verdict(t *testing.T, ct, cte string, body []byte) (bool, string) {
	t.Helper()
	feed := func(split func([]byte) [][]byte) (bool, string) {
		c := NewChecker(ct, cte)
		if c == nil {
			return false, "nil"
		}
		for _, p := range split(body) {
			if n, err := c.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", len(p), n, err, len(p))
			}
		}
		return c.Result()
	}
	ok, reason := feed(func(b []byte) [][]byte { return [][]byte{b} })
	rng := rand.New(rand.NewPCG(uint64(len(body)), 1))
	for name, split := range map[string]func([]byte) [][]byte{
		"one byte at a time": func(b []byte) (out [][]byte) {
			for i := range b {
				out = append(out, b[i:i+1])
			}
			return out
		},
		"random chunks": func(b []byte) (out [][]byte) {
			for len(b) > 0 {
				n := min(len(b), rng.IntN(300))
				out = append(out, b[:n])
				b = b[n:]
			}
			return out
		},
	} {
		if ok2, reason2 := feed(split); ok2 != ok || reason2 != reason {
			t.Errorf("%s: got %v %q, whole body gave %v %q", name, ok2, reason2, ok, reason)
		}
	}
	return ok, reason
}

type testCase struct {
	name   string
	ct     string
	cte    string
	body   []byte
	want   bool
	reason string // a part of the reason when not ok; alternatives split by "|"
}

func runCases(t *testing.T, tests []testCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := verdict(t, tc.ct, tc.cte, tc.body)
			if ok != tc.want {
				t.Fatalf("got %v (%q), want %v", ok, reason, tc.want)
			}
			if tc.want {
				return
			}
			for _, r := range strings.Split(tc.reason, "|") {
				if strings.Contains(reason, r) {
					return
				}
			}
			t.Errorf("got reason %q, want one containing %q", reason, tc.reason)
		})
	}
}

// significant is how much of an accepted body a cut must keep so as to keep
// every decoded byte that matters: all of a ContentInfo (but the line break
// a raw one may end with), an armored message up to its END line, a PGP/MIME
// body up to its close delimiter.
func significant(tc testCase) int {
	// ends[i] is the encoded length that holds decoded byte i.
	var decoded []byte
	var ends []int
	switch tc.cte {
	case "base64":
		k := 0
		for i, c := range tc.body {
			if b64Class[c] == b64Invalid {
				continue
			}
			k++
			// Byte j is complete with ceil(8(j+1)/6) characters.
			for (len(ends)+1)*8 <= k*6 {
				ends = append(ends, i+1)
			}
		}
		decoded, _ = base64.StdEncoding.DecodeString(string(bytes.Map(func(r rune) rune {
			if isSpace(byte(r)) {
				return -1
			}
			return r
		}, tc.body)))
	case "quoted-printable":
		for i := 0; i < len(tc.body); i++ {
			switch {
			case tc.body[i] != '=':
				decoded = append(decoded, tc.body[i])
				ends = append(ends, i+1)
			case i+2 < len(tc.body) && tc.body[i+1] != '\r' && tc.body[i+1] != '\n':
				v, _ := unhex(tc.body[i+1])
				w, _ := unhex(tc.body[i+2])
				decoded = append(decoded, v<<4|w)
				i += 2
				ends = append(ends, i+1)
			}
		}
	default:
		decoded = tc.body
		for i := range tc.body {
			ends = append(ends, i+1)
		}
	}
	var d int
	mt, params := mediatype.Parse(tc.ct)
	switch mt {
	case "application/pkcs7-mime":
		d = len(decoded)
		if tc.cte == "" || tc.cte == "binary" {
			d = len(bytes.TrimSuffix(decoded, []byte("\r\n")))
		}
	case "multipart/encrypted":
		close := []byte("--" + params["boundary"] + "--")
		d = bytes.LastIndex(decoded, close) + len(close)
	default:
		d = len(bytes.TrimRight(decoded, " \t\r\n"))
	}
	if d == 0 {
		return 0
	}
	return ends[d-1]
}

// escapeAll writes b as quoted-printable with every byte escaped, in soft
// broken lines.
func escapeAll(b []byte) []byte {
	var out bytes.Buffer
	for i, c := range b {
		fmt.Fprintf(&out, "=%02X", c)
		if i%25 == 24 {
			out.WriteString("=\r\n")
		}
	}
	return out.Bytes()
}

// truncations checks that every accepted body, cut before its end, is
// refused: cut at every byte near both ends and for small bodies, every few
// bytes in between for large ones.
func truncations(t *testing.T, tests []testCase) {
	t.Helper()
	for _, tc := range tests {
		if !tc.want {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			end := significant(tc)
			step := 1 + end/600
			for n := 0; n < end; n++ {
				if n > 300 && n < end-300 && n%step != 0 {
					continue
				}
				c := NewChecker(tc.ct, tc.cte)
				c.Write(tc.body[:n])
				if ok, _ := c.Result(); ok {
					t.Fatalf("cut to %d of %d bytes: got ok, want not", n, len(tc.body))
				}
			}
		})
	}
}

const (
	ctEnveloped = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
	ctAuth      = "application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m"
	ctPKCS7     = "application/pkcs7-mime; name=smime.p7m"
)

func TestNewCheckerHeader(t *testing.T) {
	tests := []struct {
		ct, cte string
		want    bool
	}{
		{ctEnveloped, "base64", true},
		{"Application/PKCS7-MIME; Smime-Type=\"Enveloped-Data\"", "BASE64", true},
		{"application/x-pkcs7-mime; smime-type=authenveloped-data", "binary", true},
		{ctPKCS7, "", true},
		{ctPKCS7, "8bit", true},
		{ctPKCS7, "quoted-printable", false},
		{"application/pkcs7-mime; smime-type=signed-data", "base64", false},
		{"application/pkcs7-mime; smime-type=certs-only", "base64", false},
		{"application/pkcs7-mime; smime-type=compressed-data", "base64", false},
		{"application/pkcs7-signature", "base64", false},
		{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary=x`, "", true},
		{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary=x`, "7bit", true},
		{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary=x`, "base64", false},
		{`multipart/encrypted; protocol="application/pgp-encrypted"`, "", false},
		{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary="` + strings.Repeat("b", 71) + `"`, "", false},
		{`multipart/encrypted; protocol="application/pkcs7-mime"; boundary=x`, "", false},
		{`multipart/signed; protocol="application/pgp-signature"; boundary=x`, "", false},
		{"text/plain; charset=utf-8", "quoted-printable", true},
		{"text/plain", "base64", true},
		{"", "", true},
		{"", "x-uuencode", false},
		{"text/html", "", false},
		{"application/octet-stream", "", false},
		{"multipart/mixed; boundary=x", "", false},
		// A syntax error elsewhere does not hide the media type.
		{"application/pkcs7-mime; name=smime.p7m; smime-type=enveloped-data; junk", "base64", true},
	}
	for _, tc := range tests {
		if got := NewChecker(tc.ct, tc.cte) != nil; got != tc.want {
			t.Errorf("NewChecker(%q, %q) != nil: got %v, want %v", tc.ct, tc.cte, got, tc.want)
		}
	}
	var c *Checker
	if n, err := c.Write([]byte("x")); n != 1 || err != nil {
		t.Errorf("nil Checker Write: got %d, %v, want 1, nil", n, err)
	}
	if ok, reason := c.Result(); ok || reason == "" {
		t.Errorf("nil Checker Result: got %v %q, want false and a reason", ok, reason)
	}
}

func TestCMSTools(t *testing.T) {
	s := cmsMaterial(t)
	want := map[string]bool{
		"openssl cms signed-data":         false,
		"openssl cms signed-data -stream": false,
		"openssl cms data":                false,
	}
	var tests []testCase
	for name, der := range s {
		w, listed := want[name]
		w = w || !listed
		reason := "not enveloped-data"
		if strings.Contains(name, "signed") {
			reason = "signed-data"
		}
		ct := ctEnveloped
		if strings.Contains(name, "GCM") {
			ct = ctAuth
		}
		tests = append(tests,
			testCase{name + " raw", ct, "", der, w, reason},
			testCase{name + " raw, no smime-type", ctPKCS7, "binary", der, w, reason},
			testCase{name + " base64 76", ct, "base64", b64Lines(der, 76), w, reason},
			testCase{name + " base64 64, trailing blank lines", ct, "base64", append(b64Lines(der, 64), "\r\n \r\n\r\n"...), w, reason},
			testCase{name + " base64 one line", ct, "base64", []byte(base64.StdEncoding.EncodeToString(der)), w, reason},
			testCase{name + " base64 LF", ct, "base64", bytes.ReplaceAll(b64Lines(der, 76), []byte("\r"), nil), w, reason},
		)
		if !w {
			continue
		}
		tests = append(tests,
			testCase{name + " raw, data appended", ct, "", append(bytes.Clone(der), 'x'), false, "data after the end of the ContentInfo"},
			testCase{name + " raw, line break appended", ct, "", append(bytes.Clone(der), "\r\n"...), true, ""},
			testCase{name + " raw, two line breaks appended", ct, "", append(bytes.Clone(der), "\r\n\r\n"...), false, "data after the end"},
			testCase{name + " raw, twice", ct, "", append(bytes.Clone(der), der...), false, "data after the end"},
			testCase{name + " base64, data appended", ct, "base64", append(b64Lines(der, 76), b64Lines([]byte("Dear Bob, the secret is 42."), 76)...), false, "data after"},
			testCase{name + " base64, text appended", ct, "base64", append(b64Lines(der, 76), "\r\nDear Bob, the secret is 42.\r\n"...), false, "base64|data after the end"},
			testCase{name + " base64, twice", ct, "base64", b64Lines(append(bytes.Clone(der), der...), 76), false, "data after the end"},
			testCase{name + " header, then plaintext", ct, "", append(bytes.Clone(der[:60]), plaintext...), false, "CMS"},
			testCase{name + " base64 header, then plaintext", ct, "base64", b64Lines(append(bytes.Clone(der[:60]), plaintext...), 76), false, "CMS"},
		)
	}
	runCases(t, tests)
	t.Run("truncated", func(t *testing.T) { truncations(t, tests) })
}

// DER builders for hand-made structures.
func tlv(id byte, parts ...[]byte) []byte {
	c := bytes.Join(parts, nil)
	var l []byte
	switch n := len(c); {
	case n < 0x80:
		l = []byte{byte(n)}
	case n < 0x100:
		l = []byte{0x81, byte(n)}
	case n < 0x10000:
		l = []byte{0x82, byte(n >> 8), byte(n)}
	default:
		l = []byte{0x83, byte(n >> 16), byte(n >> 8), byte(n)}
	}
	return append(append([]byte{id}, l...), c...)
}

func ind(id byte, parts ...[]byte) []byte {
	return append(append([]byte{id, 0x80}, bytes.Join(parts, nil)...), 0, 0)
}

var (
	oidData   = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01}
	oidAES    = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a}
	oidRSA    = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01}
	version0  = tlv(0x02, []byte{0})
	ktri      = tlv(0x30, version0, tlv(0x80, []byte("subject key id")), tlv(0x30, tlv(0x06, oidRSA)), tlv(0x04, bytes.Repeat([]byte{0x5a}, 256)))
	algAES    = tlv(0x30, tlv(0x06, oidAES), tlv(0x04, bytes.Repeat([]byte{1}, 16)))
	cipher    = bytes.Repeat([]byte{0xc3}, 48)
	encrypted = tlv(0x80, cipher)
)

func contentInfo(oid []byte, fields ...[]byte) []byte {
	return tlv(0x30, tlv(0x06, oid), tlv(0xa0, tlv(0x30, fields...)))
}

func eci(content ...[]byte) []byte {
	return tlv(0x30, append([][]byte{tlv(0x06, oidData), algAES}, content...)...)
}

func TestCMSStructure(t *testing.T) {
	env := func(fields ...[]byte) []byte { return contentInfo(oidEnvelopedData, fields...) }
	auth := func(fields ...[]byte) []byte { return contentInfo(oidAuthEnvelopedData, fields...) }
	recips := tlv(0x31, ktri)
	good := env(version0, recips, eci(encrypted))
	mac := tlv(0x04, bytes.Repeat([]byte{9}, 16))
	deep := ind(0x30)
	for range 80 {
		deep = ind(0x30, deep)
	}
	tests := []testCase{
		{"minimal", ctPKCS7, "", good, true, ""},
		{"originatorInfo and unprotectedAttrs", ctPKCS7, "", env(version0, tlv(0xa0, tlv(0xa0, tlv(0x30))), recips, eci(encrypted), tlv(0xa1, tlv(0x30, tlv(0x06, oidData), tlv(0x31, tlv(0x04, []byte("v")))))), true, ""},
		{"every RecipientInfo choice", ctPKCS7, "", env(version0, tlv(0x31, ktri, tlv(0xa1, version0), tlv(0xa2, version0), tlv(0xa3, version0), tlv(0xa4, tlv(0x06, oidData))), eci(encrypted)), true, ""},
		{"constructed encryptedContent", ctPKCS7, "", env(version0, recips, eci(tlv(0xa0, tlv(0x04, cipher[:16]), tlv(0x04, cipher[16:])))), true, ""},
		{"all indefinite, nested segments", ctPKCS7, "", ind(0x30, tlv(0x06, oidEnvelopedData), ind(0xa0, ind(0x30, version0, ind(0x31, ind(0x30, version0)), ind(0x30, tlv(0x06, oidData), algAES, ind(0xa0, ind(0x24, tlv(0x04, cipher), ind(0x24, tlv(0x04, cipher))), tlv(0x04, cipher)))))), true, ""},
		{"definite inside indefinite", ctPKCS7, "", ind(0x30, tlv(0x06, oidEnvelopedData), tlv(0xa0, ind(0x30, version0, recips, eci(encrypted)))), true, ""},
		{"authEnvelopedData", ctPKCS7, "", auth(version0, recips, eci(encrypted), mac), true, ""},
		{"authEnvelopedData with attributes", ctPKCS7, "", auth(version0, recips, eci(encrypted), tlv(0xa1, tlv(0x30)), mac, tlv(0xa2, tlv(0x30))), true, ""},
		{"long-form lengths", ctPKCS7, "", []byte{0x30, 0x84, 0, 0, 0, byte(len(good) - 2), good[2]}, false, "CMS"},

		{"zero RecipientInfos", ctPKCS7, "", env(version0, tlv(0x31), eci(encrypted)), false, "no RecipientInfo"},
		{"missing encryptedContent", ctPKCS7, "", env(version0, recips, eci()), false, "EncryptedContentInfo ends before its encryptedContent"},
		{"empty encryptedContent", ctPKCS7, "", env(version0, recips, eci(tlv(0x80))), false, "empty encryptedContent"},
		{"constructed encryptedContent without segments", ctPKCS7, "", env(version0, recips, eci(tlv(0xa0))), false, "empty encryptedContent"},
		{"segment that is no OCTET STRING", ctPKCS7, "", env(version0, recips, eci(tlv(0xa0, tlv(0x0c, []byte("Dear Bob"))))), false, "segment with tag 0x0c"},
		{"RecipientInfo that is no SEQUENCE", ctPKCS7, "", env(version0, tlv(0x31, tlv(0x04, []byte("x"))), eci(encrypted)), false, "RecipientInfo with tag"},
		{"no version", ctPKCS7, "", env(recips, eci(encrypted)), false, "where version belongs"},
		{"no RecipientInfos", ctPKCS7, "", env(version0, eci(encrypted)), false, "where recipientInfos belongs"},
		{"no EncryptedContentInfo", ctPKCS7, "", env(version0, recips), false, "ends before its encryptedContentInfo"},
		{"element after unprotectedAttrs", ctPKCS7, "", env(version0, recips, eci(encrypted), tlv(0xa1), tlv(0x04, []byte("Dear Bob"))), false, "extra element"},
		{"plaintext in the ContentInfo", ctPKCS7, "", tlv(0x30, tlv(0x06, oidEnvelopedData), tlv(0xa0, tlv(0x30, version0, recips, eci(encrypted))), tlv(0x04, []byte("Dear Bob"))), false, "extra element"},
		{"primitive content", ctPKCS7, "", tlv(0x30, tlv(0x06, oidEnvelopedData), tlv(0x80, good)), false, "where content belongs"},
		{"authEnvelopedData without mac", ctPKCS7, "", auth(version0, recips, eci(encrypted)), false, "AuthEnvelopedData ends before its mac"},
		{"EnvelopedData with a mac", ctPKCS7, "", env(version0, recips, eci(encrypted), mac), false, "extra element"},
		{"signed-data", ctPKCS7, "", contentInfo(oidSignedData, version0), false, "signed-data"},
		{"id-data", ctPKCS7, "", tlv(0x30, tlv(0x06, oidData), tlv(0xa0, tlv(0x04, []byte("Dear Bob")))), false, "not enveloped-data"},
		{"not a SEQUENCE", ctPKCS7, "", append([]byte{0x31}, good[1:]...), false, "does not start with a ContentInfo"},
		{"plaintext", ctPKCS7, "", []byte(plaintext), false, "does not start with a ContentInfo"},
		{"empty", ctPKCS7, "", nil, false, "empty body"},
		{"base64 empty", ctPKCS7, "base64", []byte("\r\n"), false, "empty body"},
		{"end-of-contents at the top", ctPKCS7, "", append(bytes.Clone(good), 0, 0), false, "data after the end"},
		{"end-of-contents in a definite element", ctPKCS7, "", env(version0, recips, []byte{0, 0}, eci(encrypted)), false, "end-of-contents"},
		{"child longer than its parent", ctPKCS7, "", env(version0, []byte{0x31, 0x03}, ktri, eci(encrypted)), false, "runs past the end"},
		{"primitive longer than its parent", ctPKCS7, "", env(version0, []byte{0xa0, 0x03, 0x04, 0x05}, []byte("abcde"), recips, eci(encrypted)), false, "runs past the end"},
		{"contentType longer than the ContentInfo", ctPKCS7, "", append([]byte{0x30, 0x03, 0x06, 0x09}, oidEnvelopedData...), false, "runs past the end"},
		{"nesting bomb", ctPKCS7, "", ind(0x30, tlv(0x06, oidEnvelopedData), ind(0xa0, ind(0x30, version0, ind(0xa0, deep)))), false, "nesting too deep"},
		{"absurd length", ctPKCS7, "", []byte{0x30, 0x88, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false, "length too large"},
		{"length of nine octets", ctPKCS7, "", []byte{0x30, 0x89, 1, 0, 0, 0, 0, 0, 0, 0, 0}, false, "length too large"},
		{"indefinite primitive", ctPKCS7, "", env(version0, recips, eci([]byte{0x80, 0x80})), false, "indefinite length on a primitive"},
		{"oversized OID", ctPKCS7, "", tlv(0x30, tlv(0x06, bytes.Repeat([]byte{1}, 65))), false, "OBJECT IDENTIFIER length"},
		{"high tag number", ctPKCS7, "", env(version0, recips, eci(encrypted), []byte{0xbf, 0x81, 0x01, 0x00}), false, "extra element"},
		{"high tag number in originatorInfo", ctPKCS7, "", env(version0, tlv(0xa0, []byte{0xbf, 0x81, 0x01, 0x00}), recips, eci(encrypted)), true, ""},
		{"base64 bad character", ctPKCS7, "base64", append(b64Lines(good, 76), '*'), false, "base64: invalid character"},
		{"base64 cut group", ctPKCS7, "base64", []byte(base64.StdEncoding.EncodeToString(good) + "A"), false, "base64: incomplete final group"},
		{"base64 three pads", ctPKCS7, "base64", []byte(base64.StdEncoding.EncodeToString(good[:len(good)-1]) + "="), false, "base64"},
	}
	runCases(t, tests)
	t.Run("truncated", func(t *testing.T) { truncations(t, tests) })
}

// OpenPGP packet builders (RFC 9580 §4.2).
func pkt(tag byte, body []byte) []byte {
	h := []byte{0xc0 | tag}
	switch n := len(body); {
	case n < 192:
		h = append(h, byte(n))
	case n < 8384:
		n -= 192
		h = append(h, byte(n>>8+192), byte(n))
	default:
		h = append(h, 255, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(h, body...)
}

func pkt5(tag byte, body []byte) []byte {
	n := len(body)
	return append([]byte{0xc0 | tag, 255, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// oldPkt writes an old-format packet with length type lt (3: indeterminate).
func oldPkt(tag byte, lt int, body []byte) []byte {
	h := []byte{0x80 | tag<<2 | byte(lt)}
	n := len(body)
	switch lt {
	case 0:
		h = append(h, byte(n))
	case 1:
		h = append(h, byte(n>>8), byte(n))
	case 2:
		h = append(h, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(h, body...)
}

// partialPkt writes body in partial chunks of 1<<k bytes and a final length.
func partialPkt(tag byte, k int, body []byte) []byte {
	out := []byte{0xc0 | tag}
	for len(body) >= 1<<k {
		out = append(append(out, byte(224+k)), body[:1<<k]...)
		body = body[1<<k:]
	}
	n := len(body)
	if n < 192 {
		return append(append(out, byte(n)), body...)
	}
	n -= 192
	return append(append(out, byte(n>>8+192), byte(n)), body...)
}

// armored writes data as an armored message with CRLF lines of 64, with or
// without the checksum line.
func armored(data []byte, crc bool, headers ...string) []byte {
	var b bytes.Buffer
	b.WriteString(armorBegin + "\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(b64Lines(data, 64))
	if crc {
		c := crc24(crc24Init).update(data)
		b.WriteString("=" + base64.StdEncoding.EncodeToString([]byte{byte(c >> 16), byte(c >> 8), byte(c)}) + "\r\n")
	}
	b.WriteString(armorEnd + "\r\n")
	return b.Bytes()
}

func TestOpenPGPPackets(t *testing.T) {
	pkesk := pkt(tagPKESK, append([]byte{3}, bytes.Repeat([]byte{7}, 267)...))
	skesk := pkt(tagSKESK, []byte{4, 9, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0xff})
	seipd := pkt(tagSEIPD, append([]byte{1}, bytes.Repeat([]byte{0xee}, 300)...))
	big := append([]byte{1}, bytes.Repeat([]byte{0xee}, 5000)...)
	marker := pkt(tagMarker, []byte("PGP"))
	cat := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	tests := []struct {
		name   string
		data   []byte
		want   bool
		reason string
	}{
		{"PKESK, SEIPD", cat(pkesk, seipd), true, ""},
		{"SKESK, SEIPD", cat(skesk, seipd), true, ""},
		{"Marker, PKESK, SKESK, SEIPD", cat(marker, marker, pkesk, skesk, seipd), true, ""},
		{"old-format PKESK, SED", cat(oldPkt(tagPKESK, 1, pkesk[3:]), oldPkt(tagSED, 2, cipher)), true, ""},
		{"old-format indeterminate SED", cat(oldPkt(tagPKESK, 0, pkesk[3:200]), oldPkt(tagSED, 3, cipher)), true, ""},
		{"five-octet lengths", cat(pkt5(tagPKESK, pkesk[3:]), pkt5(tagSEIPD, seipd[3:])), true, ""},
		{"partial lengths", cat(pkesk, partialPkt(tagSEIPD, 9, big)), true, ""},
		{"partial lengths, final zero", cat(pkesk, partialPkt(tagSEIPD, 10, big[:4096])), true, ""},
		{"partial lengths, one byte chunks", cat(pkesk, partialPkt(tagSEIPD, 0, big[:40])), true, ""},
		{"SEIPD v2", cat(pkt(tagPKESK, append([]byte{6}, cipher...)), pkt(tagSEIPD, append([]byte{2}, cipher...))), true, ""},
		{"AEAD", cat(skesk, pkt(tagAEAD, append([]byte{1}, cipher...))), true, ""},

		{"no packets", nil, false, "no packets"},
		{"no session key packet", seipd, false, "without a session key packet"},
		{"session key packets only", cat(pkesk, skesk), false, "no encrypted data packet"},
		{"literal data in place of the encrypted", cat(pkesk, pkt(tagLiteral, []byte("b\x00\x00\x00\x00\x00Dear Bob"))), false, "literal data packet"},
		{"literal data alone", pkt(tagLiteral, []byte("b\x00\x00\x00\x00\x00Dear Bob")), false, "literal data packet"},
		{"compressed data", cat(pkesk, pkt(tagComp, []byte{1, 2, 3})), false, "compressed data packet"},
		{"two encrypted packets", cat(pkesk, seipd, seipd), false, "data after the encrypted data packet"},
		{"literal after the encrypted packet", cat(pkesk, seipd, pkt(tagLiteral, []byte("Dear Bob"))), false, "data after the encrypted data packet"},
		{"session key after the encrypted packet", cat(pkesk, seipd, pkesk), false, "data after the encrypted data packet"},
		{"Marker after a session key", cat(pkesk, marker, seipd), false, "Marker packet after"},
		{"bad Marker", cat(pkt(tagMarker, []byte("PGQ")), pkesk, seipd), false, "malformed Marker"},
		{"signature packet", cat(pkt(2, []byte{4, 0}), pkesk, seipd), false, "tag 2"},
		{"not a packet", cat([]byte("Dear Bob"), pkesk, seipd), false, "not a packet header"},
		{"partial PKESK", cat(partialPkt(tagPKESK, 9, append([]byte{3}, big...)), seipd), false, "partial body length"},
		{"indeterminate PKESK", cat(oldPkt(tagPKESK, 3, pkesk[3:])), false, "indeterminate length"},
		{"empty SEIPD", cat(pkesk, pkt(tagSEIPD, nil)), false, "empty packet"},
		{"empty indeterminate SED", cat(pkesk, oldPkt(tagSED, 3, nil)), false, "empty packet"},
		{"SEIPD version 3", cat(pkesk, pkt(tagSEIPD, append([]byte{3}, cipher...))), false, "unknown version 3"},
		{"PKESK version 2", cat(pkt(tagPKESK, append([]byte{2}, cipher...)), seipd), false, "unknown version 2"},
		{"cut inside the encrypted packet", cat(pkesk, seipd[:100]), false, "ends inside a packet"},
		{"cut inside a header", cat(pkesk, seipd[:2]), false, "ends inside a packet"},
		{"cut after a partial chunk", cat(pkesk, partialPkt(tagSEIPD, 9, big)[:2+512]), false, "ends inside a packet"},
	}
	var cases []testCase
	for _, tc := range tests {
		cases = append(cases, testCase{tc.name, "text/plain", "", armored(tc.data, true), tc.want, tc.reason})
	}
	runCases(t, cases)
	t.Run("truncated", func(t *testing.T) { truncations(t, cases) })
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestArmor(t *testing.T) {
	s := pgpMaterial(t)
	real := crlf(s["gpg -e"])
	begin, rest, _ := bytes.Cut(real, []byte("\r\n"))
	data := bytes.TrimPrefix(rest, []byte("\r\n"))
	crcAt := bytes.LastIndex(real, []byte("\r\n=")) + 3
	blank := bytes.Clone(real)
	blank[bytes.Index(real, data)+10] = ' '
	wrongCRC := bytes.Clone(real)
	// Another base64 character: another checksum.
	wrongCRC[crcAt+1] = "AB"[b2i(wrongCRC[crcAt+1] == 'A')]
	noCRC := append(bytes.Clone(real[:crcAt-1]), armorEnd+"\r\n"...)
	headers := append(append(bytes.Clone(begin), "\r\nVersion: GnuPG v2\r\nComment: https://gnupg.org\r\n\r\n"...), data...)
	qp := func(b []byte) []byte {
		var out bytes.Buffer
		w := quotedprintable.NewWriter(&out)
		w.Write(b)
		w.Close()
		return out.Bytes()
	}
	longLines := append(append([]byte(armorBegin+"\r\n\r\n"), bytes.ReplaceAll(data[:bytes.Index(data, []byte("\r\n="))], []byte("\r\n"), nil)...), "\r\n"+armorEnd+"\r\n"...)
	plain := []byte("Dear Bob, the secret is 42.\r\n")
	cat := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	tests := []testCase{
		{"CRLF", "text/plain", "", real, true, ""},
		{"LF as gpg writes it", "", "", s["gpg -e"], true, ""},
		{"no line break at the end", "text/plain", "7bit", bytes.TrimSuffix(real, []byte("\r\n")), true, ""},
		{"whitespace around", "text/plain; charset=us-ascii", "8bit", cat([]byte("\r\n  \r\n\t\r\n"), real, []byte("\r\n \r\n\r\n")), true, ""},
		{"armor headers", "text/plain", "", headers, true, ""},
		{"no checksum", "text/plain", "", noCRC, true, ""},
		{"one long base64 line", "text/plain", "", longLines, true, ""},
		{"trailing blanks on lines", "text/plain", "", bytes.ReplaceAll(real, []byte("\r\n"), []byte(" \t\r\n")), true, ""},
		{"quoted-printable", "text/plain", "quoted-printable", qp(real), true, ""},
		{"quoted-printable, every byte escaped", "text/plain", "quoted-printable", escapeAll(real), true, ""},
		{"base64", "text/plain", "base64", b64Lines(real, 76), true, ""},
		{"throw-keyids", "text/plain", "", crlf(s["gpg -e --throw-keyids"]), true, ""},
		{"two recipients", "text/plain", "", crlf(s["gpg -e two recipients"]), true, ""},
		{"partial lengths", "text/plain", "", crlf(s["gpg -e partial lengths"]), true, ""},
		{"symmetric", "text/plain", "", crlf(s["gpg -c"]), true, ""},
		{"public key and symmetric", "text/plain", "", crlf(s["gpg -e -c"]), true, ""},

		{"literal data (gpg --store)", "text/plain", "", crlf(s["gpg --store"]), false, "literal data packet"},
		{"signed (gpg --sign)", "text/plain", "", crlf(s["gpg --sign"]), false, "OpenPGP"},
		{"wrong checksum", "text/plain", "", wrongCRC, false, "checksum does not match"},
		{"malformed checksum", "text/plain", "", bytes.Replace(real, real[crcAt-1:crcAt+4], []byte("=ab"), 1), false, "malformed checksum"},
		{"armor header, then plaintext", "text/plain", "", cat(begin, []byte("\r\n"), plain), false, "not \"Key: value\""},
		{"armor header, blank line, then plaintext", "text/plain", "", cat(begin, []byte("\r\n\r\n"), plain), false, "OpenPGP: not a packet header"},
		{"armor header, blank line, then plaintext without blanks", "text/plain", "", cat(begin, []byte("\r\n\r\nDearBob\r\n"), []byte(armorEnd+"\r\n")), false, "OpenPGP"},
		{"header-like plaintext", "text/plain", "", cat(begin, []byte("\r\nNote: plaintext follows\r\n\r\n"), plain), false, "OpenPGP: not a packet header"},
		{"two messages", "text/plain", "", cat(real, real), false, "text after the END"},
		{"text before", "text/plain", "", cat(plain, real), false, "text before the BEGIN"},
		{"text after", "text/plain", "", cat(real, plain), false, "text after the END"},
		{"text after, inside base64", "text/plain", "base64", b64Lines(cat(real, plain), 76), false, "text after the END"},
		{"indented BEGIN", "text/plain", "", cat([]byte("  "), real), false, "text before the BEGIN"},
		{"signed message armor", "text/plain", "", bytes.Replace(real, []byte("BEGIN PGP MESSAGE"), []byte("BEGIN PGP SIGNED MESSAGE"), 1), false, "text before the BEGIN"},
		{"no END line", "text/plain", "", real[:bytes.Index(real, []byte(armorEnd))], false, "no END"},
		{"wrong END line", "text/plain", "", bytes.Replace(real, []byte("END PGP MESSAGE"), []byte("END PGP SIGNATURE"), 1), false, "END PGP MESSAGE line expected"},
		{"blank in a base64 line", "text/plain", "", blank, false, "invalid character"},
		{"quoted-printable bad escape", "text/plain", "quoted-printable", cat([]byte("=ZZ"), real), false, "quoted-printable"},
		{"quoted-printable bad escape after plaintext", "text/plain", "quoted-printable", cat(plain, []byte("=ZZ")), false, "text before the BEGIN"},
		{"quoted-printable cut escape", "text/plain", "quoted-printable", cat(real, []byte("=4")), false, "quoted-printable"},
		{"empty", "text/plain", "", nil, false, "no BEGIN"},
		{"only whitespace", "", "", []byte("\r\n \r\n"), false, "no BEGIN"},
		{"too long header line", "text/plain", "", cat(begin, []byte("\r\nComment: "), bytes.Repeat([]byte("x"), 2000), []byte("\r\n\r\n"), data), false, "line too long"},
		{"too many header lines", "text/plain", "", cat(begin, []byte("\r\n"), bytes.Repeat([]byte("Comment: x\r\n"), 65), []byte("\r\n"), data), false, "too many header lines"},
	}
	runCases(t, tests)
	t.Run("truncated", func(t *testing.T) { truncations(t, tests) })
}

// TestArmorOtherTools: the armor and packets of RNP (Thunderbird's library)
// and Sequoia, inline and in Thunderbird's PGP/MIME layout.
func TestArmorOtherTools(t *testing.T) {
	var tests []testCase
	for name, msg := range otherPGPMaterial(t) {
		tests = append(tests,
			testCase{name + " inline", "text/plain", "", crlf(msg), true, ""},
			testCase{name + " PGP/MIME", ctPGPMIME, "", thunderbird(crlf(msg)), true, ""},
			testCase{name + " inline, text after", "text/plain", "", append(crlf(msg), "Dear Bob\r\n"...), false, "text after the END"},
		)
	}
	runCases(t, tests)
	t.Run("truncated", func(t *testing.T) { truncations(t, tests) })
}

const (
	tbBoundary = "------------2xNBrvq0Ak8QGnS6vUfQo6Wr"
	ctPGPMIME  = `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="` + tbBoundary + `"`
)

// thunderbird lays out a PGP/MIME body as Thunderbird 115 writes it.
func thunderbird(armor []byte) []byte {
	const b = tbBoundary
	return []byte("This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n" +
		"--" + b + "\r\n" +
		"Content-Type: application/pgp-encrypted\r\n" +
		"Content-Description: PGP/MIME version identification\r\n" +
		"\r\n" +
		"Version: 1\r\n" +
		"\r\n" +
		"--" + b + "\r\n" +
		"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n" +
		"Content-Description: OpenPGP encrypted message\r\n" +
		"Content-Disposition: inline; filename=\"encrypted.asc\"\r\n" +
		"\r\n" +
		string(armor) +
		"\r\n" +
		"--" + b + "--\r\n" +
		"\r\n")
}

func TestPGPMIME(t *testing.T) {
	s := pgpMaterial(t)
	real := crlf(s["gpg -e"])
	tb := thunderbird(real)
	mutt := []byte("--x\r\nContent-Type: application/pgp-encrypted\r\nContent-Transfer-Encoding: 7bit\r\n\r\nVersion: 1\r\n\r\n" +
		"--x\r\nContent-Type: application/octet-stream\r\nContent-Disposition: inline; filename=\"msg.asc\"\r\n\r\n" +
		string(real) + "--x--\r\n")
	const ctMutt = `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="x"`
	rep := func(old, new string) []byte { return bytes.Replace(tb, []byte(old), []byte(new), 1) }
	const delim = "--" + tbBoundary
	plain := "Dear Bob, the secret is 42.\r\n"
	tests := []testCase{
		{"Thunderbird", ctPGPMIME, "", tb, true, ""},
		{"mutt", ctMutt, "7bit", mutt, true, ""},
		{"LF line ends", ctPGPMIME, "", bytes.ReplaceAll(tb, []byte("\r\n"), []byte("\n")), true, ""},
		{"partial lengths", ctPGPMIME, "", thunderbird(crlf(s["gpg -e partial lengths"])), true, ""},
		{"no close line break", ctMutt, "", bytes.TrimSuffix(mutt, []byte("\r\n")), true, ""},
		{"blank epilogue", ctPGPMIME, "", append(bytes.Clone(tb), bytes.Repeat([]byte("\r\n"), 3000)...), true, ""},
		{"short epilogue", ctPGPMIME, "", append(bytes.Clone(tb), "This is the end.\r\n"...), true, ""},
		{"boundary padding", ctMutt, "", bytes.ReplaceAll(mutt, []byte("--x\r\n"), []byte("--x \t\r\n")), true, ""},
		{"folded part header", ctPGPMIME, "", rep("application/octet-stream; name=", "application/octet-stream;\r\n name="), true, ""},
		{"Version: 1 in lower case", ctPGPMIME, "", rep("Version: 1", "version:   1"), true, ""},

		{"long preamble", ctPGPMIME, "", append([]byte(strings.Repeat("This is an OpenPGP/MIME encrypted message.\r\n", 30)), tb...), false, "preamble longer than 1 KiB"},
		{"plaintext preamble line", ctPGPMIME, "", append([]byte(strings.Repeat("x", 1100)+"\r\n"), tb...), false, "line too long"},
		{"long epilogue", ctPGPMIME, "", append(bytes.Clone(tb), strings.Repeat(plain, 40)...), false, "epilogue longer than 1 KiB"},
		{"third part", ctPGPMIME, "", rep(delim+"--", delim+"\r\nContent-Type: text/plain\r\n\r\n"+plain+delim+"--"), false, "not exactly two body parts"},
		{"one part", ctMutt, "", []byte("--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--x--\r\n"), false, "not exactly two body parts"},
		{"no parts", ctMutt, "", []byte("--x--\r\n"), false, "not exactly two body parts"},
		{"Version: 2", ctPGPMIME, "", rep("Version: 1", "Version: 2"), false, "not \"Version: 1\""},
		{"control part with text", ctPGPMIME, "", rep("Version: 1\r\n", "Version: 1\r\n"+plain), false, "not \"Version: 1\""},
		{"first part type", ctPGPMIME, "", rep("application/pgp-encrypted", "text/plain"), false, "not application/pgp-encrypted"},
		{"second part type", ctPGPMIME, "", rep("application/octet-stream", "text/plain"), false, "not application/octet-stream"},
		{"second part base64", ctPGPMIME, "", rep("Content-Description: OpenPGP", "Content-Transfer-Encoding: base64\r\nContent-Description: OpenPGP"), false, "transfer encoding"},
		{"malformed part header", ctPGPMIME, "", rep("Content-Description: OpenPGP", "Dear Bob\r\nContent-Description: OpenPGP"), false, "malformed body part header"},
		{"part header too long", ctPGPMIME, "", rep("Content-Description: OpenPGP", strings.Repeat("X-Pad: "+strings.Repeat("x", 500)+"\r\n", 9)+"Content-Description: OpenPGP"), false, "header too long"},
		{"plaintext second part", ctPGPMIME, "", bytes.Replace(tb, real, []byte(plain), 1), false, "armor"},
		{"text after the armor", ctPGPMIME, "", bytes.Replace(tb, real, append(bytes.Clone(real), plain...), 1), false, "text after the END"},
		{"text before the armor", ctPGPMIME, "", bytes.Replace(tb, real, append([]byte(plain), real...), 1), false, "text before the BEGIN"},
		{"two messages", ctPGPMIME, "", bytes.Replace(tb, real, append(bytes.Clone(real), real...), 1), false, "text after the END"},
		{"boundary-like line", ctPGPMIME, "", bytes.Replace(tb, real, append([]byte(delim+"x\r\n"), real...), 1), false, "line starts with the boundary"},
		{"no close delimiter", ctPGPMIME, "", tb[:bytes.LastIndex(tb, []byte(delim))], false, "no close delimiter"},
		{"another boundary", `multipart/encrypted; protocol="application/pgp-encrypted"; boundary=y`, "", tb, false, "preamble"},
		{"empty", ctPGPMIME, "", nil, false, "no close delimiter"},
	}
	runCases(t, tests)
	t.Run("truncated", func(t *testing.T) { truncations(t, tests) })
}

// TestCRC24 compares the table-driven checksum with the bitwise definition
// of RFC 9580 §6.1 at every length around the 8-byte stride.
func TestCRC24(t *testing.T) {
	bitwise := func(p []byte) uint32 {
		crc := uint32(crc24Init)
		for _, b := range p {
			crc ^= uint32(b) << 16
			for range 8 {
				crc <<= 1
				if crc&0x1000000 != 0 {
					crc ^= crc24Poly
				}
			}
		}
		return crc & crc24Mask
	}
	data := []byte("The quick brown fox jumps over the lazy dog, 0123456789.")
	for n := range len(data) {
		if got, want := uint32(crc24(crc24Init).update(data[:n])), bitwise(data[:n]); got != want {
			t.Errorf("crc24 of %d bytes: got %06x, want %06x", n, got, want)
		}
		if got, want := uint32(crc24(crc24Init).update(data[:n/2]).update(data[n/2:n])), bitwise(data[:n]); got != want {
			t.Errorf("crc24 of %d bytes in two calls: got %06x, want %06x", n, got, want)
		}
	}
}
