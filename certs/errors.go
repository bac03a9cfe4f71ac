package certs

import (
	"errors"
	"strings"
)

// Sentinel errors. Every [Skipped.Err] wraps at least one of them, so a
// caller (the daemon's check command, tests) can tell reasons apart with
// [errors.Is] while the message carries the details.
var (
	// ErrParse: the file or one of its blocks is not a certificate that
	// can be decoded.
	ErrParse = errors.New("cannot parse")
	// ErrRead: the file cannot be read, or is not a regular file.
	ErrRead = errors.New("cannot read")
	// ErrPrivateKey: a private key was found. It is dropped, never kept.
	ErrPrivateKey = errors.New("private key in certificate directory")
	// ErrNotCertificate: a PEM block of another kind (public key, CRL,
	// request, ...) that is ignored.
	ErrNotCertificate = errors.New("not a certificate")
	// ErrDuplicate: the same certificate (same DER) already came from an
	// earlier file; encrypting twice to one key would be pointless.
	ErrDuplicate = errors.New("duplicate certificate")
	// ErrCA: a CA certificate that is no usable recipient; it serves only
	// as an intermediate.
	ErrCA = errors.New("CA certificate, used only as an intermediate")
	// ErrNotRSA: the public key is not RSA.
	ErrNotRSA = errors.New("public key is not RSA")
	// ErrKeySize: the RSA key is outside MinRSABits..MaxRSABits.
	ErrKeySize = errors.New("RSA key size out of range")
	// ErrExpired: NotAfter has passed. (An expired intermediate makes the
	// chain fail: ErrUntrusted.)
	ErrExpired = errors.New("expired")
	// ErrNotYetValid: NotBefore is in the future.
	ErrNotYetValid = errors.New("not yet valid")
	// ErrKeyUsage: keyUsage is present without keyEncipherment.
	ErrKeyUsage = errors.New("keyUsage lacks keyEncipherment")
	// ErrExtKeyUsage: extKeyUsage is present without emailProtection or
	// anyExtendedKeyUsage.
	ErrExtKeyUsage = errors.New("extKeyUsage lacks emailProtection")
	// ErrNoAddress: neither an rfc822Name nor a DN emailAddress.
	ErrNoAddress = errors.New("no email address")
	// ErrUntrusted: Options.Roots is set and the certificate does not
	// chain to one of them.
	ErrUntrusted = errors.New("does not chain to a trusted root")
	// ErrEnrolled: a file of Options.EnrolledDir that cannot be bound to
	// an address (no or a bad Enrolled-Address line, or an address the
	// certificate does not name).
	ErrEnrolled = errors.New("unusable enrolled certificate file")
)

// RSA key sizes accepted for key transport. RFC 8550 §4.3 requires 2048 to
// 4096 bits to be supported and allows larger keys; beyond 8192 bits a key
// is more likely a mistake or a way to make every message expensive.
const (
	MinRSABits = 2048
	MaxRSABits = 8192
)

// problems collects every reason a certificate is refused, so that an
// administrator fixing one problem is not surprised by the next. It
// unwraps to all of them, so errors.Is finds each sentinel; unlike
// errors.Join it stays on one line, which keeps log lines intact.
type problems []error

func (p problems) Error() string {
	s := make([]string, len(p))
	for i, e := range p {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (p problems) Unwrap() []error { return p }

// err returns nil, the single error, or all of them.
func (p problems) err() error {
	switch len(p) {
	case 0:
		return nil
	case 1:
		return p[0]
	}
	return p
}
