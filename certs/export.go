package certs

import (
	"crypto/x509"
	"time"
)

// CheckRecipient applies to c exactly the RFC 8550 checks a certificate
// must pass to be used from the directory: the key (RSA, MinRSABits to
// MaxRSABits), keyUsage and extKeyUsage, an address, validity at now, and,
// when roots is set, a chain to one of them for emailProtection through
// inter. Enrollment calls it so that it accepts exactly what the store
// would use, no more and no less.
//
// addresses are c's normalized mailboxes (sorted, distinct, domains
// lowercased), set when c is usable and, where they can be read, also
// beside an error, so that a refusal can name them. err lists every
// problem at once and wraps the package's sentinel errors ([ErrNotRSA],
// [ErrKeyUsage], [ErrExpired], [ErrUntrusted], ...). A certificate that the
// store would keep for later ([ErrNotYetValid]) is an error here: it
// cannot be used now.
func CheckRecipient(c *x509.Certificate, inter []*x509.Certificate, roots *x509.CertPool, now time.Time) (addresses []string, err error) {
	addrs, _, _, err := RecipientValidity(c, inter, roots, now)
	return addrs, err
}

// RecipientValidity is CheckRecipient that also returns the period in which
// c is usable: NotBefore to NotAfter, narrowed to the common validity of
// its chain when roots is set (an intermediate that expires first ends the
// certificate's use, as in the store). from and until are zero when err
// is not nil.
func RecipientValidity(c *x509.Certificate, inter []*x509.Certificate, roots *x509.CertPool, now time.Time) (addresses []string, from, until time.Time, err error) {
	var pool *x509.CertPool
	if len(inter) > 0 {
		pool = x509.NewCertPool()
		for _, ic := range inter {
			pool.AddCert(ic)
		}
	}
	v := check(c, now, roots, pool)
	if v.err != nil {
		return v.addresses, time.Time{}, time.Time{}, v.err
	}
	return v.addresses, v.validFrom, v.validUntil, nil
}

// NormalizeAddress returns a mailbox in the one form the store indexes it
// by (domain lowercased, local part as written, quotes only where a
// Dot-string cannot say it), or false when s cannot be a mailbox. Callers
// that compare their addresses with CheckRecipient's use it.
func NormalizeAddress(s string) (string, bool) { return normalizeAddress(s) }

// CertificateAddresses returns the mailboxes c is for, as the store indexes
// them: its subjectAltName rfc822Names or, only when it has none, the
// legacy DN emailAddress (RFC 8550 §3), normalized, sorted and distinct.
// Unlike CheckRecipient it reads any certificate, a signing-only one too.
func CertificateAddresses(c *x509.Certificate) []string { return addresses(c) }
