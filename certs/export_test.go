package certs

import (
	"crypto/x509"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestCheckRecipientAgreesWithStore checks CheckRecipient against the store
// itself: for each certificate, CheckRecipient accepts it exactly when a
// store holding it (and the same intermediates) returns it from Lookup.
func TestCheckRecipientAgreesWithStore(t *testing.T) {
	p := newPKI(t)
	const addr = "alice@example.org"
	self := func(mod func(*x509.Certificate)) func(t *testing.T) *x509.Certificate {
		return func(t *testing.T) *x509.Certificate {
			tmpl := leafTemplate(addr)
			if mod != nil {
				mod(tmpl)
			}
			return selfSigned(t, tmpl)
		}
	}
	issued := func(t *testing.T) *x509.Certificate { return p.issue(t, leafTemplate(addr)) }
	tests := []struct {
		name  string
		cert  func(t *testing.T) *x509.Certificate
		inter bool // pass p.inter as intermediate (and put it in the store's directory)
		roots bool
		want  []string
		errs  []error
	}{
		{name: "good", cert: self(nil), want: []string{addr}},
		{name: "domain folded", cert: self(func(c *x509.Certificate) {
			c.EmailAddresses = []string{"Alice@Example.ORG", "bob@example.org"}
		}), want: []string{"Alice@example.org", "bob@example.org"}},
		{name: "chains", cert: issued, inter: true, roots: true, want: []string{addr}},
		{name: "chain without intermediate", cert: issued, roots: true, errs: []error{ErrUntrusted}},
		{name: "self-signed with roots", cert: self(nil), roots: true, errs: []error{ErrUntrusted}},
		{name: "expired", cert: self(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = t0.Add(-400*day), t0.Add(-time.Second)
		}), errs: []error{ErrExpired}},
		{name: "not yet valid", cert: self(func(c *x509.Certificate) {
			c.NotBefore = t0.Add(time.Hour)
		}), errs: []error{ErrNotYetValid}},
		{name: "signing only", cert: self(func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageDigitalSignature
		}), errs: []error{ErrKeyUsage}},
		{name: "server certificate", cert: self(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}), errs: []error{ErrExtKeyUsage}},
		{name: "no address", cert: self(func(c *x509.Certificate) { c.EmailAddresses = nil }), errs: []error{ErrNoAddress}},
		{name: "ECDSA", cert: func(t *testing.T) *x509.Certificate {
			return create(t, leafTemplate(addr), &ecKey().PublicKey, nil, ecKey())
		}, errs: []error{ErrNotRSA}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cert(t)
			var inter []*x509.Certificate
			var roots *x509.CertPool
			dir := t.TempDir()
			writeFile(t, dir, "leaf.pem", pemOf(c))
			if tt.inter {
				inter = []*x509.Certificate{p.inter}
				writeFile(t, dir, "inter.pem", pemOf(p.inter))
			}
			if tt.roots {
				roots = p.roots
			}
			got, err := CheckRecipient(c, inter, roots, t0)
			for _, e := range tt.errs {
				if !errors.Is(err, e) {
					t.Errorf("err = %v, want %v", err, e)
				}
			}
			if len(tt.errs) == 0 && err != nil {
				t.Fatalf("err = %v, want nil", err)
			}
			if err == nil && !slices.Equal(got, tt.want) {
				t.Errorf("addresses = %q, want %q", got, tt.want)
			}

			s, lerr := Load(Options{Dir: dir, Roots: roots, Now: func() time.Time { return t0 }})
			if lerr != nil {
				t.Fatal(lerr)
			}
			lookup := addr
			if len(tt.want) > 0 {
				lookup = tt.want[0]
			}
			if inStore := len(s.Lookup(lookup)) > 0; inStore != (err == nil) {
				t.Errorf("store uses it: %v, CheckRecipient err: %v", inStore, err)
			}
		})
	}
}

// TestRecipientValidity: the usable period is the chain's common validity,
// as the store computes it for ValidUntil.
func TestRecipientValidity(t *testing.T) {
	p := newPKI(t)
	shortInter := caTemplate("short intermediate")
	shortInter.NotAfter = t0.Add(10 * day)
	inter := create(t, shortInter, &interKey().PublicKey, p.root, caKey())
	leaf := create(t, leafTemplate("alice@example.org"), &leafKey().PublicKey, inter, interKey())

	tests := []struct {
		name      string
		roots     *x509.CertPool
		wantUntil time.Time
	}{
		{name: "no roots: the certificate's own", wantUntil: leaf.NotAfter},
		{name: "roots: the chain's", roots: p.roots, wantUntil: inter.NotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, from, until, err := RecipientValidity(leaf, []*x509.Certificate{inter}, tt.roots, t0)
			if err != nil {
				t.Fatal(err)
			}
			if !until.Equal(tt.wantUntil) || !from.Equal(leaf.NotBefore) {
				t.Errorf("window = %v..%v, want %v..%v", from, until, leaf.NotBefore, tt.wantUntil)
			}
		})
	}
}

func TestNormalizeAddress(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"Alice@Example.ORG", "Alice@example.org", true},
		{`"john doe"@example.org`, `"john doe"@example.org`, true},
		{"no-at-sign", "", false},
		{"a@b\x01c", "", false},
	}
	for _, tt := range tests {
		got, ok := NormalizeAddress(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NormalizeAddress(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
