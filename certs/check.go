package certs

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"slices"
	"time"
)

var (
	// emailAddress attribute of a DN (PKCS #9): legacy, RFC 8550 §3.
	oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
	oidKeyUsage     = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage  = asn1.ObjectIdentifier{2, 5, 29, 37}
)

// verdict is the outcome of check.
type verdict struct {
	// keep: the certificate goes into the store. It is then usable now,
	// or will be once NotBefore is reached.
	keep bool
	// err lists every reason it is not usable now (nil if it is).
	err                   error
	addresses             []string
	validFrom, validUntil time.Time
}

// check applies the rules of RFC 8550 for a recipient certificate at time
// t. It reports every permanent problem at once, so that fixing one does
// not merely reveal the next.
func check(c *x509.Certificate, t time.Time, roots, inter *x509.CertPool) verdict {
	// A CA certificate without an address is an intermediate (or a root)
	// put there to complete chains: say so, and spare the administrator
	// the recipient rules it naturally fails. One with an address is
	// judged as a recipient: "openssl req -x509" marks the self-signed
	// certificates it makes CA:TRUE, and users hand those over.
	isCA := c.BasicConstraintsValid && c.IsCA
	addrs := addresses(c)
	if isCA && len(addrs) == 0 {
		return verdict{err: ErrCA}
	}

	var p problems

	// RFC 8551 §2.3: RSA key transport is the one every client decrypts.
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			p = append(p, fmt.Errorf("%w: %d bits, want %d to %d", ErrKeySize, n, MinRSABits, MaxRSABits))
		}
	case *ecdsa.PublicKey:
		p = append(p, fmt.Errorf("%w: ECDSA %s", ErrNotRSA, k.Curve.Params().Name))
	case ed25519.PublicKey:
		p = append(p, fmt.Errorf("%w: Ed25519", ErrNotRSA))
	default:
		p = append(p, fmt.Errorf("%w: %v", ErrNotRSA, c.PublicKeyAlgorithm))
	}

	// RFC 8550 §4.4.2: with a keyUsage extension, RSA key transport needs
	// keyEncipherment. Presence is read from the extension itself: Go
	// leaves KeyUsage zero both when the extension is absent and when it
	// asserts no bit we know.
	if hasExtension(c, oidKeyUsage) && c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		p = append(p, ErrKeyUsage)
	}

	// RFC 8550 §4.4.4: with an extKeyUsage extension, emailProtection or
	// anyExtendedKeyUsage must be among the purposes.
	if hasExtension(c, oidExtKeyUsage) &&
		!slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageEmailProtection) &&
		!slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny) {
		p = append(p, fmt.Errorf("%w: has %s", ErrExtKeyUsage, describeEKU(c)))
	}

	if len(addrs) == 0 {
		p = append(p, ErrNoAddress)
	}
	if isCA && len(p) > 0 {
		// Likely an intermediate with a contact address: name it so.
		p = append(p, ErrCA)
	}

	v := verdict{addresses: addrs, validFrom: c.NotBefore, validUntil: c.NotAfter}

	// A certificate that expired stays out: it will not become valid
	// again. One not valid yet is kept when otherwise fine, so that a
	// successor put in place ahead of a rollover starts being used at its
	// NotBefore without waiting for a reload.
	switch {
	case t.After(c.NotAfter):
		p = append(p, fmt.Errorf("%w: NotAfter %s", ErrExpired, c.NotAfter.UTC().Format(time.RFC3339)))
		return verdict{err: p.err()}
	case len(p) > 0:
		// Trust is not examined: x509's verdict on a certificate that
		// fails the checks above would only repeat them less clearly
		// (an EKU mismatch would read as "untrusted").
		if t.Before(c.NotBefore) {
			p = append(p, notYetValid(c.NotBefore))
		}
		return verdict{err: p.err()}
	}

	if roots != nil {
		// Verify at NotBefore for a certificate not valid yet: the
		// question is whether it will chain once it is.
		at := t
		if at.Before(c.NotBefore) {
			at = c.NotBefore
		}
		chains, err := c.Verify(x509.VerifyOptions{
			Roots:         roots,
			Intermediates: inter,
			CurrentTime:   at,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		})
		if err != nil {
			return verdict{err: fmt.Errorf("%w: %w", ErrUntrusted, err)}
		}
		v.validFrom, v.validUntil = chainWindow(chains)
	}

	v.keep = true
	if t.Before(v.validFrom) {
		v.err = notYetValid(v.validFrom)
	}
	return v
}

func notYetValid(from time.Time) error {
	return fmt.Errorf("%w: usable from %s (kept, used from then on)", ErrNotYetValid, from.UTC().Format(time.RFC3339))
}

// chainWindow returns the longest period in which one whole chain is
// valid: each chain is valid from its latest NotBefore to its earliest
// NotAfter.
func chainWindow(chains [][]*x509.Certificate) (from, until time.Time) {
	for i, ch := range chains {
		f, u := ch[0].NotBefore, ch[0].NotAfter
		for _, c := range ch[1:] {
			if c.NotBefore.After(f) {
				f = c.NotBefore
			}
			if c.NotAfter.Before(u) {
				u = c.NotAfter
			}
		}
		if i == 0 || u.After(until) || (u.Equal(until) && f.Before(from)) {
			from, until = f, u
		}
	}
	return from, until
}

func hasExtension(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	return slices.ContainsFunc(c.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oid) })
}

// addresses returns the normalized, sorted, distinct mailboxes of c: its
// subjectAltName rfc822Names or, only when it has none, the legacy DN
// emailAddress (RFC 8550 §3). Entries that are not plausible mailboxes
// are dropped rather than indexed under a name no lookup can produce.
func addresses(c *x509.Certificate) []string {
	var out []string
	add := func(s string) {
		if a, ok := normalizeAddress(s); ok {
			out = append(out, a)
		}
	}
	for _, e := range c.EmailAddresses {
		add(e)
	}
	if len(c.EmailAddresses) == 0 {
		for _, atv := range c.Subject.Names {
			if s, ok := atv.Value.(string); ok && atv.Type.Equal(oidEmailAddress) {
				add(s)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func describeEKU(c *x509.Certificate) string {
	names := map[x509.ExtKeyUsage]string{
		x509.ExtKeyUsageServerAuth:      "serverAuth",
		x509.ExtKeyUsageClientAuth:      "clientAuth",
		x509.ExtKeyUsageCodeSigning:     "codeSigning",
		x509.ExtKeyUsageTimeStamping:    "timeStamping",
		x509.ExtKeyUsageOCSPSigning:     "OCSPSigning",
		x509.ExtKeyUsageIPSECEndSystem:  "ipsecEndSystem",
		x509.ExtKeyUsageIPSECTunnel:     "ipsecTunnel",
		x509.ExtKeyUsageIPSECUser:       "ipsecUser",
		x509.ExtKeyUsageEmailProtection: "emailProtection",
	}
	var s []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := names[u]; ok {
			s = append(s, n)
		} else {
			s = append(s, fmt.Sprintf("usage %d", u))
		}
	}
	for _, o := range c.UnknownExtKeyUsage {
		s = append(s, o.String())
	}
	if len(s) == 0 {
		return "no purpose"
	}
	return fmt.Sprint(s)
}
