package enroll

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"io"
	"math/big"
	"mime/quotedprintable"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mozilla.org/pkcs7"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

const enrollAddr = "keys@example.test"

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
func (c *clock) add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// env is one state directory and the engine on it, reopened at will as a
// restarted daemon would.
type env struct {
	t     *testing.T
	dir   string
	clock *clock
	// current plays the certificate store: certificates of certs.dir by
	// address.
	mu      sync.Mutex
	current map[string][]*x509.Certificate
	mods    []func(*Options)
	e       *Engine
}

func newEnv(t *testing.T, mods ...func(*Options)) *env {
	t.Helper()
	v := &env{t: t, dir: filepath.Join(t.TempDir(), "state"), clock: &clock{t: time.Now()},
		current: map[string][]*x509.Certificate{}, mods: mods}
	v.open()
	t.Cleanup(func() { v.e.Close() })
	return v
}

func (v *env) options() Options {
	o := Options{
		Dir:      v.dir,
		Address:  enrollAddr,
		Delivers: func(a string) bool { return strings.HasSuffix(a, "@example.test") },
		Current: func(a string) []*x509.Certificate {
			v.mu.Lock()
			defer v.mu.Unlock()
			return v.current[a]
		},
		Addresses: func() []string {
			v.mu.Lock()
			defer v.mu.Unlock()
			var out []string
			for a := range v.current {
				out = append(out, a)
			}
			return out
		},
		Now: v.clock.now,
	}
	for _, m := range v.mods {
		m(&o)
	}
	return o
}

// open (re)opens the engine on the directory, as a restart does.
func (v *env) open() *Engine {
	v.t.Helper()
	if v.e != nil {
		v.e.Close()
	}
	e, err := Open(v.options())
	if err != nil {
		v.t.Fatalf("Open: %v", err)
	}
	v.e = e
	return e
}

func (v *env) setCurrent(addr string, cs ...*x509.Certificate) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.current[addr] = cs
}

func (v *env) handle(from string, msg []byte) Result {
	v.t.Helper()
	res, err := v.e.HandleMessage(from, bytes.NewReader(msg))
	if err != nil {
		v.t.Fatalf("HandleMessage: %v", err)
	}
	return res
}

func (v *env) tick() []Outgoing {
	v.t.Helper()
	out, err := v.e.Tick(v.clock.now())
	if err != nil {
		v.t.Fatalf("Tick: %v", err)
	}
	return out
}

func (v *env) list() []Entry {
	v.t.Helper()
	l, err := v.e.List()
	if err != nil {
		v.t.Fatalf("List: %v", err)
	}
	return l
}

func (v *env) log() []LogEntry {
	v.t.Helper()
	l, err := v.e.Log()
	if err != nil {
		v.t.Fatalf("Log: %v", err)
	}
	return l
}

// actions is the log as its action names.
func (v *env) actions() []string {
	var out []string
	for _, le := range v.log() {
		out = append(out, le.Action)
	}
	return out
}

func (v *env) state(addr, fp string) State {
	for _, en := range v.list() {
		if en.Address == addr && en.Fingerprint == fp {
			return en.State
		}
	}
	return ""
}

func fp(r *smimetest.Recipient) string { return fingerprint(r.Cert.Raw) }

// accepted fails unless res is a 250.
func accepted(t *testing.T, res Result) Result {
	t.Helper()
	if res.Err != nil {
		t.Fatalf("refused: %v", res.Err)
	}
	return res
}

// only returns the single Outgoing of a purpose.
func only(t *testing.T, outs []Outgoing, purpose string) Outgoing {
	t.Helper()
	var found []Outgoing
	for _, o := range outs {
		if o.Purpose == purpose {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %q messages among %d, want 1", len(found), purpose, len(outs))
	}
	return found[0]
}

// encrypt does what the filter does with an Outgoing: encrypt it, with the
// daemon's own S/MIME writer, to exactly its EncryptTo.
func encrypt(t *testing.T, o Outgoing) []byte {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(o.Entity))
	h, err := smime.ReadHeader(br, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, err := smime.Encrypt(&b, h, o.EncryptTo, smime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := br.WriteTo(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// read encrypts o and decrypts it with OpenSSL for r: the text r's owner
// reads.
func read(t *testing.T, o Outgoing, r *smimetest.Recipient) string {
	t.Helper()
	plain, err := smimetest.DecryptMessage(t, encrypt(t, o), r)
	if err != nil {
		t.Fatalf("decrypting the %s for %s: %v", o.Purpose, r.Addr, err)
	}
	return decodeEntity(t, plain)
}

// decodeEntity returns a decrypted text/plain entity as a person reads it:
// its header, then its body with the transfer encoding undone.
func decodeEntity(t *testing.T, plain []byte) string {
	t.Helper()
	head, body, ok := bytes.Cut(plain, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("no header in the decrypted entity:\n%s", plain)
	}
	if bytes.Contains(bytes.ToLower(head), []byte("quoted-printable")) {
		var err error
		if body, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body))); err != nil {
			t.Fatal(err)
		}
	}
	return string(head) + "\r\n\r\n" + string(body)
}

var codeLink = regexp.MustCompile(`mailto:keys@example\.test\?subject=(confirm|cancel)%20([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})`)

// codeOf returns the code of the mailto: link of a decrypted text, checking
// that the same code is there in words.
func codeOf(t *testing.T, text, verb string) string {
	t.Helper()
	m := codeLink.FindStringSubmatch(text)
	if m == nil || m[1] != verb {
		t.Fatalf("no %s link in:\n%s", verb, text)
	}
	if !strings.Contains(text, "  "+verb+" "+m[2]+"\r\n") {
		t.Fatalf("the code is not in words in:\n%s", text)
	}
	return m[2]
}

// codeMessage is what a click on the link sends.
func codeMessage(from, subject string) []byte {
	return []byte("From: <" + from + ">\r\nTo: <" + enrollAddr + ">\r\nSubject: " + subject +
		"\r\nDate: " + time.Now().Format(time.RFC1123Z) + "\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain\r\n\r\n\r\n")
}

// The entity users sign: any short text.
const signedEntity = "Content-Type: text/plain; charset=us-ascii\r\n\r\nPlease encrypt my mail.\r\n"

// run executes a tool, failing the test with its stderr.
func run(t *testing.T, env []string, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out.Bytes()
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// toCRLFMessage turns the LF line ends tools write into the CRLF of a
// message in transit (SMTP and LMTP carry CRLF).
func toCRLFMessage(b []byte) []byte { return toCRLF(b) }

// signer makes a signed request from r to the enrollment address.
type signer func(t *testing.T, r *smimetest.Recipient) []byte

// signOpenSSL signs with `openssl smime -sign`, detached (multipart/signed)
// or opaque (-nodetach: application/pkcs7-mime signed-data).
func signOpenSSL(opaque bool) signer {
	args := []string{"smime", "-sign"}
	if opaque {
		args = append(args, "-nodetach")
	}
	return signOpenSSLWith(signedEntity, args...)
}

// signOpenSSLWith signs entity with the openssl command and options given.
func signOpenSSLWith(entity string, args ...string) signer {
	return func(t *testing.T, r *smimetest.Recipient) []byte {
		smimetest.Require(t, "openssl")
		dir := t.TempDir()
		cert, key := r.WriteFiles(t, dir)
		in := writeFile(t, dir, "entity", []byte(entity))
		return toCRLFMessage(run(t, nil, nil, "openssl", append(slices.Clone(args), "-signer", cert, "-inkey", key, "-in", in,
			"-from", r.Addr, "-to", enrollAddr, "-subject", "Encrypt my mail")...))
	}
}

// signGpgsm signs with `gpgsm --detach-sign` (KMail, Kleopatra) in a
// throw-away GNUPGHOME that trusts the recipient's CA.
func signGpgsm(t *testing.T, r *smimetest.Recipient) []byte {
	for _, tool := range []string{"gpgsm", "gpg-agent", "gpgconf"} {
		smimetest.Require(t, tool)
	}
	// Short: gpg-agent's socket path must fit in 107 bytes.
	home, err := os.MkdirTemp("", "gs")
	if err != nil {
		t.Fatal(err)
	}
	genv := []string{"GNUPGHOME=" + home}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
		cmd.Env = append(os.Environ(), genv...)
		_ = cmd.Run()
		os.RemoveAll(home)
	})
	writeFile(t, home, "gpg-agent.conf", []byte("allow-loopback-pinentry\ns2k-count 65536\n"))
	sum := sha1.Sum(r.CA.Cert.Raw)
	writeFile(t, home, "trustlist.txt", []byte(fmt.Sprintf("%X S relax\n", sum[:])))
	p12 := writeFile(t, home, "key.p12", r.PKCS12(t))
	loop := []string{"--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0", "--disable-crl-checks"}
	pass := []byte(smimetest.P12Password + "\n")
	// The exit status also reflects warnings about the CA certificate.
	cmd := exec.Command("gpgsm", append(loop, "--import", p12)...)
	cmd.Env = append(os.Environ(), genv...)
	cmd.Stdin = bytes.NewReader(pass)
	_ = cmd.Run()
	in := writeFile(t, home, "entity", []byte(signedEntity))
	sig := filepath.Join(home, "sig.der")
	run(t, genv, pass, "gpgsm", append(loop, "-u", r.Addr, "--detach-sign", "-o", sig, in)...)
	der, err := os.ReadFile(sig)
	if err != nil {
		t.Fatal(err)
	}
	return multipartSigned(r.Addr, []byte(signedEntity), der)
}

// nssDB is an NSS database (Thunderbird's engine) holding r's key and
// trusting its CA, as cmsutil needs for signing.
func nssDB(t *testing.T, r *smimetest.Recipient) string {
	for _, tool := range []string{"certutil", "pk12util", "cmsutil"} {
		smimetest.Require(t, tool)
	}
	dir := t.TempDir()
	db := "sql:" + filepath.Join(dir, "db")
	os.Mkdir(filepath.Join(dir, "db"), 0o700)
	run(t, nil, nil, "certutil", "-N", "-d", db, "--empty-password")
	run(t, nil, nil, "pk12util", "-i", writeFile(t, dir, "k.p12", r.PKCS12(t)), "-d", db, "-W", smimetest.P12Password)
	run(t, nil, nil, "certutil", "-A", "-n", "ca", "-t", "C,C,C", "-i", writeFile(t, dir, "ca.pem", r.CA.CertPEM), "-d", db)
	return db
}

// signNSS signs with `cmsutil -S`, detached (-T) or opaque.
func signNSS(opaque bool) signer {
	return func(t *testing.T, r *smimetest.Recipient) []byte {
		db := nssDB(t, r)
		dir := t.TempDir()
		in := writeFile(t, dir, "entity", []byte(signedEntity))
		out := filepath.Join(dir, "sig.der")
		args := []string{"-S", "-N", r.Addr, "-i", in, "-d", db, "-o", out}
		if !opaque {
			args = append(args, "-T")
		}
		run(t, nil, nil, "cmsutil", args...)
		der, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if opaque {
			return opaqueSigned(r.Addr, der)
		}
		return multipartSigned(r.Addr, []byte(signedEntity), der)
	}
}

func header(from string) string {
	return "From: <" + from + ">\r\nTo: <" + enrollAddr + ">\r\nSubject: Encrypt my mail\r\nDate: " +
		time.Now().Format(time.RFC1123Z) + "\r\nMIME-Version: 1.0\r\n"
}

func base64Lines(der []byte) string {
	s := base64.StdEncoding.EncodeToString(der)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	return b.String() + s + "\r\n"
}

// multipartSigned wraps a detached signature as mail clients do (RFC 8551
// §3.5.3).
func multipartSigned(from string, entity, sig []byte) []byte {
	const bd = "----=_signed_boundary_1"
	return []byte(header(from) +
		`Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="` + bd + "\"\r\n\r\n" +
		"This is an S/MIME signed message\r\n\r\n" +
		"--" + bd + "\r\n" + string(entity) + "\r\n" +
		"--" + bd + "\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n" +
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=smime.p7s\r\n\r\n" +
		base64Lines(sig) + "\r\n--" + bd + "--\r\n")
}

// opaqueSigned wraps signed-data that holds its content (RFC 8551 §3.5.2).
func opaqueSigned(from string, der []byte) []byte {
	return []byte(header(from) +
		"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n" +
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=smime.p7m\r\n\r\n" +
		base64Lines(der))
}

// signGo signs in-process with go.mozilla.org/pkcs7, detached, with signer's
// key; enc, when set, is added to the message and named by an
// SMIMEEncryptionKeyPreference attribute, as clients with separate signing
// and encryption certificates do.
func signGo(t testing.TB, sgn, enc *smimetest.Recipient) []byte {
	t.Helper()
	sd, err := pkcs7.NewSignedData([]byte(signedEntity))
	if err != nil {
		t.Fatal(err)
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	var cfg pkcs7.SignerInfoConfig
	if enc != nil {
		ias, err := asn1.Marshal(struct {
			Issuer asn1.RawValue
			Serial *big.Int
		}{asn1.RawValue{FullBytes: enc.Cert.RawIssuer}, enc.Cert.SerialNumber})
		if err != nil {
			t.Fatal(err)
		}
		ias[0] = 0xa0 // [0] IMPLICIT IssuerAndSerialNumber
		cfg.ExtraSignedAttributes = []pkcs7.Attribute{{Type: oidEncryptionKeyPreference, Value: asn1.RawValue{FullBytes: ias}}}
		sd.AddCertificate(enc.Cert)
	}
	if err := sd.AddSigner(sgn.Cert, sgn.Key, cfg); err != nil {
		t.Fatal(err)
	}
	sd.Detach()
	der, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return multipartSigned(sgn.Addr, []byte(signedEntity), der)
}

// newCA makes a self-signed root that issued none of the test
// certificates, for "does not chain" cases.
func newCA(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func x509Pool(t *testing.T, cs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cs {
		p.AddCert(c)
	}
	return p
}

// renew issues r's address and key a new certificate from r's CA, valid
// until notAfter: what a user gets from their CA when theirs runs out.
func renew(t *testing.T, r *smimetest.Recipient, notAfter time.Time) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: r.Cert.Subject, EmailAddresses: r.Cert.EmailAddresses,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: r.Cert.KeyUsage, ExtKeyUsage: r.Cert.ExtKeyUsage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.CA.Cert, r.Key.Public(), r.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// withExtension reissues r's certificate with a private extension of the
// given contents.
func withExtension(t *testing.T, r *smimetest.Recipient, value []byte) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: r.Cert.Subject, EmailAddresses: r.Cert.EmailAddresses,
		NotBefore: r.Cert.NotBefore, NotAfter: r.Cert.NotAfter, KeyUsage: r.Cert.KeyUsage, ExtKeyUsage: r.Cert.ExtKeyUsage,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: value}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.CA.Cert, r.Key.Public(), r.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
