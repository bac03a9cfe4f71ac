package conformance

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// smimeOuterLF are the S/MIME fields of a filtered copy as Dovecot stores
// them (LF line ends).
const smimeOuterLF = "MIME-Version: 1.0\n" +
	"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\n name=smime.p7m\n" +
	"Content-Transfer-Encoding: base64\n" +
	"Content-Disposition: attachment; filename=smime.p7m\n"

// filteredCopy builds a stored filtered copy whose "envelope" is the entity
// itself in base64, for the identity decryptor: the comparison is tested
// without cryptography.
func filteredCopy(outer, entity string) string {
	return outer + smimeOuterLF + "\n" + base64Lines([]byte(entity))
}

func identity(der []byte) ([]byte, error) { return der, nil }

// Certificates as far as RecipientInfos see them: issuer and serial.
var (
	ownCert   = &x509.Certificate{RawIssuer: []byte("issuer A"), SerialNumber: big.NewInt(1)}
	ownRI     = smimetest.RecipientInfo{Kind: "ktri", RawIssuer: []byte("issuer A"), Serial: big.NewInt(1)}
	otherRI   = smimetest.RecipientInfo{Kind: "ktri", RawIssuer: []byte("issuer A"), Serial: big.NewInt(2)}
	otherCA   = smimetest.RecipientInfo{Kind: "ktri", RawIssuer: []byte("issuer B"), Serial: big.NewInt(1)}
	secondOwn = &x509.Certificate{RawIssuer: []byte("issuer B"), SerialNumber: big.NewInt(7)}
)

func TestCompareEncrypted(t *testing.T) {
	const direct = "From: a@example.com\nSubject: s\nMIME-Version: 1.0\nContent-Type: text/plain\n\nbody\n"
	for _, tc := range []struct {
		name, direct, filtered string
		decrypt                decryptFunc
		// ris are the RecipientInfos the envelope names (default: ownRI),
		// certs the recipient's (default: ownCert).
		ris   []smimetest.RecipientInfo
		riErr error
		certs []*x509.Certificate
		want  string // prefix of the difference, "" for equal
	}{
		{name: "equal", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n")},
		{name: "body byte changed", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbodY\r\n"),
			want:     "body differs: first difference at byte 3"},
		{name: "field lost", direct: direct,
			filtered: filteredCopy("From: a@example.com\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			want:     `header fields differ: only direct ["Subject: s\n"]`},
		{name: "field refolded", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject:\n s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			want:     "header fields differ"},
		{name: "default type added for a message without one",
			direct:   "Subject: s\n\nbody\n",
			filtered: filteredCopy("Subject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nbody\r\n")},
		{name: "content field left outside", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\nContent-Language: de\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			want:     "filter's copy is stored in plaintext or with a stray outer field"},
		{name: "plaintext", direct: direct, filtered: direct,
			want: "filter's copy is stored in plaintext or with a stray outer field"},
		{name: "no transfer encoding field", direct: direct,
			filtered: "From: a@example.com\nSubject: s\nMIME-Version: 1.0\nContent-Type: application/pkcs7-mime\n\nQQ==\n",
			want:     "filter's copy has 0 content-"},
		{name: "MIME-Version inside", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody\r\n"),
			want:     "MIME-Version inside the envelope"},
		{name: "non-field line kept as a field",
			direct:   "From: a@example.com\nstray line\nSubject: s\n\nbody\n",
			filtered: filteredCopy("From: a@example.com\nstray line\nSubject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nbody\r\n")},
		{name: "non-field line read as the body",
			direct:   "From: a@example.com\nstray line\nSubject: s\n\nbody\n",
			filtered: filteredCopy("From: a@example.com\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nstray line\r\nSubject: s\r\n\r\nbody\r\n")},
		{name: "mbox From line kept as a field, the next non-field line read as the body",
			direct:   "From a@example.com Mon Jan  1 00:00:00 2024\nSubject: s\nstray line\nmore\n",
			filtered: filteredCopy("From a@example.com Mon Jan  1 00:00:00 2024\nSubject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nstray line\r\nmore\r\n")},
		{name: "8-bit field name kept as a field, the next non-field line read as the body",
			direct:   "S\xfcbject: s\nstray line\n",
			filtered: filteredCopy("S\xfcbject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nstray line\r\n")},
		{name: "non-field line dropped",
			direct:   "From: a@example.com\nstray line\nSubject: s\n\nbody\n",
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nbody\r\n"),
			want:     "header fields differ"},
		{name: "message ending inside its last field", direct: "Subject: s",
			filtered: filteredCopy("Subject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\n")},
		{name: "lone CR kept", direct: "Subject: s\n\na\rb\n",
			filtered: filteredCopy("Subject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\na\rb\r\n")},
		{name: "CR at the very end dropped as Dovecot does", direct: "Subject: s\n\nbody",
			filtered: filteredCopy("Subject: s\n", "Content-Type: text/plain; charset=us-ascii\r\n\r\nbody\r")},
		{name: "does not decrypt", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "x"),
			decrypt:  func([]byte) ([]byte, error) { return nil, errors.New("bad decrypt") },
			want:     "filter's copy does not decrypt for its recipient: bad decrypt"},
		{name: "envelope shared with another recipient", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			ris:      []smimetest.RecipientInfo{ownRI, otherRI},
			want:     "filter's copy: envelope names 2 RecipientInfos, 1 of them not the recipient's certificates"},
		{name: "same serial from another issuer", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			ris:      []smimetest.RecipientInfo{otherCA},
			want:     "filter's copy: envelope names 1 RecipientInfos, 1 of them not"},
		{name: "own certificate named twice", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			ris:      []smimetest.RecipientInfo{ownRI, ownRI},
			want:     "filter's copy: envelope names the recipient's certificate (serial 1) 2 times"},
		{name: "one of the recipient's two certificates left out", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			certs:    []*x509.Certificate{ownCert, secondOwn},
			want:     "filter's copy: envelope names the recipient's certificate (serial 7) 0 times"},
		{name: "both of the recipient's certificates", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			certs:    []*x509.Certificate{ownCert, secondOwn},
			ris:      []smimetest.RecipientInfo{{Kind: "ktri", RawIssuer: []byte("issuer B"), Serial: big.NewInt(7)}, ownRI}},
		{name: "envelope names nobody", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			ris:      []smimetest.RecipientInfo{},
			want:     "filter's copy: envelope names the recipient's certificate (serial 1) 0 times"},
		{name: "envelope unreadable", direct: direct,
			filtered: filteredCopy("From: a@example.com\nSubject: s\n", "Content-Type: text/plain\r\n\r\nbody\r\n"),
			riErr:    errors.New("not a ContentInfo"),
			want:     "filter's copy: reading its envelope: not a ContentInfo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			decrypt := tc.decrypt
			if decrypt == nil {
				decrypt = identity
			}
			ris, certs := tc.ris, tc.certs
			if ris == nil {
				ris = []smimetest.RecipientInfo{ownRI}
			}
			if certs == nil {
				certs = []*x509.Certificate{ownCert}
			}
			got := compareEncrypted([]byte(tc.direct), []byte(tc.filtered), owner{
				certs:          certs,
				recipientInfos: func([]byte) ([]smimetest.RecipientInfo, error) { return ris, tc.riErr },
				decrypt:        decrypt,
			})
			if tc.want == "" && got != "" || !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want a difference starting %q", got, tc.want)
			}
		})
	}
}

// TestCompareEncryptedEnvelopes runs the comparison on real envelopes
// made by openssl, read and decrypted as TestConformance reads them: one
// for the recipient alone is equal, one shared with another recipient
// (what a filter that encrypts a transaction once for everyone writes)
// fails although it decrypts.
func TestCompareEncryptedEnvelopes(t *testing.T) {
	smimetest.Require(t, "openssl")
	const direct = "From: a@example.com\nSubject: s\nMIME-Version: 1.0\nContent-Type: text/plain\n\nbody\n"
	const entity = "Content-Type: text/plain\r\n\r\nbody\r\n"
	alice := smimetest.NewRecipient(t, "alice@"+filterDomain)
	bob := smimetest.NewRecipient(t, "bob@"+filterDomain)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	in := write("entity", entity)
	aliceCert, bobCert := write("alice.pem", string(alice.CertPEM)), write("bob.pem", string(bob.CertPEM))
	own := owner{
		certs:          []*x509.Certificate{alice.Cert},
		recipientInfos: smimetest.RecipientsOf,
		decrypt: func(der []byte) ([]byte, error) {
			return smimetest.DecryptGo(t, der, alice.CertPEM, alice.KeyPEM)
		},
	}
	for _, tc := range []struct {
		name  string
		certs []string
		want  string
	}{
		{"for the recipient alone", []string{aliceCert}, ""},
		{"shared with another recipient", []string{aliceCert, bobCert}, "filter's copy: envelope names 2 RecipientInfos, 1 of them not"},
		{"for another recipient only", []string{bobCert}, "filter's copy: envelope names 1 RecipientInfos, 1 of them not"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"cms", "-encrypt", "-aes256", "-binary", "-outform", "DER", "-in", in}, tc.certs...)
			der, err := exec.Command("openssl", args...).Output()
			if err != nil {
				t.Fatalf("openssl %s: %v", strings.Join(args, " "), err)
			}
			filtered := "From: a@example.com\nSubject: s\n" + smimeOuterLF + "\n" + base64Lines(der)
			got := compareEncrypted([]byte(direct), []byte(filtered), own)
			if tc.want == "" && got != "" || !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want a difference starting %q", got, tc.want)
			}
		})
	}
}

func TestStripTrace(t *testing.T) {
	const received = "Received: from client.localhost\n\tby vm with LMTP\n\tid x\n\tfor <u@direct.test>; Thu, 03 Dec 2026 19:58:55 +0000\n"
	for _, tc := range []struct {
		name, in, want, err string
	}{
		{name: "one recipient", in: "Return-Path: <s@x>\nDelivered-To: u@direct.test\n" + received + "Return-Path: <inner@x>\n\nbody\n",
			want: "Return-Path: <inner@x>\n\nbody\n"},
		{name: "several recipients: no Delivered-To", in: "Return-Path: <s@x>\n" + received + "Subject: s\n\nbody\n",
			want: "Subject: s\n\nbody\n"},
		{name: "message starting with a continuation line", in: "Return-Path: <s@x>\n" + received + " continued\nSubject: s\n\nbody\n",
			want: " continued\nSubject: s\n\nbody\n"},
		{name: "no Received", in: "Return-Path: <s@x>\nSubject: s\n\nbody\n", err: "Dovecot's trace field 3 is not received"},
		{name: "someone else's Received", in: "Return-Path: <s@x>\nReceived: by mx with ESMTP\nSubject: s\n\nbody\n", err: "Received field is not Dovecot's LMTP one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stripTrace([]byte(tc.in))
			switch {
			case tc.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.err)):
				t.Errorf("got error %v, want one starting %q", err, tc.err)
			case tc.err == "" && (err != nil || string(got) != tc.want):
				t.Errorf("got %q, %v, want %q", got, err, tc.want)
			}
		})
	}
}

func TestReallyEncrypted(t *testing.T) {
	for _, c := range cases(t) {
		if c.class != "7" {
			continue
		}
		msg := []byte(messageOf(c.s))
		if got := reallyEncrypted(msg); got != c.want.passThrough {
			t.Errorf("%s: reallyEncrypted = %v, want %v (the case's passThrough)", c.name, got, c.want.passThrough)
		}
	}
	// A valid armor whose packets are not encrypted data: a literal data
	// packet (tag 11), as gpg --store writes.
	literal := []byte{0xcb, 0x06, 'b', 0, 0, 0, 0, 0}
	armored := "-----BEGIN PGP MESSAGE-----\r\n\r\n" + base64.StdEncoding.EncodeToString(literal) + "\r\n=" +
		base64.StdEncoding.EncodeToString([]byte{byte(crc24(literal) >> 16), byte(crc24(literal) >> 8), byte(crc24(literal))}) +
		"\r\n-----END PGP MESSAGE-----\r\n"
	if reallyEncrypted([]byte("Subject: s\r\n\r\n" + armored)) {
		t.Errorf("reallyEncrypted of an armored literal data packet = true, want false")
	}
}
