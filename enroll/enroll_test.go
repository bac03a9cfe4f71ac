package enroll

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// TestFirstEnrollment: a request signed as each real client signs gets a
// challenge encrypted to the requested certificate only; OpenSSL decrypts
// it; its mailto: link carries the code; the code activates the
// certificate at once (the address had none), and the certificate store
// then uses it from the active directory.
func TestFirstEnrollment(t *testing.T) {
	tests := []struct {
		name string
		sign signer
	}{
		{"openssl detached", signOpenSSL(false)},
		{"openssl opaque", signOpenSSL(true)},
		// Streamed BER: the content in 4 KiB OCTET STRING segments.
		{"openssl cms streamed opaque, 54 KiB", signOpenSSLWith(bigEntity, "cms", "-sign", "-nodetach", "-stream")},
		{"openssl smime streamed detached, 54 KiB", signOpenSSLWith(bigEntity, "smime", "-sign", "-stream")},
		{"gpgsm detached", signGpgsm},
		{"nss detached", signNSS(false)},
		{"nss opaque", signNSS(true)},
		{"go pkcs7 detached", func(t *testing.T, r *smimetest.Recipient) []byte { return signGo(t, r, nil) }},
	}
	alice := smimetest.NewRecipient(t, "alice@example.test")
	other := smimetest.NewRecipient(t, "bob@example.test")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t)
			res := accepted(t, v.handle(alice.Addr, tt.sign(t, alice)))
			if len(res.Outgoing) != 1 {
				t.Fatalf("%d outgoing, want the challenge alone", len(res.Outgoing))
			}
			ch := only(t, res.Outgoing, "challenge")
			if ch.To != alice.Addr || len(ch.EncryptTo) != 1 || !ch.EncryptTo[0].Equal(alice.Cert) {
				t.Fatalf("challenge to %s for %d certificates, want %s for the requested one", ch.To, len(ch.EncryptTo), alice.Addr)
			}
			enc := encrypt(t, ch)
			der, err := smimetest.ExtractDER(enc)
			if err != nil {
				t.Fatal(err)
			}
			ris, err := smimetest.RecipientsOf(der)
			if err != nil {
				t.Fatal(err)
			}
			if len(ris) != 1 || !ris[0].Is(alice.Cert) {
				t.Errorf("envelope for %v, want the requested certificate only", ris)
			}
			if _, err := smimetest.DecryptMessage(t, enc, other); err == nil {
				t.Error("another key decrypts the challenge")
			}
			text := read(t, ch, alice)
			code := codeOf(t, text, "confirm")
			if v.state(alice.Addr, fp(alice)) != StateAwaiting {
				t.Fatalf("state %q before confirmation, want %q", v.state(alice.Addr, fp(alice)), StateAwaiting)
			}

			res = accepted(t, v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+code)))
			act := only(t, res.Outgoing, "activated")
			if !slices.ContainsFunc(act.EncryptTo, alice.Cert.Equal) {
				t.Error("the activation notice is not encrypted to the new certificate")
			}
			if txt := read(t, act, alice); !strings.Contains(txt, fp(alice)) {
				t.Errorf("activation notice lacks the fingerprint:\n%s", txt)
			}
			if got := v.state(alice.Addr, fp(alice)); got != StateActive {
				t.Fatalf("state %q after confirmation, want %q", got, StateActive)
			}
			if got, want := v.actions(), []string{ActionRequest, ActionConfirm, ActionActivate}; !slices.Equal(got, want) {
				t.Errorf("log actions %q, want %q", got, want)
			}

			s, err := certs.Load(certs.Options{Dir: v.e.ActiveDir(), Now: v.clock.now})
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Lookup(alice.Addr); len(got) != 1 || got[0].Fingerprint != fp(alice) {
				t.Errorf("certificate store finds %d certificates for %s in the active directory, want the enrolled one (skipped: %v)", len(got), alice.Addr, s.Skipped())
			}
		})
	}
}

var bigEntity = "Content-Type: text/plain\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 3000)

// TestChallengeDecryptsInEveryClient: the challenge, encrypted as the
// filter encrypts, opens in OpenSSL, NSS (Thunderbird), gpgsm (KMail) and
// the Go library, and each shows the same code.
func TestChallengeDecryptsInEveryClient(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	res := accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
	enc := encrypt(t, only(t, res.Outgoing, "challenge"))
	der, err := smimetest.ExtractDER(enc)
	if err != nil {
		t.Fatal(err)
	}
	var codes []string
	for _, d := range smimetest.Decryptors(t, alice) {
		plain, err := d.Decrypt(der)
		if err != nil {
			t.Errorf("%s: %v", d.Name, err)
			continue
		}
		codes = append(codes, codeOf(t, string(plain), "confirm"))
	}
	if len(slices.Compact(codes)) != 1 {
		t.Errorf("codes %q, want one and the same", codes)
	}
}

// TestSeparateEncryptionCertificate: an ECDSA signer whose signature names
// an RSA encryption certificate (SMIMEEncryptionKeyPreference) enrolls the
// RSA one; an ECDSA signer alone is refused, saying why.
func TestSeparateEncryptionCertificate(t *testing.T) {
	ecSigner := smimetest.NewRecipient(t, "alice@example.test", smimetest.ECKey())
	rsaEnc := smimetest.NewRecipient(t, "alice@example.test")
	tests := []struct {
		name    string
		msg     func(t *testing.T) []byte
		want    *smimetest.Recipient
		wantErr error
		reason  string
	}{
		{name: "preference names the RSA certificate", msg: func(t *testing.T) []byte { return signGo(t, ecSigner, rsaEnc) }, want: rsaEnc},
		{name: "ECDSA alone, go", msg: func(t *testing.T) []byte { return signGo(t, ecSigner, nil) },
			wantErr: ErrUnusableCertificate, reason: "not RSA"},
		{name: "ECDSA alone, openssl", msg: func(t *testing.T) []byte { return signOpenSSL(false)(t, ecSigner) },
			wantErr: ErrUnusableCertificate, reason: "not RSA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t)
			res := v.handle(ecSigner.Addr, tt.msg(t))
			if tt.wantErr != nil {
				if !errors.Is(res.Err, tt.wantErr) || !strings.Contains(res.Err.Error(), tt.reason) || Temporary(res.Err) {
					t.Fatalf("err = %v, want permanent %v saying %q", res.Err, tt.wantErr, tt.reason)
				}
				if len(res.Outgoing) != 0 || len(v.list()) != 0 || len(v.log()) != 0 {
					t.Error("a refused request left traces")
				}
				return
			}
			ch := only(t, accepted(t, res).Outgoing, "challenge")
			if len(ch.EncryptTo) != 1 || !ch.EncryptTo[0].Equal(tt.want.Cert) {
				t.Fatal("challenge not encrypted to the preferred certificate alone")
			}
			code := codeOf(t, read(t, ch, tt.want), "confirm")
			accepted(t, v.handle(ecSigner.Addr, codeMessage(ecSigner.Addr, "confirm "+code)))
			if got := v.state(tt.want.Addr, fp(tt.want)); got != StateActive {
				t.Errorf("state %q, want active", got)
			}
		})
	}
}

// TestRefusals: requests that cannot succeed get a permanent refusal whose
// text says why, and change nothing.
func TestRefusals(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	wrong := smimetest.NewRecipient(t, "carol@example.test", smimetest.WrongUsage())
	outsider := smimetest.NewRecipient(t, "mallory@elsewhere.example")
	otherCA := smimetest.NewRecipient(t, "dave@example.test")
	tests := []struct {
		name   string
		mods   []func(*Options)
		msg    func(t *testing.T) []byte
		err    error
		reason string
	}{
		{name: "unsigned", msg: func(*testing.T) []byte { return []byte(header(alice.Addr) + signedEntity) },
			err: ErrUnsigned, reason: "sign"},
		{name: "content changed after signing", msg: func(t *testing.T) []byte {
			return []byte(strings.Replace(string(signGo(t, alice, nil)), "Please encrypt", "Please decrypt", 1))
		}, err: ErrBadSignature, reason: "does not match"},
		{name: "encrypted instead of signed", msg: func(t *testing.T) []byte {
			m := string(signOpenSSL(true)(t, alice))
			return []byte(strings.Replace(m, "smime-type=signed-data", "smime-type=enveloped-data", 1))
		}, err: ErrUnsigned, reason: "encrypted"},
		{name: "certificate for web servers", msg: func(t *testing.T) []byte { return signGo(t, wrong, nil) },
			err: ErrUnusableCertificate, reason: "keyEncipherment"},
		{name: "address not delivered here", msg: func(t *testing.T) []byte { return signGo(t, outsider, nil) },
			err: ErrNotDelivered, reason: "mallory@elsewhere.example"},
		{name: "untrusted issuer", mods: []func(*Options){func(o *Options) {
			o.Roots = x509Pool(t, newCA(t, "other root"))
		}}, msg: func(t *testing.T) []byte { return signGo(t, otherCA, nil) }, err: ErrUnusableCertificate, reason: "trusted root"},
		{name: "too large", mods: []func(*Options){func(o *Options) { o.MaxMessageSize = 2048 }},
			msg: func(t *testing.T) []byte { return signGo(t, alice, nil) }, err: ErrTooLarge, reason: "2048"},
		{name: "malformed header", msg: func(*testing.T) []byte { return []byte("no colon here\r\n\r\n") }, err: ErrMalformed},
		{name: "certificate too large", msg: func(t *testing.T) []byte {
			big := &smimetest.Recipient{Addr: alice.Addr, Key: alice.Key, CA: alice.CA,
				Cert: withExtension(t, alice, make([]byte, 40<<10))}
			return signGo(t, big, nil)
		}, err: ErrUnusableCertificate, reason: "at most"},
		{name: "many addresses elsewhere, reason bounded", msg: func(t *testing.T) []byte {
			var many []string
			for i := range 50 {
				many = append(many, fmt.Sprintf("someone-with-a-long-name-%d@elsewhere.example", i))
			}
			return signGo(t, smimetest.NewRecipient(t, "x@elsewhere.example", smimetest.AlsoFor(many...)), nil)
		}, err: ErrNotDelivered, reason: "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t, tt.mods...)
			res := v.handle(alice.Addr, tt.msg(t))
			if !errors.Is(res.Err, tt.err) || Temporary(res.Err) {
				t.Fatalf("err = %v, want permanent %v", res.Err, tt.err)
			}
			if !strings.Contains(res.Err.Error(), tt.reason) {
				t.Errorf("reason %q does not say %q", res.Err, tt.reason)
			}
			if n := len(res.Err.Error()); n > maxReason+3 {
				t.Errorf("reason of %d bytes", n)
			}
			if len(res.Outgoing) != 0 || len(v.list()) != 0 || len(v.log()) != 0 {
				t.Error("a refused request left traces")
			}
		})
	}
}

// TestAutomaticMailIgnored: bounces and autoresponders are taken and
// dropped, so no loop can start.
func TestAutomaticMailIgnored(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	signed := signGo(t, alice, nil)
	tests := []struct {
		name, from string
		msg        []byte
	}{
		{"null sender", "", signed},
		{"auto-replied", alice.Addr, append([]byte("Auto-Submitted: auto-replied\r\n"), signed...)},
	}
	for _, tt := range tests {
		res := v.handle(tt.from, tt.msg)
		if res.Err != nil || len(res.Outgoing) != 0 {
			t.Errorf("%s: err %v, %d outgoing; want accepted and ignored", tt.name, res.Err, len(res.Outgoing))
		}
	}
	if len(v.list()) != 0 {
		t.Error("automatic mail created a request")
	}
}

// TestLFOnlyMessage: a message stored with bare LF line ends (a local
// tool, not SMTP) still verifies in its canonical CRLF form.
func TestLFOnlyMessage(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	msg := strings.ReplaceAll(string(signGo(t, alice, nil)), "\r\n", "\n")
	accepted(t, v.handle(alice.Addr, []byte(msg)))
}

// TestMultipleAddresses: each address of a certificate that is delivered
// here gets its own challenge and is confirmed on its own; an address
// elsewhere is named and skipped.
func TestMultipleAddresses(t *testing.T) {
	r := smimetest.NewRecipient(t, "alice@example.test", smimetest.AlsoFor("ALICE.SMITH@Example.Test", "alice@elsewhere.example"))
	v := newEnv(t)
	res := accepted(t, v.handle(r.Addr, signGo(t, r, nil)))
	if !strings.Contains(res.Text, "not delivered here: alice@elsewhere.example") {
		t.Errorf("text %q does not name the address elsewhere", res.Text)
	}
	var to []string
	for _, o := range res.Outgoing {
		to = append(to, o.To)
	}
	slices.Sort(to)
	if want := []string{"ALICE.SMITH@example.test", "alice@example.test"}; !slices.Equal(to, want) {
		t.Fatalf("challenges to %q, want %q", to, want)
	}
	code := codeOf(t, read(t, res.Outgoing[0], r), "confirm")
	accepted(t, v.handle(r.Addr, codeMessage(r.Addr, "confirm "+code)))
	states := map[string]State{}
	for _, en := range v.list() {
		states[en.Address] = en.State
	}
	if states[res.Outgoing[0].To] != StateActive || states[res.Outgoing[1].To] != StateAwaiting {
		t.Errorf("states %v: one code must confirm one address only", states)
	}
	// The store must use the file for its one address only.
	data := readActiveFile(t, v, res.Outgoing[0].To, fp(r))
	if !strings.HasPrefix(data, "Enrolled-Address: "+res.Outgoing[0].To+"\n") {
		t.Errorf("active file does not start with its address:\n%s", data)
	}
}

func readActiveFile(t *testing.T, v *env, addr, fp string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v.e.ActiveDir(), activeName(addr, fp)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCodeStaysEncrypted: the code is nowhere but inside the challenge's
// encryption: not in the outer header, the ciphertext, the result, the
// log or any file of the state directory.
func TestCodeStaysEncrypted(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	holder := smimetest.NewRecipient(t, "alice@example.test", smimetest.KeyName("alice-old"))
	v := newEnv(t)
	v.setCurrent(alice.Addr, holder.Cert)
	res := accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
	ch, notice := only(t, res.Outgoing, "challenge"), only(t, res.Outgoing, "change-notice")
	secrets := []string{codeOf(t, read(t, ch, alice), "confirm"), codeOf(t, read(t, notice, holder), "cancel")}

	var exposed []string
	exposed = append(exposed, res.Text)
	for _, o := range res.Outgoing {
		outer, _, _ := strings.Cut(string(o.Entity), "\r\n\r\n")
		exposed = append(exposed, outer, string(encrypt(t, o)))
	}
	filepath.Walk(v.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			exposed = append(exposed, string(b))
		}
		return nil
	})
	for _, s := range secrets {
		canonical := strings.ReplaceAll(s, "-", "")
		for _, x := range exposed {
			if strings.Contains(x, s) || strings.Contains(x, canonical) {
				t.Fatalf("code %s found outside the encryption", s)
			}
		}
	}
}

// TestSpan: the words messages use for durations.
func TestSpan(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{72 * time.Hour, "3 days"}, {24 * time.Hour, "24 hours"}, {time.Hour, "1 hour"},
		{90 * time.Minute, "90 minutes"}, {1500 * time.Millisecond, "1.5s"},
	}
	for _, tt := range tests {
		if got := span(tt.d); got != tt.want {
			t.Errorf("span(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestAlreadyInUse: a request for a certificate the store already uses for
// the address (from certs.dir) sends nothing.
func TestAlreadyInUse(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	v.setCurrent(alice.Addr, alice.Cert)
	res := accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
	if len(res.Outgoing) != 0 || !strings.Contains(res.Text, "already in use") || len(v.list()) != 0 {
		t.Errorf("%q, %d messages, %d entries", res.Text, len(res.Outgoing), len(v.list()))
	}
}
