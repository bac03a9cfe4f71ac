package enroll

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
)

// OpenPGP requests are made with GnuPG (internal/pgptest) as users' clients
// make them; the challenges are encrypted as the filter encrypts them
// (pgpmime) and read back with gpg. TestMain stops the gpg-agents.

func TestMain(m *testing.M) {
	code := m.Run()
	pgptest.Cleanup()
	os.Exit(code)
}

var gpgHomes sync.Map // name -> *pgptest.GnuPG

// gpgKey makes a key in a GnuPG home of its own: gpg --quick-gen-key with
// algo and usage as gpg takes them ("future-default" "default" is
// Ed25519 with a Cv25519 encryption subkey; "ed25519" "sign" a signing
// key only).
func gpgKey(t *testing.T, name, addr, algo, usage string) (*pgptest.Key, *pgptest.GnuPG) {
	t.Helper()
	pgptest.Require(t, "gpg", "gpg-agent")
	g, err := pgptest.NewGnuPG("enroll-" + name)
	if err != nil {
		t.Fatal(err)
	}
	gpgHomes.Store(name, g)
	if _, err := g.Run("--quick-gen-key", "Test <"+addr+">", algo, usage, "never"); err != nil {
		t.Fatalf("gpg --quick-gen-key: %v", err)
	}
	k, err := g.Export(name, addr)
	if err != nil {
		t.Fatal(err)
	}
	return k, g
}

// qp is quoted-printable as a mail client writes an attachment.
func qp(b []byte) string {
	var out bytes.Buffer
	w := quotedprintable.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.String()
}

// thunderbirdRequest is what Thunderbird sends for "Attach My Public Key"
// on an unsigned message: multipart/mixed with the text and the armored
// key as an application/pgp-keys attachment, quoted-printable (which
// turns every "=" of the armor into "=3D").
func thunderbirdRequest(from string, k *pgptest.Key) []byte {
	id := strings.ToUpper(k.FPR[len(k.FPR)-16:])
	msg := header(from) +
		"Content-Type: multipart/mixed; boundary=\"------------tb0123456789\"\r\n\r\n" +
		"This is a multi-part message in MIME format.\r\n" +
		"--------------tb0123456789\r\nContent-Type: text/plain; charset=UTF-8; format=flowed\r\n" +
		"Content-Transfer-Encoding: 7bit\r\n\r\nPlease encrypt my mail.\r\n\r\n" +
		"--------------tb0123456789\r\n" +
		"Content-Type: application/pgp-keys; name=\"OpenPGP_0x" + id + ".asc\"\r\n" +
		"Content-Disposition: attachment; filename=\"OpenPGP_0x" + id + ".asc\"\r\n" +
		"Content-Description: OpenPGP public key\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		qp(k.Armored) + "\r\n" +
		"--------------tb0123456789--\r\n"
	return toCRLF([]byte(msg))
}

// autocryptRequest is a PGP/MIME signed message (RFC 3156 §5) whose
// Autocrypt header carries the signing key, signed by gpg over the first
// part's bytes as they go on the wire.
func autocryptRequest(t *testing.T, g *pgptest.GnuPG, k *pgptest.Key, content string) []byte {
	t.Helper()
	sig, err := withTemp(t, []byte(content), func(path string) ([]byte, error) {
		return g.Run("--armor", "--detach-sign", "--digest-algo", "SHA256", "--local-user", k.FPR, "--output", "-", path)
	})
	if err != nil {
		t.Fatalf("gpg --detach-sign: %v", err)
	}
	kd := base64.StdEncoding.EncodeToString(k.Binary)
	var folded strings.Builder
	for len(kd) > 76 {
		folded.WriteString(kd[:76] + "\r\n ")
		kd = kd[76:]
	}
	folded.WriteString(kd)
	msg := header(k.Addr) +
		"Autocrypt: addr=" + k.Addr + "; prefer-encrypt=mutual; keydata=\r\n " + folded.String() + "\r\n" +
		"Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"sig42\"\r\n\r\n" +
		"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n" +
		"--sig42\r\n" + content + "\r\n--sig42\r\n" +
		"Content-Type: application/pgp-signature; name=\"OpenPGP_signature.asc\"\r\n" +
		"Content-Description: OpenPGP digital signature\r\nContent-Disposition: attachment; filename=\"OpenPGP_signature\"\r\n\r\n" +
		string(toCRLF(sig)) + "\r\n--sig42--\r\n"
	return []byte(msg)
}

func withTemp(t *testing.T, data []byte, f func(path string) ([]byte, error)) ([]byte, error) {
	t.Helper()
	return f(writeFile(t, t.TempDir(), "in", data))
}

// sealFor does what the filter does with an Outgoing that names OpenPGP
// keys: PGP/MIME (RFC 3156 §4) to exactly its EncryptToKeys.
func sealFor(t *testing.T, o Outgoing) []byte {
	t.Helper()
	if len(o.EncryptTo) != 0 {
		t.Fatalf("the %s names %d certificates beside its keys", o.Purpose, len(o.EncryptTo))
	}
	var keys []*packet.PublicKey
	for _, k := range o.EncryptToKeys {
		keys = append(keys, k.EncryptionKeys(time.Now())...)
	}
	if len(keys) == 0 {
		t.Fatalf("the %s names no usable OpenPGP key", o.Purpose)
	}
	br := bufio.NewReader(bytes.NewReader(o.Entity))
	hdr, err := smime.ReadHeader(br, len(o.Entity)+1)
	if err != nil {
		t.Fatal(err)
	}
	var sealed, out bytes.Buffer
	seal, err := pgpmime.NewSeal(&sealed, hdr, pgpmime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer seal.Destroy()
	if _, err := br.WriteTo(seal); err != nil {
		t.Fatal(err)
	}
	if err := seal.Close(); err != nil {
		t.Fatal(err)
	}
	if err := seal.WriteCopy(&out, &sealed, keys); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// readPGP seals o and decrypts it with gpg for k: the text k's owner reads.
// It also checks that the message has one key packet, for k's encryption
// subkey: the message is encrypted to k alone.
func readPGP(t *testing.T, o Outgoing, k *pgptest.Key) string {
	t.Helper()
	msg := sealFor(t, o)
	if bytes.Contains(msg, []byte("subject=confirm")) || bytes.Contains(msg, []byte("subject=cancel")) {
		t.Fatalf("the %s shows a code outside the encryption", o.Purpose)
	}
	plain, err := k.Decrypt(msg)
	if err != nil {
		t.Fatalf("gpg cannot decrypt the %s for %s: %v", o.Purpose, k.Addr, err)
	}
	return decodeEntity(t, plain)
}

// keyIDs are the key IDs of msg's key packets.
func keyIDs(t *testing.T, msg []byte) []string {
	t.Helper()
	var ids []string
	for _, p := range pgptest.KeyPackets(t, msg) {
		ids = append(ids, p.KeyID)
	}
	return ids
}

func subkeyID(k *pgptest.Key) string {
	s := k.Subkeys[len(k.Subkeys)-1]
	return s[len(s)-16:]
}

// TestOpenPGPThunderbirdRequest: an unsigned message with the key attached
// as Thunderbird attaches it gets a challenge that is PGP/MIME, encrypted
// to that key alone, which gpg decrypts and which holds the code; the code
// activates the key, bound to its address, which the certificate store
// then loads from active/.
func TestOpenPGPThunderbirdRequest(t *testing.T) {
	k, _ := gpgKey(t, "tb", "tb@example.test", "future-default", "default")
	v := newEnv(t)
	res := accepted(t, v.handle(k.Addr, thunderbirdRequest(k.Addr, k)))
	ch := only(t, res.Outgoing, "challenge")
	if ch.To != k.Addr || len(ch.EncryptTo) != 0 || len(ch.EncryptToKeys) != 1 || ch.EncryptToKeys[0].Fingerprint != k.FPR {
		t.Fatalf("challenge to %s encrypted to %d certificates and %d keys, want %s's key alone", ch.To, len(ch.EncryptTo), len(ch.EncryptToKeys), k.Addr)
	}
	msg := sealFor(t, ch)
	if ids := keyIDs(t, msg); len(ids) != 1 || ids[0] != subkeyID(k) {
		t.Fatalf("challenge key packets %v, want one for subkey %s", ids, subkeyID(k))
	}
	text := readPGP(t, ch, k)
	if !strings.Contains(text, "OpenPGP key") || !strings.Contains(text, strings.ToUpper(k.FPR)) {
		t.Errorf("the challenge does not name the key:\n%s", text)
	}
	code := codeOf(t, text, "confirm")
	if got := v.state(k.Addr, k.FPR); got != StateAwaiting {
		t.Fatalf("state %q before the code, want %q", got, StateAwaiting)
	}

	res = accepted(t, v.handle(k.Addr, codeMessage(k.Addr, "confirm "+code)))
	act := only(t, res.Outgoing, "activated")
	if !strings.Contains(readPGP(t, act, k), "now stored encrypted") && !strings.Contains(readPGP(t, act, k), "From now on") {
		t.Error("the activation notice does not say what changed")
	}
	if got := v.state(k.Addr, k.FPR); got != StateActive {
		t.Fatalf("state %q after the code, want %q", got, StateActive)
	}
	if acts := v.actions(); !slicesEqual(acts, []string{ActionRequest, ActionConfirm, ActionActivate}) {
		t.Errorf("log %v", acts)
	}

	store, err := certs.Load(certs.Options{EnrolledDir: v.e.ActiveDir()})
	if err != nil {
		t.Fatal(err)
	}
	ks := store.LookupKeys(k.Addr)
	if len(ks) != 1 || ks[0].Fingerprint != k.FPR || ks[0].Source != certs.SourceEnrollment ||
		len(ks[0].Addresses) != 1 || ks[0].Addresses[0] != k.Addr {
		t.Fatalf("the store has %v for %s, want the enrolled key bound to it; skipped %v", ks, k.Addr, store.Skipped())
	}
	// A restart reads the key back.
	v.open()
	if got := v.state(k.Addr, k.FPR); got != StateActive {
		t.Fatalf("state %q after a restart", got)
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

// TestOpenPGPAutocryptRequest: a PGP/MIME signed message whose Autocrypt
// header carries the signing key is a request for that key; with its
// signature broken, it is refused and nothing is sent.
func TestOpenPGPAutocryptRequest(t *testing.T) {
	k, g := gpgKey(t, "ac", "ac@example.test", "future-default", "default")
	content := "Content-Type: text/plain; charset=us-ascii\r\n\r\nPlease encrypt my mail.\r\n"
	req := autocryptRequest(t, g, k, content)

	v := newEnv(t)
	forged := bytes.Replace(req, []byte("Please encrypt"), []byte("Please decrypt"), 1)
	res := v.handle(k.Addr, forged)
	if !errors.Is(res.Err, ErrBadSignature) || len(res.Outgoing) != 0 {
		t.Fatalf("changed content: %v, %d messages; want ErrBadSignature and none", res.Err, len(res.Outgoing))
	}

	res = accepted(t, v.handle(k.Addr, req))
	ch := only(t, res.Outgoing, "challenge")
	if len(ch.EncryptToKeys) != 1 || ch.EncryptToKeys[0].Fingerprint != k.FPR {
		t.Fatalf("challenge encrypted to %v, want the Autocrypt key", ch.EncryptToKeys)
	}
	code := codeOf(t, readPGP(t, ch, k), "confirm")
	accepted(t, v.handle(k.Addr, codeMessage(k.Addr, "confirm "+code)))
	if got := v.state(k.Addr, k.FPR); got != StateActive {
		t.Fatalf("state %q, want active", got)
	}

	// The Autocrypt header alone, unsigned, is no request.
	unsigned := []byte(header(k.Addr) + "Subject: hi\r\nAutocrypt: addr=" + k.Addr + "; keydata=" +
		base64.StdEncoding.EncodeToString(k.Binary) + "\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
	if res := v.handle(k.Addr, unsigned); !errors.Is(res.Err, ErrUnsigned) {
		t.Fatalf("unsigned Autocrypt message: %v, want ErrUnsigned", res.Err)
	}
}

// TestOpenPGPRefusals: a key for an address not delivered here and a key
// that cannot encrypt are refused with the reason, and nothing is sent.
func TestOpenPGPRefusals(t *testing.T) {
	far, _ := gpgKey(t, "far", "someone@example.org", "future-default", "default")
	sign, _ := gpgKey(t, "signonly", "signonly@example.test", "ed25519", "sign")
	v := newEnv(t)
	for _, tc := range []struct {
		name string
		k    *pgptest.Key
		want error
		text string
	}{
		{"not delivered here", far, ErrNotDelivered, "someone@example.org"},
		{"no encryption subkey", sign, ErrUnusableCertificate, "no key is made for encryption"},
	} {
		res := v.handle(tc.k.Addr, thunderbirdRequest(tc.k.Addr, tc.k))
		if !errors.Is(res.Err, tc.want) || !strings.Contains(res.Err.Error(), tc.text) || len(res.Outgoing) != 0 {
			t.Errorf("%s: %v (%d messages), want %v saying %q and nothing sent", tc.name, res.Err, len(res.Outgoing), tc.want, tc.text)
		}
		if tc.want == ErrUnusableCertificate && !errors.Is(res.Err, certs.ErrNoEncryptionKey) {
			t.Errorf("%s: %v does not wrap certs.ErrNoEncryptionKey", tc.name, res.Err)
		}
	}
	if n := len(v.log()); n != 0 {
		t.Errorf("%d log lines, want none", n)
	}
}

// TestOpenPGPChange: a second key for an address that has one waits for
// the delay; the current holder is told, encrypted to the current key
// only, and can read its cancel code; the challenge opens only with the new
// key; after the delay the new key is active and both are told.
func TestOpenPGPChange(t *testing.T) {
	const addr = "change@example.test"
	oldKey, _ := gpgKey(t, "change-old", addr, "future-default", "default")
	newKey, _ := gpgKey(t, "change-new", addr, "future-default", "default")
	v := newEnv(t, func(o *Options) { o.ChangeDelay = 2 * time.Hour })

	res := accepted(t, v.handle(addr, thunderbirdRequest(addr, oldKey)))
	code := codeOf(t, readPGP(t, only(t, res.Outgoing, "challenge"), oldKey), "confirm")
	accepted(t, v.handle(addr, codeMessage(addr, "confirm "+code)))

	res = accepted(t, v.handle("mallory@example.net", thunderbirdRequest(addr, newKey)))
	ch := only(t, res.Outgoing, "challenge")
	if len(ch.EncryptToKeys) != 1 || ch.EncryptToKeys[0].Fingerprint != newKey.FPR {
		t.Fatalf("challenge encrypted to %v, want the new key alone", ch.EncryptToKeys)
	}
	if _, err := oldKey.Decrypt(sealFor(t, ch)); err == nil {
		t.Fatal("the current key opens the challenge for the new one")
	}
	notice := only(t, res.Outgoing, "change-notice")
	if len(notice.EncryptToKeys) != 1 || notice.EncryptToKeys[0].Fingerprint != oldKey.FPR {
		t.Fatalf("change notice encrypted to %v, want the current key alone", notice.EncryptToKeys)
	}
	if _, err := newKey.Decrypt(sealFor(t, notice)); err == nil {
		t.Fatal("the requested key opens the notice to the current holder")
	}
	text := readPGP(t, notice, oldKey)
	if !strings.Contains(text, "mallory@example.net") || !strings.Contains(text, strings.ToUpper(newKey.FPR)) {
		t.Errorf("the notice does not say who asked for which key:\n%s", text)
	}
	codeOf(t, text, "cancel")

	code = codeOf(t, readPGP(t, ch, newKey), "confirm")
	res = accepted(t, v.handle(addr, codeMessage(addr, "confirm "+code)))
	if got := v.state(addr, newKey.FPR); got != StateScheduled {
		t.Fatalf("state %q after confirmation, want %q", got, StateScheduled)
	}
	sched := only(t, res.Outgoing, "change-notice")
	if len(sched.EncryptToKeys) != 1 || sched.EncryptToKeys[0].Fingerprint != oldKey.FPR {
		t.Fatalf("scheduled notice encrypted to %v, want the current key", sched.EncryptToKeys)
	}
	readPGP(t, sched, oldKey)

	v.clock.add(time.Hour)
	if out := v.tick(); len(out) != 0 {
		t.Fatalf("%d messages before the delay ended", len(out))
	}
	if got := v.state(addr, newKey.FPR); got != StateScheduled {
		t.Fatalf("state %q before the delay ended", got)
	}
	v.clock.add(time.Hour + time.Minute)
	act := only(t, v.tick(), "activated")
	if got := v.state(addr, newKey.FPR); got != StateActive {
		t.Fatalf("state %q after the delay, want active", got)
	}
	fps := map[string]bool{}
	for _, k := range act.EncryptToKeys {
		fps[k.Fingerprint] = true
	}
	if len(fps) != 2 || !fps[oldKey.FPR] || !fps[newKey.FPR] {
		t.Fatalf("activation notice encrypted to %v, want both keys", fps)
	}
	msg := sealFor(t, act)
	for _, k := range []*pgptest.Key{oldKey, newKey} {
		if _, err := k.Decrypt(msg); err != nil {
			t.Errorf("%s cannot read the activation notice: %v", k.Name, err)
		}
	}
}

// TestOpenPGPExpiryNeverForKeysThatDoNotExpire: a key with no expiry gets
// no expiry notice (its zero end of use is "never", not year 1).
func TestOpenPGPExpiryNeverForKeysThatDoNotExpire(t *testing.T) {
	k, _ := gpgKey(t, "noexp", "noexp@example.test", "future-default", "default")
	v := newEnv(t)
	res := accepted(t, v.handle(k.Addr, thunderbirdRequest(k.Addr, k)))
	code := codeOf(t, readPGP(t, only(t, res.Outgoing, "challenge"), k), "confirm")
	accepted(t, v.handle(k.Addr, codeMessage(k.Addr, "confirm "+code)))
	v.clock.add(24 * time.Hour)
	if out := v.tick(); len(out) != 0 {
		t.Fatalf("%d messages for a key that does not expire: %s", len(out), fmt.Sprint(out[0].Purpose))
	}
}
