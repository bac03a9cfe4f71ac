package enroll

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/mediatype"
)

// OpenPGP is the Kind for OpenPGP keys (RFC 9580 transferable public keys).
// A request carries the key in one of two ways:
//
//   - attached as an application/pgp-keys part (RFC 3156 §7), which is what
//     Thunderbird's "Attach My Public Key" and most OpenPGP clients do,
//     anywhere in the message (inside a multipart/mixed, or inside the
//     signed part of a multipart/signed message);
//   - in the Autocrypt header (Autocrypt Level 1, "addr=...;
//     keydata=BASE64") of a message signed with that very key as PGP/MIME
//     multipart/signed (RFC 3156 §5).
//
// A signature, when there is one, must verify with one of the keys the
// message carries (go-crypto's CheckDetachedSignature over the first part's
// bytes as received, RFC 1847 §2.1, and in canonical CRLF form, RFC 3156
// §5), and the signer's key is the one asked for. A message that is not
// signed may still ask for the one key it attaches: proof of possession
// is not the signature but the challenge, which is encrypted to the
// requested key only and goes to the key's address, so that only someone
// who holds the private key and reads that mailbox can confirm. (An
// S/MIME request must be signed because the issue 12 flow was built
// around it; for OpenPGP the issue asks for the key to pass through the
// same challenge, and clients attach keys to unsigned mail.) An Autocrypt
// header alone, on unsigned mail, is not taken: clients send it on every
// message, and it would make any reply to the enrollment address a
// request.
//
// The key must pass exactly the checks of the certificate store
// (certs.CheckKey): version 4, a valid User ID with an address, an
// encryption key usable now.
type OpenPGP struct{}

// Name implements Kind.
func (OpenPGP) Name() string { return "openpgp" }

// Bounds of the walk over a request's parts: a request is small (at most
// Options.MaxMessageSize), but nesting and part counts must not make it
// expensive.
const (
	maxDepth = 8
	maxParts = 64
)

// VerifyRequest implements Kind.
func (k OpenPGP) VerifyRequest(r *Request, now time.Time) (*Credential, error) {
	mt, params := mediatype.Parse(r.Header.Get("Content-Type"))
	var content, sig []byte
	switch mt {
	case "multipart/signed":
		if proto := strings.ToLower(params["protocol"]); proto != "application/pgp-signature" {
			return nil, fmt.Errorf("%w: multipart/signed with protocol %q, not OpenPGP", ErrUnsigned, params["protocol"])
		}
		var err error
		content, sig, err = splitSigned(r.Body, params["boundary"], "application/pgp-signature")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
	case "multipart/encrypted":
		return nil, fmt.Errorf("%w: the message is encrypted; send it unencrypted, with your public key attached", ErrUnsigned)
	}

	// The attached keys: inside the signed part when the message is
	// signed (only what the signature covers counts), else anywhere.
	var attached [][]byte
	if content != nil {
		if m, err := mail.ReadMessage(bytes.NewReader(content)); err == nil {
			body, _ := io.ReadAll(m.Body)
			attached = attachedKeys(m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), body, 0, new(int))
		}
	} else {
		attached = attachedKeys(r.Header.Get("Content-Type"), r.Header.Get("Content-Transfer-Encoding"), r.Body, 0, new(int))
	}
	var cands openpgp.EntityList
	var problems []string
	add := func(data []byte, where string) {
		e, err := certs.ReadKey(data)
		if err != nil {
			problems = append(problems, where+": "+err.Error())
			return
		}
		for _, c := range cands {
			if bytes.Equal(c.PrimaryKey.Fingerprint, e.PrimaryKey.Fingerprint) {
				return
			}
		}
		cands = append(cands, e)
	}
	for _, a := range attached {
		add(a, "attached key")
	}
	nAttached := len(cands)
	if content != nil {
		if data, err := autocryptKey(r.Header); err != nil {
			problems = append(problems, err.Error())
		} else if data != nil {
			add(data, "Autocrypt key")
		}
	}

	var requested *openpgp.Entity
	switch {
	case content != nil:
		signer, err := checkSignature(cands, content, sig, now)
		if err != nil {
			if len(problems) > 0 {
				err = fmt.Errorf("%w (%s)", err, strings.Join(problems, "; "))
			}
			return nil, err
		}
		requested = signer
	case nAttached == 1:
		requested = cands[0]
	case nAttached > 1:
		return nil, fmt.Errorf("%w: %d OpenPGP keys attached; attach only the one to enroll", ErrUnusableCertificate, nAttached)
	case len(problems) > 0:
		return nil, fmt.Errorf("%w: %s", ErrUnusableCertificate, strings.Join(problems, "; "))
	default:
		return nil, fmt.Errorf("%w: attach your OpenPGP public key (Thunderbird: Attach My Public Key)", ErrUnsigned)
	}

	addrs, until, err := certs.CheckKey(requested, now)
	if err != nil {
		return nil, fmt.Errorf("%w: OpenPGP key %x: %w", ErrUnusableCertificate, requested.PrimaryKey.Fingerprint, err)
	}
	key := certs.NewKey(requested)
	return &Credential{
		Kind:        k.Name(),
		Fingerprint: key.Fingerprint,
		Addresses:   addrs,
		NotBefore:   requested.PrimaryKey.CreationTime,
		NotAfter:    until,
		Key:         key,
	}, nil
}

// checkSignature verifies an armored detached signature (RFC 3156 §5) over
// content with the keys the message carries, and returns the signer. The
// content is tried as received, then in canonical CRLF form, which is what
// the signer hashed when the line ends were changed in transit.
func checkSignature(keys openpgp.EntityList, content, sig []byte, now time.Time) (signer *openpgp.Entity, err error) {
	defer func() {
		// The signature and keys are untrusted input: a panic in the
		// parser is a bad signature, not a crash.
		if r := recover(); r != nil {
			signer, err = nil, fmt.Errorf("%w: malformed signature", ErrBadSignature)
		}
	}()
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: the message carries no OpenPGP key to check the signature with; attach your public key", ErrBadSignature)
	}
	config := &packet.Config{Time: func() time.Time { return now }}
	check := func(c []byte) (*openpgp.Entity, error) {
		return openpgp.CheckArmoredDetachedSignature(keys, bytes.NewReader(c), bytes.NewReader(sig), config)
	}
	signer, err = check(content)
	if err != nil && hasBareLF(content) {
		signer, err = check(toCRLF(content))
	}
	switch {
	case err == nil:
		return signer, nil
	case errors.Is(err, pgperrors.ErrUnknownIssuer):
		return nil, fmt.Errorf("%w: signed with a key the message does not carry; attach the signing key", ErrBadSignature)
	}
	return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
}

// attachedKeys returns the decoded bodies of the application/pgp-keys parts
// of an entity, depth first; *parts counts the parts seen against maxParts.
func attachedKeys(contentType, cte string, body []byte, depth int, parts *int) [][]byte {
	*parts++
	if depth > maxDepth || *parts > maxParts {
		return nil
	}
	mt, params := mediatype.Parse(contentType)
	switch {
	case mt == "application/pgp-keys":
		data, err := decodeKeyTransfer(body, cte)
		if err != nil {
			return nil
		}
		return [][]byte{data}
	case strings.HasPrefix(mt, "multipart/") && params["boundary"] != "":
		var out [][]byte
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				return out
			}
			b, err := io.ReadAll(p)
			if err != nil {
				return out
			}
			out = append(out, attachedKeys(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), b, depth+1, parts)...)
		}
	}
	return nil
}

// decodeKeyTransfer undoes the transfer encoding of a key part: base64,
// quoted-printable (RFC 2045 §6.7, which some clients choose for armor) or
// none.
func decodeKeyTransfer(b []byte, cte string) ([]byte, error) {
	if strings.EqualFold(strings.TrimSpace(cte), "quoted-printable") {
		out, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(b)))
		if err != nil {
			return nil, fmt.Errorf("quoted-printable: %w", err)
		}
		return out, nil
	}
	return decodeTransfer(b, cte)
}

// autocryptKey returns the keydata of the message's Autocrypt header
// (Autocrypt Level 1, section 2.1), nil when there is none. As the
// specification says, the header is not used when there is more than one,
// when it has an attribute it does not know (names starting with "_" are
// optional and skipped), or when its addr is not the From address.
func autocryptKey(h mail.Header) ([]byte, error) {
	vals := h["Autocrypt"]
	switch len(vals) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, errors.New("more than one Autocrypt header")
	}
	var addr, keydata string
	for attr := range strings.SplitSeq(vals[0], ";") {
		name, value, ok := strings.Cut(strings.TrimSpace(attr), "=")
		if !ok {
			return nil, errors.New("Autocrypt header: an attribute without a value")
		}
		switch name = strings.ToLower(strings.TrimSpace(name)); {
		case name == "addr":
			addr = strings.TrimSpace(value)
		case name == "keydata":
			keydata = value
		case name == "prefer-encrypt", strings.HasPrefix(name, "_"):
		default:
			return nil, fmt.Errorf("Autocrypt header: unknown attribute %q", clean(name, 40))
		}
	}
	if addr == "" || keydata == "" {
		return nil, errors.New("Autocrypt header without addr or keydata")
	}
	from, err := mail.ParseAddress(h.Get("From"))
	if err != nil {
		return nil, errors.New("Autocrypt header in a message without a readable From")
	}
	a, ok1 := certs.NormalizeAddress(addr)
	f, ok2 := certs.NormalizeAddress(from.Address)
	if !ok1 || !ok2 || !strings.EqualFold(a, f) {
		return nil, fmt.Errorf("Autocrypt addr %s is not the From address", clean(addr, maxLogField))
	}
	data, err := decodeTransfer([]byte(keydata), "base64")
	if err != nil {
		return nil, fmt.Errorf("Autocrypt keydata: %w", err)
	}
	return data, nil
}

// Usable implements Kind: the store's checks at now.
func (OpenPGP) Usable(c *Credential, now time.Time) (time.Time, error) {
	if c.Key == nil {
		return time.Time{}, errors.New("no OpenPGP key")
	}
	_, until, err := certs.CheckKey(c.Key.Entity, now)
	return until, err
}

// Encode implements Kind: the armored transferable public key (RFC 9580
// §6.2, §10.1) as go-crypto serializes it, which never includes secret
// material. nil when it cannot be written.
func (OpenPGP) Encode(c *Credential) []byte {
	if c.Key == nil {
		return nil
	}
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil
	}
	if err := c.Key.Entity.Serialize(w); err != nil {
		return nil
	}
	if err := w.Close(); err != nil {
		return nil
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// Decode implements Kind.
func (k OpenPGP) Decode(data []byte) (*Credential, error) {
	e, err := certs.ReadKey(data)
	if err != nil {
		return nil, err
	}
	key := certs.NewKey(e)
	return &Credential{
		Kind:        k.Name(),
		Fingerprint: key.Fingerprint,
		Addresses:   key.Addresses,
		NotBefore:   e.PrimaryKey.CreationTime,
		NotAfter:    key.ValidUntil(),
		Key:         key,
	}, nil
}
