package smimetest

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
)

// Envelope is what a CMS EnvelopedData (RFC 5652 §6.1) shows without a key.
type Envelope struct {
	// Indefinite reports whether the ContentInfo uses indefinite length
	// (streamed BER, as `openssl cms -stream` writes).
	Indefinite        bool
	Version           int
	Recipients        []RecipientInfo
	ContentType       asn1.ObjectIdentifier // of the encrypted content, id-data
	ContentEncryption asn1.ObjectIdentifier
	IV                []byte
	// Segments are the lengths of the primitive OCTET STRINGs that make up a
	// constructed encryptedContent; a primitive one gives one length and
	// Constructed false.
	Segments    []int
	Constructed bool
}

// RecipientInfo is one RecipientInfo. Kind is "ktri" for
// KeyTransRecipientInfo, else "kari", "kekri", "pwri" or "ori", for which
// only Kind is filled in.
type RecipientInfo struct {
	Kind      string
	Version   int
	RawIssuer []byte // DER Name, compare with x509.Certificate.RawIssuer
	Issuer    string
	Serial    *big.Int
	// SubjectKeyID is set instead of issuer and serial when the rid is
	// [0] subjectKeyIdentifier.
	SubjectKeyID  []byte
	KeyEncryption asn1.ObjectIdentifier
	// KeyEncryptionParams is the DER of the algorithm parameters, nil when
	// absent.
	KeyEncryptionParams []byte
	EncryptedKey        []byte
}

// Is reports whether the RecipientInfo names that certificate.
func (ri RecipientInfo) Is(c *x509.Certificate) bool {
	if ri.SubjectKeyID != nil {
		return bytes.Equal(ri.SubjectKeyID, c.SubjectKeyId)
	}
	return ri.Serial != nil && bytes.Equal(ri.RawIssuer, c.RawIssuer) && ri.Serial.Cmp(c.SerialNumber) == 0
}

func (ri RecipientInfo) String() string {
	if ri.SubjectKeyID != nil {
		return fmt.Sprintf("%s skid=%x", ri.Kind, ri.SubjectKeyID)
	}
	return fmt.Sprintf("%s issuer=%q serial=%x", ri.Kind, ri.Issuer, ri.Serial)
}

var oidEnvelopedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}

// RecipientsOf lists the RecipientInfos of a ContentInfo(EnvelopedData):
// who the envelope says it is for.
func RecipientsOf(der []byte) ([]RecipientInfo, error) {
	env, err := ParseEnvelope(der)
	if err != nil {
		return nil, err
	}
	return env.Recipients, nil
}

// ParseEnvelope reads the structure of a ContentInfo(EnvelopedData) in BER,
// definite or indefinite length, independently of the code under test.
func ParseEnvelope(der []byte) (*Envelope, error) {
	ci, rest, err := next(der, 0)
	if err != nil {
		return nil, fmt.Errorf("ContentInfo: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("ContentInfo: %d bytes after it", len(rest))
	}
	if ci.tag != 0x30 {
		return nil, fmt.Errorf("ContentInfo: tag %#x, want SEQUENCE", ci.tag)
	}
	env := &Envelope{Indefinite: ci.indefinite}
	items, err := children(ci.body, 2)
	if err != nil || len(items) != 2 {
		return nil, fmt.Errorf("ContentInfo: want contentType and content: %v", err)
	}
	oid, err := parseOID(items[0])
	if err != nil {
		return nil, err
	}
	if !oid.Equal(oidEnvelopedData) {
		return nil, fmt.Errorf("contentType %v, want envelopedData %v", oid, oidEnvelopedData)
	}
	if items[1].tag != 0xa0 {
		return nil, fmt.Errorf("content: tag %#x, want [0]", items[1].tag)
	}
	ed, err := children(items[1].body, 1)
	if err != nil || len(ed) != 1 || ed[0].tag != 0x30 {
		return nil, fmt.Errorf("EnvelopedData: want one SEQUENCE: %v", err)
	}
	fields, err := children(ed[0].body, 5)
	if err != nil {
		return nil, fmt.Errorf("EnvelopedData: %w", err)
	}
	if len(fields) < 3 {
		return nil, errors.New("EnvelopedData: too few fields")
	}
	if env.Version, err = parseSmallInt(fields[0]); err != nil {
		return nil, fmt.Errorf("EnvelopedData version: %w", err)
	}
	fields = fields[1:]
	if fields[0].tag == 0xa0 { // originatorInfo
		fields = fields[1:]
	}
	if len(fields) < 2 || fields[0].tag != 0x31 {
		return nil, errors.New("EnvelopedData: no recipientInfos SET")
	}
	ris, err := children(fields[0].body, 3)
	if err != nil {
		return nil, fmt.Errorf("recipientInfos: %w", err)
	}
	for _, e := range ris {
		ri, err := parseRecipientInfo(e)
		if err != nil {
			return nil, err
		}
		env.Recipients = append(env.Recipients, ri)
	}
	if err := parseEncryptedContentInfo(fields[1], env); err != nil {
		return nil, err
	}
	return env, nil
}

func parseRecipientInfo(e element) (RecipientInfo, error) {
	switch e.tag {
	case 0xa1:
		return RecipientInfo{Kind: "kari"}, nil
	case 0xa2:
		return RecipientInfo{Kind: "kekri"}, nil
	case 0xa3:
		return RecipientInfo{Kind: "pwri"}, nil
	case 0xa4:
		return RecipientInfo{Kind: "ori"}, nil
	case 0x30:
	default:
		return RecipientInfo{}, fmt.Errorf("RecipientInfo: tag %#x", e.tag)
	}
	ri := RecipientInfo{Kind: "ktri"}
	f, err := children(e.body, 4)
	if err != nil || len(f) != 4 {
		return ri, fmt.Errorf("KeyTransRecipientInfo: want 4 fields: %v", err)
	}
	if ri.Version, err = parseSmallInt(f[0]); err != nil {
		return ri, fmt.Errorf("KeyTransRecipientInfo version: %w", err)
	}
	switch f[1].tag {
	case 0x30:
		ias, err := children(f[1].body, 5)
		if err != nil || len(ias) != 2 || ias[0].tag != 0x30 || ias[1].tag != 0x02 {
			return ri, fmt.Errorf("IssuerAndSerialNumber: %v", err)
		}
		ri.RawIssuer = ias[0].raw
		var name pkix.RDNSequence
		if _, err := asn1.Unmarshal(ias[0].raw, &name); err != nil {
			return ri, fmt.Errorf("issuer: %w", err)
		}
		var pn pkix.Name
		pn.FillFromRDNSequence(&name)
		ri.Issuer = pn.String()
		ri.Serial = new(big.Int)
		if _, err := asn1.Unmarshal(ias[1].raw, &ri.Serial); err != nil {
			return ri, fmt.Errorf("serial: %w", err)
		}
	case 0x80:
		ri.SubjectKeyID = append([]byte{}, f[1].body...)
	default:
		return ri, fmt.Errorf("rid: tag %#x", f[1].tag)
	}
	alg, err := children(f[2].body, 5)
	if err != nil || len(alg) < 1 {
		return ri, fmt.Errorf("keyEncryptionAlgorithm: %v", err)
	}
	if ri.KeyEncryption, err = parseOID(alg[0]); err != nil {
		return ri, err
	}
	if len(alg) > 1 {
		ri.KeyEncryptionParams = alg[1].raw
	}
	if f[3].tag != 0x04 {
		return ri, fmt.Errorf("encryptedKey: tag %#x", f[3].tag)
	}
	ri.EncryptedKey = f[3].body
	return ri, nil
}

func parseEncryptedContentInfo(e element, env *Envelope) error {
	if e.tag != 0x30 {
		return fmt.Errorf("EncryptedContentInfo: tag %#x", e.tag)
	}
	f, err := children(e.body, 4)
	if err != nil || len(f) < 2 {
		return fmt.Errorf("EncryptedContentInfo: %v", err)
	}
	if env.ContentType, err = parseOID(f[0]); err != nil {
		return err
	}
	alg, err := children(f[1].body, 5)
	if err != nil || len(alg) < 1 {
		return fmt.Errorf("contentEncryptionAlgorithm: %v", err)
	}
	if env.ContentEncryption, err = parseOID(alg[0]); err != nil {
		return err
	}
	if len(alg) > 1 && alg[1].tag == 0x04 {
		env.IV = alg[1].body
	}
	if len(f) < 3 {
		return nil // detached content
	}
	switch f[2].tag {
	case 0x80:
		env.Segments = []int{len(f[2].body)}
	case 0xa0:
		env.Constructed = true
		segs, err := children(f[2].body, 5)
		if err != nil {
			return fmt.Errorf("encryptedContent: %w", err)
		}
		for _, s := range segs {
			if s.tag != 0x04 {
				return fmt.Errorf("encryptedContent segment: tag %#x, want primitive OCTET STRING", s.tag)
			}
			env.Segments = append(env.Segments, len(s.body))
		}
	default:
		return fmt.Errorf("encryptedContent: tag %#x", f[2].tag)
	}
	return nil
}

// element is one BER TLV: tag is the identifier octet (low tag numbers only),
// body the contents octets (for indefinite length, up to the end-of-contents
// octets), raw the whole encoding.
type element struct {
	tag        byte
	body       []byte
	raw        []byte
	indefinite bool
}

const maxDepth = 32

func next(b []byte, depth int) (element, []byte, error) {
	if depth > maxDepth {
		return element{}, nil, errors.New("BER nested too deep")
	}
	if len(b) < 2 {
		return element{}, nil, io.ErrUnexpectedEOF
	}
	tag := b[0]
	if tag&0x1f == 0x1f {
		return element{}, nil, fmt.Errorf("tag %#x: high tag numbers not supported", tag)
	}
	l := int(b[1])
	i := 2
	switch {
	case l == 0x80:
		if tag&0x20 == 0 {
			return element{}, nil, fmt.Errorf("tag %#x: primitive with indefinite length", tag)
		}
		rest := b[i:]
		for {
			if len(rest) >= 2 && rest[0] == 0 && rest[1] == 0 {
				end := len(b) - len(rest)
				return element{tag: tag, body: b[i:end], raw: b[:end+2], indefinite: true}, rest[2:], nil
			}
			var err error
			if _, rest, err = next(rest, depth+1); err != nil {
				return element{}, nil, err
			}
		}
	case l > 0x80:
		k := l & 0x7f
		if k > 4 || len(b) < 2+k {
			return element{}, nil, fmt.Errorf("tag %#x: bad length", tag)
		}
		l = 0
		for _, c := range b[2 : 2+k] {
			l = l<<8 | int(c)
		}
		i += k
	}
	if l < 0 || len(b)-i < l {
		return element{}, nil, fmt.Errorf("tag %#x: length %d beyond the data", tag, l)
	}
	return element{tag: tag, body: b[i : i+l], raw: b[:i+l]}, b[i+l:], nil
}

// children splits contents octets into elements.
func children(b []byte, depth int) ([]element, error) {
	var out []element
	for len(b) > 0 {
		e, rest, err := next(b, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		b = rest
	}
	return out, nil
}

func parseOID(e element) (asn1.ObjectIdentifier, error) {
	var oid asn1.ObjectIdentifier
	if e.tag != 0x06 {
		return nil, fmt.Errorf("tag %#x, want OBJECT IDENTIFIER", e.tag)
	}
	if _, err := asn1.Unmarshal(e.raw, &oid); err != nil {
		return nil, err
	}
	return oid, nil
}

func parseSmallInt(e element) (int, error) {
	var v int
	if e.tag != 0x02 {
		return 0, fmt.Errorf("tag %#x, want INTEGER", e.tag)
	}
	if _, err := asn1.Unmarshal(e.raw, &v); err != nil {
		return 0, err
	}
	return v, nil
}

// ExtractDER returns the decoded payload of the application/pkcs7-mime part
// of a message: the top-level entity, or the first such part of a multipart
// message.
func ExtractDER(message []byte) ([]byte, error) {
	m, err := mail.ReadMessage(bytes.NewReader(message))
	if err != nil {
		return nil, fmt.Errorf("smimetest: reading message: %w", err)
	}
	der, err := findPKCS7(m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Body, 0)
	if err != nil {
		return nil, err
	}
	if der == nil {
		return nil, errors.New("smimetest: no application/pkcs7-mime part")
	}
	return der, nil
}

func findPKCS7(ct, cte string, body io.Reader, depth int) ([]byte, error) {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return nil, nil // a part whose type cannot be read is not the one looked for
	}
	switch {
	case mt == "application/pkcs7-mime" || mt == "application/x-pkcs7-mime":
		raw, err := io.ReadAll(body)
		if err != nil {
			return nil, err
		}
		switch strings.ToLower(strings.TrimSpace(cte)) {
		case "base64":
			// The decoder skips CR and LF itself; other whitespace is an error,
			// which is right for what an encoder should write.
			der := make([]byte, base64.StdEncoding.DecodedLen(len(raw)))
			n, err := base64.StdEncoding.Decode(der, raw)
			if err != nil {
				return nil, fmt.Errorf("smimetest: base64 payload: %w", err)
			}
			return der[:n], nil
		case "", "binary", "8bit", "7bit":
			return raw, nil
		}
		return nil, fmt.Errorf("smimetest: pkcs7-mime with transfer encoding %q", cte)
	case strings.HasPrefix(mt, "multipart/") && depth < 10:
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return nil, nil
			}
			if err != nil {
				return nil, err
			}
			der, err := findPKCS7(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p, depth+1)
			if der != nil || err != nil {
				return der, err
			}
		}
	}
	return nil, nil
}
