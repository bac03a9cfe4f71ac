package certs

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestUsabilityRules puts one certificate at a time in a directory and
// checks what Load and Lookup make of it (RFC 8550 §4.4 and the package
// rules).
func TestUsabilityRules(t *testing.T) {
	p := newPKI(t)
	const addr = "alice@example.org"
	leaf := func(mod func(*x509.Certificate)) func(t *testing.T) *x509.Certificate {
		return func(t *testing.T) *x509.Certificate {
			tmpl := leafTemplate(addr)
			if mod != nil {
				mod(tmpl)
			}
			return selfSigned(t, tmpl)
		}
	}
	tests := []struct {
		name  string
		cert  func(t *testing.T) *x509.Certificate
		roots bool
		// lookup is the address to look up (addr when empty).
		lookup string
		// usable: Lookup returns the certificate now.
		usable bool
		// kept: in Certs (usable, or not valid yet).
		kept bool
		// errs: sentinels the Skipped entry must wrap; none means no
		// Skipped entry at all.
		errs []error
	}{
		{name: "good", cert: leaf(nil), usable: true, kept: true},
		{name: "no keyUsage, no extKeyUsage", cert: leaf(func(c *x509.Certificate) {
			c.KeyUsage, c.ExtKeyUsage = 0, nil
		}), usable: true, kept: true},
		{name: "extKeyUsage any", cert: leaf(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
		}), usable: true, kept: true},
		{name: "extKeyUsage serverAuth and emailProtection", cert: leaf(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageEmailProtection}
		}), usable: true, kept: true},
		{name: "keyEncipherment only", cert: leaf(func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyEncipherment
		}), usable: true, kept: true},
		{name: "expired", cert: leaf(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = t0.Add(-400*day), t0.Add(-time.Second)
		}), errs: []error{ErrExpired}},
		{name: "not yet valid", cert: leaf(func(c *x509.Certificate) {
			c.NotBefore = t0.Add(time.Hour)
		}), kept: true, errs: []error{ErrNotYetValid}},
		{name: "keyUsage without keyEncipherment", cert: leaf(func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
		}), errs: []error{ErrKeyUsage}},
		{name: "extKeyUsage serverAuth only", cert: leaf(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}), errs: []error{ErrExtKeyUsage}},
		{name: "extKeyUsage unknown OID only", cert: leaf(func(c *x509.Certificate) {
			c.ExtKeyUsage = nil
			c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 2, 3, 4}}
		}), errs: []error{ErrExtKeyUsage}},
		{name: "EC key", cert: func(t *testing.T) *x509.Certificate {
			return create(t, leafTemplate(addr), &ecKey().PublicKey, nil, ecKey())
		}, errs: []error{ErrNotRSA}},
		{name: "RSA 1024", cert: func(t *testing.T) *x509.Certificate {
			return create(t, leafTemplate(addr), &smallKey().PublicKey, nil, smallKey())
		}, errs: []error{ErrKeySize}},
		{name: "RSA above 8192", cert: func(t *testing.T) *x509.Certificate {
			return create(t, leafTemplate(addr), hugePublicKey(), nil, leafKey())
		}, errs: []error{ErrKeySize}},
		{name: "no address", cert: leaf(func(c *x509.Certificate) {
			c.EmailAddresses = nil
		}), errs: []error{ErrNoAddress}},
		{name: "SAN address not a mailbox", cert: leaf(func(c *x509.Certificate) {
			c.EmailAddresses = []string{"not an address"}
		}), errs: []error{ErrNoAddress}},
		{name: "DN emailAddress fallback", cert: leaf(func(c *x509.Certificate) {
			c.EmailAddresses = nil
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: oidEmailAddress, Value: "Bob@Example.ORG"}}
		}), lookup: "Bob@example.org", usable: true, kept: true},
		{name: "DN emailAddress ignored when SAN has one", cert: leaf(func(c *x509.Certificate) {
			c.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: oidEmailAddress, Value: "bob@example.org"}}
		}), lookup: "bob@example.org", kept: true},
		{name: "CA certificate without address", cert: func(t *testing.T) *x509.Certificate {
			return create(t, caTemplate("some CA"), &caKey().PublicKey, nil, caKey())
		}, errs: []error{ErrCA}},
		{name: "CA certificate with address, keyCertSign only", cert: leaf(func(c *x509.Certificate) {
			c.BasicConstraintsValid, c.IsCA = true, true
			c.KeyUsage = x509.KeyUsageCertSign
		}), errs: []error{ErrKeyUsage, ErrCA}},
		{name: "self-signed CA:TRUE with address (openssl req -x509)", cert: leaf(func(c *x509.Certificate) {
			c.BasicConstraintsValid, c.IsCA = true, true
			c.KeyUsage, c.ExtKeyUsage = 0, nil
		}), usable: true, kept: true},
		{name: "several problems at once", cert: func(t *testing.T) *x509.Certificate {
			tmpl := leafTemplate()
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			return create(t, tmpl, &smallKey().PublicKey, nil, smallKey())
		}, errs: []error{ErrKeySize, ErrKeyUsage, ErrExtKeyUsage, ErrNoAddress}},
		{name: "expired with other problems", cert: leaf(func(c *x509.Certificate) {
			c.NotAfter = t0.Add(-time.Hour)
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}), errs: []error{ErrExpired, ErrExtKeyUsage}},
		{name: "roots off, self-signed", cert: leaf(nil), usable: true, kept: true},
		{name: "roots on, self-signed untrusted", cert: leaf(nil), roots: true, errs: []error{ErrUntrusted}},
		{name: "roots on, chains through intermediate in dir", cert: func(t *testing.T) *x509.Certificate {
			return p.issue(t, leafTemplate(addr))
		}, roots: true, usable: true, kept: true},
		{name: "roots on, chain but serverAuth only", cert: func(t *testing.T) *x509.Certificate {
			tmpl := leafTemplate(addr)
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			return p.issue(t, tmpl)
		}, roots: true, errs: []error{ErrExtKeyUsage}},
		{name: "roots on, not yet valid but will chain", cert: func(t *testing.T) *x509.Certificate {
			tmpl := leafTemplate(addr)
			tmpl.NotBefore = t0.Add(day)
			return p.issue(t, tmpl)
		}, roots: true, kept: true, errs: []error{ErrNotYetValid}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := tc.cert(t)
			writeFile(t, dir, "cert.pem", pemOf(c))
			opts := Options{Dir: dir, Now: func() time.Time { return t0 }}
			if tc.roots {
				opts.Roots = p.roots
				// The intermediate is in the directory; it is reported
				// as a CA, which the checks below ignore.
				writeFile(t, dir, "intermediate.pem", pemOf(p.inter))
			}
			s := mustLoad(t, opts)

			lookup := tc.lookup
			if lookup == "" {
				lookup = addr
			}
			got := s.Lookup(lookup)
			if tc.usable && (len(got) != 1 || got[0].Fingerprint != fpOf(c)) {
				t.Errorf("Lookup(%q) = %v, want the certificate", lookup, fingerprints(got))
			}
			if !tc.usable && got != nil {
				t.Errorf("Lookup(%q) = %v, want nil", lookup, fingerprints(got))
			}

			kept := slices.Contains(fingerprints(s.Certs()), fpOf(c))
			if kept != tc.kept {
				t.Errorf("in Certs() = %v, want %v", kept, tc.kept)
			}

			var mine []Skipped
			for _, sk := range s.Skipped() {
				if sk.File == opts.Dir+"/cert.pem" {
					mine = append(mine, sk)
				}
			}
			if len(tc.errs) == 0 {
				if len(mine) != 0 {
					t.Errorf("Skipped = %v, want none", mine)
				}
				return
			}
			if len(mine) != 1 {
				t.Fatalf("Skipped = %v, want one entry", mine)
			}
			if mine[0].Subject == "" {
				t.Errorf("Skipped.Subject is empty, want the certificate's subject")
			}
			for _, want := range tc.errs {
				if !errors.Is(mine[0].Err, want) {
					t.Errorf("Skipped.Err = %v, want it to wrap %v", mine[0].Err, want)
				}
			}
		})
	}
}

// TestChainValidityBoundsCert: with Roots, an intermediate that expires
// before the leaf ends the leaf's usability.
func TestChainValidityBoundsCert(t *testing.T) {
	root := create(t, caTemplate("root"), &caKey().PublicKey, nil, caKey())
	itmpl := caTemplate("short-lived intermediate")
	itmpl.NotAfter = t0.Add(10 * day)
	inter := create(t, itmpl, &interKey().PublicKey, root, caKey())
	leaf := create(t, leafTemplate("a@example.org"), &leafKey().PublicKey, inter, interKey())
	roots := x509.NewCertPool()
	roots.AddCert(root)

	dir := t.TempDir()
	writeFile(t, dir, "bundle.pem", pemOf(leaf, inter))
	clk := newClock(t0)
	s := mustLoad(t, Options{Dir: dir, Roots: roots, Now: clk.now})

	got := s.Lookup("a@example.org")
	if len(got) != 1 {
		t.Fatalf("Lookup = %v, want 1 certificate", fingerprints(got))
	}
	if !got[0].ValidUntil().Equal(inter.NotAfter) {
		t.Errorf("ValidUntil = %v, want the intermediate's NotAfter %v", got[0].ValidUntil(), inter.NotAfter)
	}
	if n := len(s.ExpiringWithin(11 * day)); n != 1 {
		t.Errorf("ExpiringWithin(11 days) has %d certificates, want 1", n)
	}
	clk.set(inter.NotAfter.Add(time.Second))
	if got := s.Lookup("a@example.org"); got != nil {
		t.Errorf("Lookup after the intermediate expired = %v, want nil", fingerprints(got))
	}
}
