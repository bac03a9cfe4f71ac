package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"strings"
)

// maxFileSize bounds how much of one file is read. Certificate files are a
// few KiB; a huge file in the directory is a mistake, and reading it whole
// at every reload would let it exhaust memory.
const maxFileSize = 4 << 20

var (
	pemBegin = []byte("-----BEGIN")
	// id-signedData, RFC 5652 §5.1: the container of "certs-only"
	// PKCS #7 files (.p7b, .p7c; RFC 8551 §3.6).
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
)

// parseFile decodes every certificate in data, which came from the file
// name. It never fails as a whole: what cannot be used is returned as
// Skipped entries, so that one bad block does not hide the good ones next
// to it. isPEM tells the caller that no returned certificate aliases data
// (PEM blocks are decoded into fresh buffers), so data may be zeroed.
// data itself is not modified.
func parseFile(name string, data []byte) (certs []*x509.Certificate, skipped []Skipped, isPEM bool) {
	skip := func(err error) { skipped = append(skipped, Skipped{File: name, Err: err}) }

	// Text before, between and after PEM blocks is allowed (OpenSSL writes
	// "subject=..." and "Bag Attributes" lines), so look for a BEGIN line
	// anywhere, not only at the start.
	if bytes.Contains(data, pemBegin) {
		certs, skipped = parsePEM(name, data)
		return certs, skipped, true
	}

	if len(bytes.TrimSpace(data)) == 0 {
		skip(fmt.Errorf("%w: empty file", ErrParse))
		return nil, skipped, false
	}
	// DER: one certificate, several concatenated, or a PKCS #7 bundle.
	cs, err := x509.ParseCertificates(data)
	if err == nil {
		return cs, nil, false
	}
	if looksLikePrivateKey(data) {
		skip(fmt.Errorf("DER file: %w", ErrPrivateKey))
		return nil, skipped, false
	}
	if cs, sk, ok := parsePKCS7(name, data, "DER file"); ok {
		return cs, sk, false
	}
	skip(fmt.Errorf("%w: neither PEM nor DER certificates: %w", ErrParse, err))
	return nil, skipped, false
}

func parsePEM(name string, data []byte) (certs []*x509.Certificate, skipped []Skipped) {
	skip := func(err error) { skipped = append(skipped, Skipped{File: name, Err: err}) }

	// pem.Decode silently passes over a block it cannot decode; count the
	// BEGIN lines to report those instead of losing them without a word.
	begins := 0
	for line := range bytes.Lines(data) {
		if bytes.HasPrefix(line, pemBegin) {
			begins++
		}
	}

	decoded := 0
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		decoded++
		where := fmt.Sprintf("PEM block %d (%s)", decoded, block.Type)
		switch {
		case block.Type == "CERTIFICATE" || block.Type == "X509 CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				skip(fmt.Errorf("%s: %w: %w", where, ErrParse, err))
				continue
			}
			certs = append(certs, c)
		case block.Type == "TRUSTED CERTIFICATE":
			// OpenSSL's format: the certificate followed by its trust
			// settings. The settings concern OpenSSL's verification, not
			// encryption to this recipient, so only the certificate is used.
			var first asn1.RawValue
			if _, err := asn1.Unmarshal(block.Bytes, &first); err != nil {
				skip(fmt.Errorf("%s: %w: %w", where, ErrParse, err))
				continue
			}
			c, err := x509.ParseCertificate(first.FullBytes)
			if err != nil {
				skip(fmt.Errorf("%s: %w: %w", where, ErrParse, err))
				continue
			}
			certs = append(certs, c)
		case block.Type == "PKCS7" || block.Type == "CMS":
			cs, sk, ok := parsePKCS7(name, block.Bytes, where)
			if !ok {
				skip(fmt.Errorf("%s: %w: not a PKCS #7 certificate bundle", where, ErrParse))
				continue
			}
			certs = append(certs, cs...)
			skipped = append(skipped, sk...)
		case strings.Contains(block.Type, "PRIVATE KEY"):
			// The daemon must never hold private keys: zero the decoded
			// key now rather than leave it to the garbage collector.
			clear(block.Bytes)
			skip(fmt.Errorf("%s: %w: delete it from the directory, only certificates belong there", where, ErrPrivateKey))
		default:
			skip(fmt.Errorf("%s: %w", where, ErrNotCertificate))
		}
	}
	if decoded < begins {
		skip(fmt.Errorf("%w: %d PEM block(s) could not be decoded", ErrParse, begins-decoded))
	}
	if decoded == 0 && begins == 0 {
		skip(fmt.Errorf("%w: no complete PEM block", ErrParse))
	}
	return certs, skipped
}

// looksLikePrivateKey reports whether DER data has the shape of a private
// key: PKCS #1 RSAPrivateKey, SEC 1 ECPrivateKey and PKCS #8 all are a
// SEQUENCE starting with an INTEGER version, where a certificate starts
// with the SEQUENCE tbsCertificate. Only the shape is examined, so the key
// is never parsed into long-lived values.
func looksLikePrivateKey(data []byte) bool {
	var outer asn1.RawValue
	if _, err := asn1.Unmarshal(data, &outer); err != nil {
		return false
	}
	if outer.Class != asn1.ClassUniversal || outer.Tag != asn1.TagSequence || !outer.IsCompound {
		return false
	}
	var first asn1.RawValue
	if _, err := asn1.Unmarshal(outer.Bytes, &first); err != nil {
		return false
	}
	return first.Class == asn1.ClassUniversal && first.Tag == asn1.TagInteger
}

// RFC 5652 §3 and §5.1, only as far as needed to reach the certificates of
// a certs-only bundle (a SignedData without signers).
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

type signedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	EncapContentInfo asn1.RawValue
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue `asn1:"optional,tag:1"`
	SignerInfos      asn1.RawValue
}

// parsePKCS7 reads the certificates of a DER PKCS #7 / CMS SignedData. ok
// is false when data is not a SignedData at all, so that the caller can
// report its own, more useful parse error.
func parsePKCS7(name string, data []byte, where string) (certs []*x509.Certificate, skipped []Skipped, ok bool) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(data, &ci)
	if err != nil || len(rest) != 0 || !ci.ContentType.Equal(oidSignedData) {
		return nil, nil, false
	}
	var sd signedData
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil {
		return nil, nil, false
	}
	skip := func(err error) { skipped = append(skipped, Skipped{File: name, Err: err}) }
	// Certificates is [0] IMPLICIT SET OF CertificateChoices: its Bytes are
	// the concatenated choices.
	in := sd.Certificates.Bytes
	for i := 1; len(in) > 0; i++ {
		var el asn1.RawValue
		in, err = asn1.Unmarshal(in, &el)
		if err != nil {
			skip(fmt.Errorf("%s: PKCS #7 certificate %d: %w: %w", where, i, ErrParse, err))
			break
		}
		if el.Class != asn1.ClassUniversal || el.Tag != asn1.TagSequence {
			// Attribute certificates and other choices are not X.509
			// public key certificates.
			skip(fmt.Errorf("%s: PKCS #7 certificate %d: %w", where, i, ErrNotCertificate))
			continue
		}
		c, err := x509.ParseCertificate(el.FullBytes)
		if err != nil {
			skip(fmt.Errorf("%s: PKCS #7 certificate %d: %w: %w", where, i, ErrParse, err))
			continue
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 && len(skipped) == 0 {
		skip(fmt.Errorf("%s: %w: PKCS #7 bundle without certificates", where, ErrParse))
	}
	return certs, skipped, true
}
