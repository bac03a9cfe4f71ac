package enroll

import (
	"errors"
	"fmt"
)

// go.mozilla.org/pkcs7 keeps only the first segment of a constructed
// OCTET STRING, so the content of opaque signed-data that a streaming
// signer wrote in segments (`openssl cms -sign -stream`, 4 KiB at a time)
// would fail its digest. signedContent reads the encapsulated content
// itself, from the BER as received (X.690 §8.1, §8.7).

const maxBERDepth = 16

var errBER = errors.New("malformed BER")

// berRead returns the identifier octet, the contents and what follows of
// the first element of b. For an indefinite length the contents are the
// elements before the end-of-contents octets. High tag numbers do not
// occur in the structures read here.
func berRead(b []byte, depth int) (id byte, content, rest []byte, err error) {
	if depth > maxBERDepth || len(b) < 2 || b[0]&0x1f == 0x1f {
		return 0, nil, nil, errBER
	}
	id, l := b[0], b[1]
	switch {
	case l < 0x80:
		n := int(l)
		if len(b) < 2+n {
			return 0, nil, nil, errBER
		}
		return id, b[2 : 2+n], b[2+n:], nil
	case l == 0x80:
		if id&0x20 == 0 {
			return 0, nil, nil, errBER // only constructed encodings may be indefinite
		}
		p := b[2:]
		for {
			if len(p) >= 2 && p[0] == 0 && p[1] == 0 {
				return id, b[2 : len(b)-len(p)], p[2:], nil
			}
			if _, _, p, err = berRead(p, depth+1); err != nil {
				return 0, nil, nil, err
			}
		}
	default:
		nb := int(l & 0x7f)
		if nb > 4 || len(b) < 2+nb {
			return 0, nil, nil, errBER
		}
		n := 0
		for _, c := range b[2 : 2+nb] {
			n = n<<8 | int(c)
		}
		if n < 0 || len(b)-2-nb < n {
			return 0, nil, nil, errBER
		}
		return id, b[2+nb : 2+nb+n], b[2+nb+n:], nil
	}
}

// octets is the value of an OCTET STRING, primitive (04) or constructed
// (24) of segments.
func octets(id byte, content []byte, depth int) ([]byte, error) {
	switch id {
	case 0x04:
		return content, nil
	case 0x24:
		var out []byte
		for p := content; len(p) > 0; {
			cid, c, rest, err := berRead(p, depth+1)
			if err != nil {
				return nil, err
			}
			seg, err := octets(cid, c, depth+1)
			if err != nil {
				return nil, err
			}
			out, p = append(out, seg...), rest
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: OCTET STRING expected", errBER)
}

// signedContent returns the encapsulated content of a ContentInfo holding
// SignedData (RFC 5652 §5.1, §5.2), nil when it is detached.
func signedContent(der []byte) ([]byte, error) {
	expect := func(b []byte, want byte, depth int) (content, rest []byte, err error) {
		id, c, r, err := berRead(b, depth)
		if err != nil {
			return nil, nil, err
		}
		if want != 0 && id != want {
			return nil, nil, fmt.Errorf("%w: tag %#x, want %#x", errBER, id, want)
		}
		return c, r, nil
	}
	ci, _, err := expect(der, 0x30, 0) // ContentInfo
	if err != nil {
		return nil, err
	}
	_, rest, err := expect(ci, 0x06, 1) // contentType
	if err != nil {
		return nil, err
	}
	wrap, _, err := expect(rest, 0xa0, 1) // [0] EXPLICIT content
	if err != nil {
		return nil, err
	}
	sd, _, err := expect(wrap, 0x30, 2) // SignedData
	if err != nil {
		return nil, err
	}
	if _, rest, err = expect(sd, 0x02, 3); err != nil { // version
		return nil, err
	}
	if _, rest, err = expect(rest, 0x31, 3); err != nil { // digestAlgorithms
		return nil, err
	}
	eci, _, err := expect(rest, 0x30, 3) // EncapsulatedContentInfo
	if err != nil {
		return nil, err
	}
	if _, rest, err = expect(eci, 0x06, 4); err != nil { // eContentType
		return nil, err
	}
	if len(rest) == 0 {
		return nil, nil
	}
	ec, _, err := expect(rest, 0xa0, 4) // [0] EXPLICIT eContent
	if err != nil {
		return nil, err
	}
	id, oc, _, err := berRead(ec, 5)
	if err != nil {
		return nil, err
	}
	return octets(id, oc, 5)
}
