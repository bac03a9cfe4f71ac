package enroll

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/mail"
	"slices"
	"strings"
	"time"

	"go.mozilla.org/pkcs7"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/mediatype"
)

// SMIME is the Kind for S/MIME certificates. A request is a message signed
// as mail clients sign (RFC 8551 §3.5): multipart/signed with a detached
// application/pkcs7-signature (RFC 1847), or opaque application/pkcs7-mime
// with smime-type=signed-data; the signature is a CMS SignedData (RFC 5652
// §5) with one signer, RSA or ECDSA.
//
// The certificate asked for is the one the signature names in its
// SMIMEEncryptionKeyPreference attribute (RFC 8551 §2.5.3, or Microsoft's
// equivalent), so that a client with separate signing and encryption
// certificates enrolls the encryption one; without that attribute it is
// the signer's. It must pass exactly the checks of the certificate store
// (certs.CheckRecipient), chaining to Roots when set with the other
// certificates of the signature as intermediates.
type SMIME struct {
	// Roots, when set, are the trust anchors the signer's and the
	// requested certificates must chain to (certs.trust_roots).
	Roots *x509.CertPool
}

// Name implements Kind.
func (SMIME) Name() string { return "smime" }

var (
	// RFC 8551 §2.5.3; Microsoft's attribute has the same purpose and
	// holds an IssuerAndSerialNumber (Outlook writes both).
	oidEncryptionKeyPreference   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 2, 11}
	oidMSEncryptionKeyPreference = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 16, 4}

	oidSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidEnvelopedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidAuthEnveloped = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23}
)

// maxChain bounds the issuer path kept beside an enrolled certificate.
const maxChain = 4

// VerifyRequest implements Kind.
func (k SMIME) VerifyRequest(r *Request, now time.Time) (*Credential, error) {
	mt, params := mediatype.Parse(r.Header.Get("Content-Type"))
	var (
		der, content []byte
		err          error
	)
	switch mt {
	case "multipart/signed":
		proto := strings.ToLower(params["protocol"])
		if proto != "application/pkcs7-signature" && proto != "application/x-pkcs7-signature" {
			return nil, fmt.Errorf("%w: multipart/signed with protocol %q, not S/MIME", ErrUnsigned, params["protocol"])
		}
		content, der, err = splitSigned(r.Body, params["boundary"], "application/pkcs7-signature", "application/x-pkcs7-signature")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		switch st := strings.ToLower(params["smime-type"]); st {
		case "", "signed-data":
		case "enveloped-data", "authenveloped-data":
			return nil, fmt.Errorf("%w: the message is encrypted; send it signed only", ErrUnsigned)
		default:
			return nil, fmt.Errorf("%w: application/pkcs7-mime with smime-type %q", ErrUnsigned, st)
		}
		der, err = decodeTransfer(r.Body, r.Header.Get("Content-Transfer-Encoding"))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		switch oid := contentType(der); {
		case oid.Equal(oidEnvelopedData), oid.Equal(oidAuthEnveloped):
			return nil, fmt.Errorf("%w: the message is encrypted; send it signed only", ErrUnsigned)
		case !oid.Equal(oidSignedData):
			return nil, fmt.Errorf("%w: application/pkcs7-mime that holds no CMS SignedData", ErrBadSignature)
		}
		if content, err = signedContent(der); err != nil || content == nil {
			return nil, fmt.Errorf("%w: signed-data without readable content", ErrBadSignature)
		}
	default:
		return nil, fmt.Errorf("%w: sign the message with the certificate to enroll (S/MIME)", ErrUnsigned)
	}

	p7, signer, err := verifyCMS(der, content, now)
	if err != nil {
		return nil, err
	}
	if now.Before(signer.NotBefore) || now.After(signer.NotAfter) {
		return nil, fmt.Errorf("%w: the signer's certificate is valid only from %s to %s", ErrBadSignature,
			signer.NotBefore.UTC().Format(time.RFC3339), signer.NotAfter.UTC().Format(time.RFC3339))
	}
	others := func(c *x509.Certificate) []*x509.Certificate {
		var out []*x509.Certificate
		for _, o := range p7.Certificates {
			if !o.Equal(c) {
				out = append(out, o)
			}
		}
		return out
	}
	if k.Roots != nil {
		pool := x509.NewCertPool()
		for _, c := range others(signer) {
			pool.AddCert(c)
		}
		if _, err := signer.Verify(x509.VerifyOptions{
			Roots: k.Roots, Intermediates: pool, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		}); err != nil {
			return nil, fmt.Errorf("%w: signer: %w: %w", ErrUnusableCertificate, certs.ErrUntrusted, err)
		}
	}

	want, named := encryptionPreference(p7)
	requested := signer
	if want != nil {
		requested = want
	}
	inter := others(requested)
	addrs, from, until, err := certs.RecipientValidity(requested, inter, k.Roots, now)
	if err != nil {
		if named && want == nil {
			return nil, fmt.Errorf("%w: %w (the signature names an encryption certificate that is not in the message)", ErrUnusableCertificate, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrUnusableCertificate, err)
	}
	if requested != signer {
		// The signature vouches for the encryption certificate only
		// for the signer's own addresses.
		signerAddrs := certs.CertificateAddresses(signer)
		addrs = slices.DeleteFunc(addrs, func(a string) bool { return !slices.Contains(signerAddrs, a) })
		if len(addrs) == 0 {
			return nil, fmt.Errorf("%w: the encryption certificate names none of the signer's addresses", ErrUnusableCertificate)
		}
	}
	return &Credential{
		Kind:        k.Name(),
		Fingerprint: fingerprint(requested.Raw),
		Addresses:   addrs,
		NotBefore:   from,
		NotAfter:    until,
		Certificate: requested,
		Chain:       issuerPath(requested, inter),
	}, nil
}

// verifyCMS checks the one signature of a SignedData over content: the
// detached part, or the content signedContent read from opaque
// signed-data. A detached part that arrived with bare LF line ends is
// checked again in canonical CRLF form (RFC 8551 §3.1.1), which is what the
// signer hashed.
func verifyCMS(der, content []byte, now time.Time) (p7 *pkcs7.PKCS7, signer *x509.Certificate, err error) {
	defer func() {
		// The signature is untrusted input to a library that has had
		// bounds bugs: a panic is a bad signature, not a crash.
		if r := recover(); r != nil {
			p7, signer, err = nil, nil, fmt.Errorf("%w: malformed signature", ErrBadSignature)
		}
	}()
	p7, err = pkcs7.Parse(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	if content != nil {
		p7.Content = content
	}
	if n := len(p7.Signers); n != 1 {
		return nil, nil, fmt.Errorf("%w: %d signers, want one", ErrBadSignature, n)
	}
	signer = p7.GetOnlySigner()
	if signer == nil {
		return nil, nil, fmt.Errorf("%w: the signer's certificate is not in the message", ErrBadSignature)
	}
	// No trust store: the chain, validity and usage are checked here,
	// against the injected clock, not pkcs7's.
	err = p7.VerifyWithChainAtTime(nil, now)
	if err != nil && content != nil && hasBareLF(content) {
		p7.Content = toCRLF(content)
		err = p7.VerifyWithChainAtTime(nil, now)
	}
	if err != nil {
		var mismatch *pkcs7.MessageDigestMismatchError
		if errors.As(err, &mismatch) {
			return nil, nil, fmt.Errorf("%w: the content does not match the signature (changed in transit?)", ErrBadSignature)
		}
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return p7, signer, nil
}

type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial *big.Int
}

// encryptionPreference returns the certificate of the message that the
// signed attributes name as the signer's encryption certificate. named
// reports that an attribute was there, even when its certificate is not.
func encryptionPreference(p7 *pkcs7.PKCS7) (c *x509.Certificate, named bool) {
	byIAS := func(ias issuerAndSerial) *x509.Certificate {
		for _, c := range p7.Certificates {
			if bytes.Equal(c.RawIssuer, ias.Issuer.FullBytes) && c.SerialNumber.Cmp(ias.Serial) == 0 {
				return c
			}
		}
		return nil
	}
	bySKI := func(ski []byte) *x509.Certificate {
		for _, c := range p7.Certificates {
			if len(ski) > 0 && bytes.Equal(c.SubjectKeyId, ski) {
				return c
			}
		}
		return nil
	}
	var pref asn1.RawValue
	if err := p7.UnmarshalSignedAttribute(oidEncryptionKeyPreference, &pref); err == nil && pref.Class == asn1.ClassContextSpecific {
		// SMIMEEncryptionKeyPreference ::= CHOICE { [0] IMPLICIT
		// IssuerAndSerialNumber, [1] IMPLICIT RecipientKeyIdentifier,
		// [2] IMPLICIT SubjectKeyIdentifier } (RFC 8551 §2.5.3).
		switch pref.Tag {
		case 0:
			var ias issuerAndSerial
			if _, err := asn1.UnmarshalWithParams(pref.FullBytes, &ias, "tag:0"); err == nil && ias.Serial != nil {
				return byIAS(ias), true
			}
		case 1:
			var rki struct {
				SKI  []byte
				Rest asn1.RawValue `asn1:"optional"`
			}
			if _, err := asn1.UnmarshalWithParams(pref.FullBytes, &rki, "tag:1"); err == nil {
				return bySKI(rki.SKI), true
			}
		case 2:
			return bySKI(pref.Bytes), true
		}
		return nil, true
	}
	var ias issuerAndSerial
	if err := p7.UnmarshalSignedAttribute(oidMSEncryptionKeyPreference, &ias); err == nil && ias.Serial != nil {
		return byIAS(ias), true
	}
	return nil, false
}

// issuerPath returns the certificates among pool that lead from c towards
// a root (the root itself left out: a trust anchor comes from
// configuration, not from a request).
func issuerPath(c *x509.Certificate, pool []*x509.Certificate) []*x509.Certificate {
	var path []*x509.Certificate
	for cur := c; len(path) < maxChain; {
		var next *x509.Certificate
		for _, p := range pool {
			if !p.Equal(cur) && bytes.Equal(p.RawSubject, cur.RawIssuer) && cur.CheckSignatureFrom(p) == nil {
				next = p
				break
			}
		}
		if next == nil || bytes.Equal(next.RawSubject, next.RawIssuer) || slices.ContainsFunc(path, next.Equal) {
			break
		}
		path = append(path, next)
		cur = next
	}
	return path
}

// Usable implements Kind: the store's checks at now.
func (k SMIME) Usable(c *Credential, now time.Time) (time.Time, error) {
	if c.Certificate == nil {
		return time.Time{}, errors.New("no certificate")
	}
	_, _, until, err := certs.RecipientValidity(c.Certificate, c.Chain, k.Roots, now)
	return until, err
}

// Encode implements Kind: PEM, the certificate first, then its issuers.
func (SMIME) Encode(c *Credential) []byte {
	var b bytes.Buffer
	for _, x := range append([]*x509.Certificate{c.Certificate}, c.Chain...) {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})
	}
	return b.Bytes()
}

// Decode implements Kind.
func (k SMIME) Decode(data []byte) (*Credential, error) {
	var all []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		all = append(all, c)
	}
	if len(all) == 0 {
		return nil, errors.New("no certificate")
	}
	leaf := all[0]
	return &Credential{
		Kind:        k.Name(),
		Fingerprint: fingerprint(leaf.Raw),
		Addresses:   certs.CertificateAddresses(leaf),
		NotBefore:   leaf.NotBefore,
		NotAfter:    leaf.NotAfter,
		Certificate: leaf,
		Chain:       all[1:],
	}, nil
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// splitSigned returns the signed first part of a multipart/signed body,
// exactly as received (RFC 1847 §2.1: the CRLF before a boundary
// delimiter belongs to the delimiter, RFC 2046 §5.1.1), and the decoded
// signature of the second part, which must be of one of sigTypes (the
// protocol parameter's type, RFC 1847 §2.1).
func splitSigned(body []byte, boundary string, sigTypes ...string) (content, sig []byte, err error) {
	if boundary == "" {
		return nil, nil, errors.New("multipart/signed without a boundary")
	}
	delim := []byte("--" + boundary)
	starts, ends := boundaryLines(body, delim)
	if len(starts) < 3 {
		return nil, nil, errors.New("multipart/signed needs two parts")
	}
	content = body[ends[0]:partEnd(body, starts[1])]
	part := body[ends[1]:partEnd(body, starts[2])]
	msg, err := mail.ReadMessage(bytes.NewReader(part))
	if err != nil {
		return nil, nil, fmt.Errorf("signature part: %w", err)
	}
	mt, _ := mediatype.Parse(msg.Header.Get("Content-Type"))
	if !slices.Contains(sigTypes, mt) {
		return nil, nil, fmt.Errorf("second part is %q, not %s", mt, sigTypes[0])
	}
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(msg.Body); err != nil {
		return nil, nil, err
	}
	sig, err = decodeTransfer(raw.Bytes(), msg.Header.Get("Content-Transfer-Encoding"))
	return content, sig, err
}

// boundaryLines finds the lines that are boundary delimiters: their start
// offsets and the offsets just after their line end. A line is one when it
// starts with delim followed by "--", whitespace or its end (RFC 2046
// §5.1.1 allows trailing whitespace).
func boundaryLines(body, delim []byte) (starts, ends []int) {
	for off := 0; off < len(body); {
		line := body[off:]
		next := len(body)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			next = off + i + 1
			line = line[:i+1]
		}
		if rest, ok := bytes.CutPrefix(line, delim); ok {
			rest = bytes.TrimPrefix(rest, []byte("--"))
			if len(bytes.TrimRight(rest, " \t\r\n")) == 0 {
				starts, ends = append(starts, off), append(ends, next)
			}
		}
		off = next
	}
	return starts, ends
}

// partEnd is where the part before the delimiter line at start ends: before
// the CRLF (or LF) that precedes the delimiter.
func partEnd(body []byte, start int) int {
	end := start
	if end > 0 && body[end-1] == '\n' {
		end--
		if end > 0 && body[end-1] == '\r' {
			end--
		}
	}
	return end
}

// decodeTransfer undoes a Content-Transfer-Encoding of a CMS object:
// base64 (what clients send), or none.
func decodeTransfer(b []byte, cte string) ([]byte, error) {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		clean := bytes.Map(func(r rune) rune {
			if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, b)
		out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
		n, err := base64.StdEncoding.Decode(out, clean)
		if err != nil {
			// Some writers drop the padding.
			n, err = base64.RawStdEncoding.Decode(out, bytes.TrimRight(clean, "="))
			if err != nil {
				return nil, fmt.Errorf("base64: %w", err)
			}
		}
		return out[:n], nil
	case "", "binary", "7bit", "8bit":
		return b, nil
	default:
		return nil, fmt.Errorf("unsupported Content-Transfer-Encoding %q", cte)
	}
}

// contentType reads the content type OID of a BER ContentInfo without
// parsing the rest: encoding/asn1 cannot read the indefinite lengths that
// streaming signers write.
func contentType(der []byte) asn1.ObjectIdentifier {
	if len(der) < 2 || der[0] != 0x30 {
		return nil
	}
	i := 2
	switch l := der[1]; {
	case l == 0x80: // indefinite
	case l > 0x80:
		i += int(l & 0x7f)
	}
	if i >= len(der) {
		return nil
	}
	var oid asn1.ObjectIdentifier
	if _, err := asn1.Unmarshal(der[i:], &oid); err != nil {
		return nil
	}
	return oid
}

func hasBareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

func toCRLF(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/32)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}
