package enroll

import (
	"crypto/x509"
	"net/mail"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// A Kind is one kind of public key that users enroll. Everything specific
// to it is here: reading a signed request, telling whether a key is still
// usable, and its stored form. Requests, challenges, codes, the delay,
// notices and the log are the Engine's and the same for every kind: S/MIME
// certificates ([SMIME]) and OpenPGP keys ([OpenPGP]), each with its own
// field in [Credential] and [Outgoing].
type Kind interface {
	// Name identifies the kind in stored state and the log: "smime",
	// "openpgp".
	Name() string
	// VerifyRequest checks a request. It returns the key the sender asks
	// to enroll, or an error wrapping ErrUnsigned when the message is not
	// of this kind at all (the next kind is then tried), ErrBadSignature,
	// or ErrUnusableCertificate. Addresses not delivered here are the
	// Engine's to judge.
	VerifyRequest(r *Request, now time.Time) (*Credential, error)
	// Usable tells whether c can be encrypted to at now, and until when.
	Usable(c *Credential, now time.Time) (until time.Time, err error)
	// Encode returns c's public material as text, for the files of the
	// state directory; Decode reads it back. Encode never sees, and so
	// never writes, a private key.
	Encode(c *Credential) []byte
	Decode(data []byte) (*Credential, error)
}

// Request is a message to the enrollment address as it arrived.
type Request struct {
	Header mail.Header
	// Body is everything after the blank line that ends the header, byte
	// for byte: a detached signature covers exact bytes.
	Body []byte
}

// Credential is one public key that can be enrolled.
type Credential struct {
	Kind string
	// Fingerprint is the lowercase hex SHA-256 of the DER certificate,
	// or the OpenPGP primary key's fingerprint (RFC 9580 §5.5.4), as the
	// certificate store and the daemon's logs print them.
	Fingerprint string
	// Addresses are the normalized mailboxes the key is for.
	Addresses []string
	// NotBefore and NotAfter bound its use (for S/MIME with trust roots,
	// the chain's common validity). A zero NotAfter is an OpenPGP key
	// that does not expire.
	NotBefore, NotAfter time.Time
	// Certificate is what mail is encrypted to (S/MIME); Chain holds the
	// intermediates that came with the request, stored beside it so that
	// the certificate store can build the chain.
	Certificate *x509.Certificate
	Chain       []*x509.Certificate
	// Key is what mail is encrypted to (OpenPGP): the transferable
	// public key, never a secret one.
	Key *certs.Key
}
