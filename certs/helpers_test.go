package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RSA key generation is slow, more so under -race: a few keys are made
// once per test binary and shared. Certificates differ by serial and
// validity, so sharing keys does not make fingerprints collide.
var testKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	keys := make([]*rsa.PrivateKey, 3)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	return keys
})

func caKey() *rsa.PrivateKey    { return testKeys()[0] }
func interKey() *rsa.PrivateKey { return testKeys()[1] }
func leafKey() *rsa.PrivateKey  { return testKeys()[2] }

var smallKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		panic(err)
	}
	return k
})

var ecKey = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// hugePublicKey is an RSA public key above MaxRSABits. Only its size
// matters (nothing is ever encrypted to it), so the modulus is a random
// odd number instead of a product of primes that would take minutes to
// generate.
var hugePublicKey = sync.OnceValue(func() *rsa.PublicKey {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), MaxRSABits+7))
	if err != nil {
		panic(err)
	}
	n.SetBit(n, MaxRSABits+7, 1)
	n.SetBit(n, 0, 1)
	return &rsa.PublicKey{N: n, E: 65537}
})

// t0 is "now" for tests that set Options.Now; certificates are made
// relative to it.
var t0 = time.Now().Truncate(time.Second)

const day = 24 * time.Hour

// clock is a settable Options.Now, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock { c := &clock{}; c.set(t); return c }
func (c *clock) set(t time.Time)  { c.ns.Store(t.UnixNano()) }
func (c *clock) now() time.Time   { return time.Unix(0, c.ns.Load()) }

var serial atomic.Int64

// leafTemplate is a well-formed S/MIME encryption certificate for addrs,
// valid from a day before t0 to a year after.
func leafTemplate(addrs ...string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:   big.NewInt(1000 + serial.Add(1)),
		Subject:        pkix.Name{CommonName: "test leaf"},
		NotBefore:      t0.Add(-day),
		NotAfter:       t0.Add(365 * day),
		KeyUsage:       x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		EmailAddresses: addrs,
	}
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(1000 + serial.Add(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             t0.Add(-30 * day),
		NotAfter:              t0.Add(10 * 365 * day),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// create signs tmpl for pub with parent's key; parent nil means
// self-signed with signer.
func create(t testing.TB, tmpl *x509.Certificate, pub any, parent *x509.Certificate, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	return c
}

// selfSigned is the usual shape of a certificate handed over by a user
// when no trust roots are configured.
func selfSigned(t testing.TB, tmpl *x509.Certificate) *x509.Certificate {
	return create(t, tmpl, &leafKey().PublicKey, nil, leafKey())
}

// pki is a root, an intermediate signed by it, and a way to issue leaves
// from the intermediate.
type pki struct {
	root, inter *x509.Certificate
	roots       *x509.CertPool
}

func newPKI(t testing.TB) *pki {
	root := create(t, caTemplate("test root"), &caKey().PublicKey, nil, caKey())
	inter := create(t, caTemplate("test intermediate"), &interKey().PublicKey, root, caKey())
	roots := x509.NewCertPool()
	roots.AddCert(root)
	return &pki{root: root, inter: inter, roots: roots}
}

func (p *pki) issue(t testing.TB, tmpl *x509.Certificate) *x509.Certificate {
	return create(t, tmpl, &leafKey().PublicKey, p.inter, interKey())
}

func pemOf(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func derOf(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.Raw...)
	}
	return b
}

// pkcs7Of builds a certs-only SignedData (RFC 5652 §5.1) as openssl
// crl2pkcs7 -nocrl writes it.
func pkcs7Of(t testing.TB, certs ...*x509.Certificate) []byte {
	t.Helper()
	type encap struct{ ContentType asn1.ObjectIdentifier }
	sd, err := asn1.Marshal(struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		EncapContentInfo encap
		Certificates     asn1.RawValue
		SignerInfos      asn1.RawValue
	}{
		Version:          1,
		DigestAlgorithms: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: []byte{}},
		EncapContentInfo: encap{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: derOf(certs...)},
		SignerInfos:      asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: []byte{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ci, err := asn1.Marshal(struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue
	}{oidSignedData, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sd}})
	if err != nil {
		t.Fatal(err)
	}
	return ci
}

func privateKeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(leafKey())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeAtomic puts a file in place the way a careful deployment tool
// does: a hidden temporary file renamed over the final name.
func writeAtomic(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	tmp := writeFile(t, dir, "."+name+".tmp", data)
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func mustLoad(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s
}

func fingerprints(cs []*Cert) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Fingerprint)
	}
	return out
}

func fpOf(c *x509.Certificate) string { return fingerprint(c.Raw) }

// waitFor polls cond until it holds or the deadline passes: the bounded
// wait for asynchronous effects, never a fixed sleep as an assertion.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s did not happen", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
