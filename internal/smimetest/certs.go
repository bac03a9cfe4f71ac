package smimetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// P12Password protects every PKCS#12 file made here.
const P12Password = "smimetest"

// CA is a throw-away certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     *rsa.PrivateKey
	CertPEM []byte
}

// Recipient is an end-entity certificate for a mail address and its key.
type Recipient struct {
	Addr    string
	Cert    *x509.Certificate
	Key     crypto.Signer // *rsa.PrivateKey, or *ecdsa.PrivateKey with ECKey
	CertPEM []byte
	KeyPEM  []byte // PKCS#8
	CA      *CA

	p12Once sync.Once
	p12     []byte
	p12Err  error
}

// keyCache holds one key per name and kind for the whole test binary: RSA
// key generation costs up to a second under -race, and tests that ask for
// the same address may share its key. Different names get different keys,
// so "the other key cannot decrypt" stays a meaningful test.
var keyCache sync.Map // string -> func() (crypto.Signer, error)

func cachedKey(name string, ec bool, bits int) (crypto.Signer, error) {
	id := fmt.Sprintf("%s/rsa%d", name, bits)
	if ec {
		id = name + "/p256"
	}
	f, _ := keyCache.LoadOrStore(id, sync.OnceValues(func() (crypto.Signer, error) {
		if ec {
			return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		return rsa.GenerateKey(rand.Reader, bits)
	}))
	return f.(func() (crypto.Signer, error))()
}

var defaultCA = sync.OnceValues(func() (*CA, error) { return newCA("smimetest CA") })

// DefaultCA returns the CA shared by every test of the binary; NewRecipient
// issues from it.
func DefaultCA(t testing.TB) *CA {
	t.Helper()
	ca, err := defaultCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newCA(name string) (*CA, error) {
	k, err := cachedKey("ca:"+name, false, 2048)
	if err != nil {
		return nil, err
	}
	key := k.(*rsa.PrivateKey)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"smimetest"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("smimetest: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func randomSerial() *big.Int {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return s.Add(s, big.NewInt(1))
}

type recipientConfig struct {
	bits        int
	ec          bool
	notBefore   time.Time
	notAfter    time.Time
	keyUsage    x509.KeyUsage
	extKeyUsage []x509.ExtKeyUsage
	noUsage     bool
	dnEmailOnly bool
	extraSAN    []string
	keyName     string
}

// Option changes the certificate NewRecipient makes.
type Option func(*recipientConfig)

// Bits sets the RSA key size (default 2048).
func Bits(n int) Option { return func(c *recipientConfig) { c.bits = n } }

// ECKey gives the certificate an ECDSA P-256 key, which S/MIME key transport
// cannot use.
func ECKey() Option { return func(c *recipientConfig) { c.ec = true } }

// Expired makes a certificate whose validity ended a year ago.
func Expired() Option {
	return func(c *recipientConfig) {
		c.notBefore = time.Now().AddDate(-2, 0, 0)
		c.notAfter = time.Now().AddDate(-1, 0, 0)
	}
}

// NotYetValid makes a certificate whose validity starts in a year.
func NotYetValid() Option {
	return func(c *recipientConfig) {
		c.notBefore = time.Now().AddDate(1, 0, 0)
		c.notAfter = time.Now().AddDate(2, 0, 0)
	}
}

// WrongUsage makes a certificate for signing web servers: keyUsage
// digitalSignature only and extKeyUsage serverAuth, so not for encrypting
// mail (RFC 8550 §4.4).
func WrongUsage() Option {
	return func(c *recipientConfig) {
		c.keyUsage = x509.KeyUsageDigitalSignature
		c.extKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
}

// NoUsageExtensions omits keyUsage and extKeyUsage, which RFC 8550 allows
// (any use).
func NoUsageExtensions() Option { return func(c *recipientConfig) { c.noUsage = true } }

// DNEmailOnly puts the address only in the subject DN's emailAddress
// attribute (the legacy form, RFC 8550 §3) and leaves out the SAN.
func DNEmailOnly() Option { return func(c *recipientConfig) { c.dnEmailOnly = true } }

// AlsoFor adds more rfc822Name SAN entries.
func AlsoFor(addrs ...string) Option {
	return func(c *recipientConfig) { c.extraSAN = append(c.extraSAN, addrs...) }
}

// KeyName shares a key between certificates: certificates made with the same
// key name have the same key (a renewal), others get their own. The default
// key name is the address.
func KeyName(name string) Option { return func(c *recipientConfig) { c.keyName = name } }

// NewRecipient issues a certificate for addr from DefaultCA: SAN rfc822Name,
// keyUsage keyEncipherment and digitalSignature, extKeyUsage emailProtection,
// valid from an hour ago for a year, RSA 2048 unless options say otherwise.
func NewRecipient(t testing.TB, addr string, opts ...Option) *Recipient {
	t.Helper()
	return DefaultCA(t).NewRecipient(t, addr, opts...)
}

// NewRecipient issues a certificate for addr from ca; see the package-level
// NewRecipient for the defaults.
func (ca *CA) NewRecipient(t testing.TB, addr string, opts ...Option) *Recipient {
	t.Helper()
	r, err := ca.newRecipient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (ca *CA) newRecipient(addr string, opts ...Option) (*Recipient, error) {
	now := time.Now()
	cfg := recipientConfig{
		bits:        2048,
		notBefore:   now.Add(-time.Hour),
		notAfter:    now.AddDate(1, 0, 0),
		keyUsage:    x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		keyName:     addr,
	}
	for _, o := range opts {
		o(&cfg)
	}
	key, err := cachedKey(cfg.keyName, cfg.ec, cfg.bits)
	if err != nil {
		return nil, fmt.Errorf("smimetest: key for %s: %w", addr, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: addr, Organization: []string{"smimetest"}},
		NotBefore:    cfg.notBefore,
		NotAfter:     cfg.notAfter,
	}
	if cfg.dnEmailOnly {
		// emailAddress (PKCS #9), 1.2.840.113549.1.9.1, an IA5String.
		tmpl.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: []int{1, 2, 840, 113549, 1, 9, 1}, Value: addr}}
	} else {
		tmpl.EmailAddresses = append([]string{addr}, cfg.extraSAN...)
	}
	if !cfg.noUsage {
		tmpl.KeyUsage = cfg.keyUsage
		tmpl.ExtKeyUsage = cfg.extKeyUsage
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("smimetest: certificate for %s: %w", addr, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Recipient{
		Addr:    addr,
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}),
		CA:      ca,
	}, nil
}

// WriteFiles writes the certificate and key as PEM into dir and returns
// their paths.
func (r *Recipient) WriteFiles(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	return writeTemp(t, dir, "cert.pem", r.CertPEM), writeTemp(t, dir, "key.pem", r.KeyPEM)
}

// PKCS12 returns the key, certificate and CA certificate as PKCS#12
// protected by P12Password, in the legacy encryption (PBE-SHA1-3DES, SHA-1
// MAC) that gpgsm 2.2 and NSS read: OpenSSL 3's default (AES, PBKDF2) is
// unreadable to gpgsm. It needs openssl; the result is kept for later calls.
func (r *Recipient) PKCS12(t testing.TB) []byte {
	t.Helper()
	Require(t, "openssl")
	r.p12Once.Do(func() {
		dir, remove, err := tempFiles(map[string][]byte{"cert.pem": r.CertPEM, "key.pem": r.KeyPEM, "ca.pem": r.CA.CertPEM})
		if err != nil {
			r.p12Err = err
			return
		}
		defer remove()
		out := filepath.Join(dir, "out.p12")
		if _, err := run(nil, nil, "openssl", "pkcs12", "-export",
			"-certpbe", "PBE-SHA1-3DES", "-keypbe", "PBE-SHA1-3DES", "-macalg", "sha1",
			"-in", filepath.Join(dir, "cert.pem"), "-inkey", filepath.Join(dir, "key.pem"),
			"-certfile", filepath.Join(dir, "ca.pem"), "-name", r.Addr,
			"-passout", "pass:"+P12Password, "-out", out); err != nil {
			r.p12Err = err
			return
		}
		r.p12, r.p12Err = os.ReadFile(out)
	})
	if r.p12Err != nil {
		t.Fatalf("smimetest: PKCS#12 for %s: %v", r.Addr, r.p12Err)
	}
	return r.p12
}

// PKCS12File writes PKCS12 into a temporary directory of t.
func (r *Recipient) PKCS12File(t testing.TB) string {
	t.Helper()
	return writeTemp(t, t.TempDir(), "key.p12", r.PKCS12(t))
}
