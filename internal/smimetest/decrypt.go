package smimetest

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"go.mozilla.org/pkcs7"
)

// Decryptor is one S/MIME implementation that recipients use, ready to
// decrypt for one recipient: table tests run every one of them.
type Decryptor struct {
	Name string
	// OAEP tells whether it decrypts RSAES-OAEP key transport: of those here
	// only OpenSSL's cms does (NSS from 3.101 on, gpgsm not in 2.2).
	OAEP bool
	// Decrypt returns the decrypted content of a DER/BER ContentInfo. It is
	// safe for concurrent use, e.g. from parallel subtests.
	Decrypt func(der []byte) ([]byte, error)
}

// Decryptors returns OpenSSL, NSS cmsutil, gpgsm and the Go library, each
// prepared once for r (an NSS database, a GNUPGHOME with a running agent)
// and torn down when t ends. A missing tool skips or fails t (Require).
func Decryptors(t testing.TB, r *Recipient) []Decryptor {
	t.Helper()
	for _, tool := range []string{"openssl", "certutil", "pk12util", "cmsutil", "gpgsm", "gpg-agent", "gpgconf"} {
		Require(t, tool)
	}
	p12 := r.PKCS12(t)
	nss, err := newNSSDB(t.TempDir(), p12)
	if err != nil {
		t.Fatalf("smimetest: NSS database: %v", err)
	}
	gs, err := newGpgsmHome(p12)
	if err != nil {
		t.Fatalf("smimetest: gpgsm: %v", err)
	}
	t.Cleanup(func() {
		if err := gs.close(); err != nil {
			t.Errorf("smimetest: stopping gpg-agent: %v", err)
		}
	})
	return []Decryptor{
		{Name: "openssl", OAEP: true, Decrypt: func(der []byte) ([]byte, error) {
			return decryptOpenSSL(der, r.CertPEM, r.KeyPEM)
		}},
		{Name: "nss", Decrypt: nss.decrypt},
		{Name: "gpgsm", Decrypt: gs.decrypt},
		{Name: "go-pkcs7", Decrypt: func(der []byte) ([]byte, error) {
			return decryptGo(der, r.CertPEM, r.KeyPEM)
		}},
	}
}

// DecryptOpenSSL decrypts a DER (or BER) ContentInfo with
// `openssl cms -decrypt -binary`, which leaves line endings alone.
func DecryptOpenSSL(t testing.TB, der, certPEM, keyPEM []byte) ([]byte, error) {
	t.Helper()
	Require(t, "openssl")
	return decryptOpenSSL(der, certPEM, keyPEM)
}

func decryptOpenSSL(der, certPEM, keyPEM []byte) ([]byte, error) {
	dir, remove, err := tempFiles(map[string][]byte{"msg.der": der, "cert.pem": certPEM, "key.pem": keyPEM})
	if err != nil {
		return nil, err
	}
	defer remove()
	out := filepath.Join(dir, "out")
	if _, err := run(nil, nil, "openssl", "cms", "-decrypt", "-inform", "DER", "-binary",
		"-in", filepath.Join(dir, "msg.der"), "-recip", filepath.Join(dir, "cert.pem"),
		"-inkey", filepath.Join(dir, "key.pem"), "-out", out); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// DecryptNSS decrypts with NSS's cmsutil, the CMS code of Thunderbird and
// Evolution, after importing p12 (protected by P12Password) into a fresh
// database with an empty password.
func DecryptNSS(t testing.TB, der, p12 []byte) ([]byte, error) {
	t.Helper()
	for _, tool := range []string{"certutil", "pk12util", "cmsutil"} {
		Require(t, tool)
	}
	db, err := newNSSDB(t.TempDir(), p12)
	if err != nil {
		return nil, err
	}
	return db.decrypt(der)
}

// nssDB is an NSS database holding one key.
type nssDB struct{ dir string }

func newNSSDB(dir string, p12 []byte) (*nssDB, error) {
	db := filepath.Join(dir, "nssdb")
	if err := os.Mkdir(db, 0o700); err != nil {
		return nil, err
	}
	p12File := filepath.Join(dir, "key.p12")
	if err := os.WriteFile(p12File, p12, 0o600); err != nil {
		return nil, err
	}
	if _, err := run(nil, nil, "certutil", "-N", "-d", "sql:"+db, "--empty-password"); err != nil {
		return nil, err
	}
	if _, err := run(nil, nil, "pk12util", "-i", p12File, "-d", "sql:"+db, "-W", P12Password); err != nil {
		return nil, err
	}
	return &nssDB{dir: db}, nil
}

func (db *nssDB) decrypt(der []byte) ([]byte, error) {
	dir, remove, err := tempFiles(map[string][]byte{"msg.der": der})
	if err != nil {
		return nil, err
	}
	defer remove()
	in, out := filepath.Join(dir, "msg.der"), filepath.Join(dir, "out")
	if _, err := run(nil, nil, "cmsutil", "-D", "-i", in, "-d", "sql:"+db.dir, "-o", out); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// DecryptGpgsm decrypts with gpgsm, the S/MIME engine of KMail and
// Kleopatra, in a throw-away GNUPGHOME whose agent takes the passphrase from
// a file descriptor (allow-loopback-pinentry). The agent is stopped before it
// returns.
func DecryptGpgsm(t testing.TB, der, p12 []byte) (_ []byte, err error) {
	t.Helper()
	for _, tool := range []string{"gpgsm", "gpg-agent", "gpgconf"} {
		Require(t, tool)
	}
	gs, err := newGpgsmHome(p12)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := gs.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return gs.decrypt(der)
}

// gpgsmHome is a GNUPGHOME with one imported key. It is a short directory
// under os.TempDir rather than t.TempDir: gpg-agent puts its socket there
// when /run/user/UID does not exist, and a subtest's TempDir can exceed the
// 107 bytes a socket path may have.
type gpgsmHome struct{ dir string }

var gpgsmLoopback = []string{"--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0"}

func newGpgsmHome(p12 []byte) (_ *gpgsmHome, err error) {
	dir, err := os.MkdirTemp("", "gs")
	if err != nil {
		return nil, err
	}
	g := &gpgsmHome{dir: dir}
	defer func() {
		if err != nil {
			_ = g.close()
		}
	}()
	// The minimum s2k-count: by default the agent spends about a second of
	// CPU hashing the passphrase of every key it imports or unlocks, which
	// protects nothing for a throw-away key and made each call take seconds.
	agentConf := "allow-loopback-pinentry\ns2k-count 65536\n"
	if err := os.WriteFile(filepath.Join(dir, "gpg-agent.conf"), []byte(agentConf), 0o600); err != nil {
		return nil, err
	}
	p12File := filepath.Join(dir, "key.p12")
	// gpgsm 2.2 fails to read about 2% of OpenSSL's PKCS#12 exports ("error
	// parsing or decrypting the PKCS#12 file" after "trying charset ...";
	// measured 3 of 150), depending on the random salt and IV, not on the
	// key: the same key exported again imports. So a failed import is
	// retried with a fresh export of the same contents.
	var importErr error
	for attempt := 0; attempt < 6; attempt++ {
		if attempt > 0 {
			if p12, err = reexportPKCS12(p12); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(p12File, p12, 0o600); err != nil {
			return nil, err
		}
		// The exit status also reflects warnings about the CA certificate in
		// the file; what matters is that the secret key arrived.
		_, _, importErr = runFull(g.env(), []byte(P12Password+"\n"), "gpgsm", append(gpgsmLoopback, "--import", p12File)...)
		list, _, err := runFull(g.env(), nil, "gpgsm", "--batch", "--with-colons", "--list-secret-keys")
		if err != nil {
			return nil, err
		}
		if bytes.HasPrefix(list, []byte("crs:")) || bytes.Contains(list, []byte("\ncrs:")) {
			return g, nil
		}
	}
	return nil, fmt.Errorf("gpgsm: no secret key after import: %w", cmp.Or(importErr, errors.New("none listed")))
}

// reexportPKCS12 encrypts the contents of a PKCS#12 file again, with new
// salts, in the same legacy format.
func reexportPKCS12(p12 []byte) ([]byte, error) {
	pemData, err := run(nil, p12, "openssl", "pkcs12", "-nodes", "-passin", "pass:"+P12Password)
	if err != nil {
		return nil, err
	}
	// openssl reads the key and the certificates in two passes: a file, not
	// a pipe.
	dir, remove, err := tempFiles(map[string][]byte{"all.pem": pemData})
	if err != nil {
		return nil, err
	}
	defer remove()
	return run(nil, nil, "openssl", "pkcs12", "-export", "-in", filepath.Join(dir, "all.pem"),
		"-certpbe", "PBE-SHA1-3DES", "-keypbe", "PBE-SHA1-3DES", "-macalg", "sha1",
		"-passout", "pass:"+P12Password)
}

func (g *gpgsmHome) env() []string { return []string{"GNUPGHOME=" + g.dir} }

func (g *gpgsmHome) decrypt(der []byte) ([]byte, error) {
	f, err := os.CreateTemp(g.dir, "msg")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(der)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	// Success is judged by the status lines, as GPGME (and so KMail) does:
	// gpgsm exits with 2 when an envelope also names a certificate it does
	// not have but whose issuer it knows ("failed to find the certificate"),
	// though it decrypted with the key it has. OpenSSL's envelopes get the
	// same treatment.
	args := append(append([]string{"--status-fd", "2"}, gpgsmLoopback...), "--decrypt", f.Name())
	stdout, stderr, err := runFull(g.env(), []byte(P12Password+"\n"), "gpgsm", args...)
	if bytes.Contains(stderr, []byte("[GNUPG:] DECRYPTION_OKAY")) && !bytes.Contains(stderr, []byte("[GNUPG:] DECRYPTION_FAILED")) {
		return stdout, nil
	}
	if err == nil {
		err = fmt.Errorf("gpgsm --decrypt: no DECRYPTION_OKAY: %s", bytes.TrimSpace(stderr))
	}
	return nil, err
}

func (g *gpgsmHome) close() error {
	_, err := run(g.env(), nil, "gpgconf", "--kill", "gpg-agent")
	if rerr := os.RemoveAll(g.dir); err == nil {
		err = rerr
	}
	return err
}

// DecryptGo decrypts in-process with go.mozilla.org/pkcs7: a second opinion
// that needs no tools. It knows RSA PKCS#1 v1.5 key transport only.
func DecryptGo(t testing.TB, der, certPEM, keyPEM []byte) ([]byte, error) {
	t.Helper()
	return decryptGo(der, certPEM, keyPEM)
}

func decryptGo(der, certPEM, keyPEM []byte) ([]byte, error) {
	cert, key, err := parsePair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("pkcs7: parse: %w", err)
	}
	out, err := p7.Decrypt(cert, key)
	if err != nil {
		return nil, fmt.Errorf("pkcs7: decrypt: %w", err)
	}
	return out, nil
}

func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, crypto.PrivateKey, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil {
		return nil, nil, errors.New("smimetest: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, errors.New("smimetest: no PEM key")
	}
	if key, err := x509.ParsePKCS8PrivateKey(kb.Bytes); err == nil {
		return cert, key, nil
	}
	key, err := x509.ParsePKCS1PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("smimetest: key is neither PKCS#8 nor PKCS#1: %w", err)
	}
	return cert, key, nil
}

// VerifySigned checks that a decrypted entity holding S/MIME signed data
// (multipart/signed or opaque signed-data) still verifies byte for byte,
// against the signer's CA (`openssl smime -verify -CAfile`).
func VerifySigned(t testing.TB, entity []byte, ca *CA) error {
	t.Helper()
	Require(t, "openssl")
	dir := t.TempDir()
	in := writeTemp(t, dir, "entity.eml", entity)
	caFile := writeTemp(t, dir, "ca.pem", ca.CertPEM)
	_, err := run(nil, nil, "openssl", "smime", "-verify", "-binary", "-CAfile", caFile,
		"-in", in, "-out", filepath.Join(dir, "content"))
	return err
}

// DecryptMessage extracts the envelope from an enveloped message and
// decrypts it for r with OpenSSL: the one-call check for tests of code that
// encrypts whole messages.
func DecryptMessage(t testing.TB, message []byte, r *Recipient) ([]byte, error) {
	t.Helper()
	der, err := ExtractDER(message)
	if err != nil {
		return nil, err
	}
	return DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM)
}
