package filter

import (
	"bytes"
	"context"
	"crypto/x509"
	"mime/quotedprintable"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// TestMain stops the gpg-agents that the OpenPGP enrollment test's GnuPG
// home started.
func TestMain(m *testing.M) {
	code := m.Run()
	pgptest.Cleanup()
	os.Exit(code)
}

// attachKeyRequest is Thunderbird's "Attach My Public Key" on an unsigned
// message to the enrollment address.
func attachKeyRequest(k *pgptest.Key) []byte {
	var q bytes.Buffer
	w := quotedprintable.NewWriter(&q)
	w.Write(k.Armored)
	w.Close()
	msg := "From: <" + k.Addr + ">\r\nTo: <" + testEnrollAddr + ">\r\nSubject: Encrypt my mail\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"------------tb42\"\r\n\r\n" +
		"--------------tb42\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nPlease encrypt my mail.\r\n\r\n" +
		"--------------tb42\r\nContent-Type: application/pgp-keys; name=\"OpenPGP_0x" + strings.ToUpper(k.FPR[24:]) + ".asc\"\r\n" +
		"Content-Disposition: attachment\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		strings.ReplaceAll(strings.ReplaceAll(q.String(), "\r\n", "\n"), "\n", "\r\n") + "\r\n--------------tb42--\r\n"
	return []byte(msg)
}

var pgpMIMEType = regexp.MustCompile(`(?i)Content-Type: multipart/encrypted;[^\r\n]*(\r\n[ \t][^\r\n]*)*protocol="application/pgp-encrypted"`)

// pgpOnlyTo fails unless data is PGP/MIME (RFC 3156 §4) with one key
// packet, for k's encryption subkey.
func pgpOnlyTo(t *testing.T, data []byte, k *pgptest.Key) {
	t.Helper()
	if !pgpMIMEType.Match(data) {
		t.Fatalf("not PGP/MIME:\n%.600s", data)
	}
	sub := k.Subkeys[len(k.Subkeys)-1]
	ps := pgptest.KeyPackets(t, data)
	if len(ps) != 1 || ps[0].KeyID != sub[len(sub)-16:] {
		t.Fatalf("key packets %v, want one for %s's subkey %s", ps, k.Addr, sub[len(sub)-16:])
	}
}

// TestEnrollOpenPGPEndToEnd: over real sockets, a request with an attached
// gpg key gets a challenge that the fake Dovecot stores as PGP/MIME
// encrypted to that key alone, which gpg opens; its code activates the key,
// and the next mail to the address is stored PGP/MIME to it.
func TestEnrollOpenPGPEndToEnd(t *testing.T) {
	pgptest.Require(t, "gpg", "gpg-agent")
	g, err := pgptest.NewGnuPG("filter-enroll")
	if err != nil {
		t.Fatal(err)
	}
	const addr = "pgp-alice@example.test"
	if _, err := g.Run("--quick-gen-key", "Alice <"+addr+">", "future-default", "default", "never"); err != nil {
		t.Fatalf("gpg --quick-gen-key: %v", err)
	}
	k, err := g.Export("alice", addr)
	if err != nil {
		t.Fatal(err)
	}

	rig := newEnrollRig(t)
	cl := lmtpClient(t, rig.rf.path)
	if got := send(t, cl, addr, []string{testEnrollAddr}, attachKeyRequest(k)); got[testEnrollAddr].code != 250 {
		t.Fatalf("request reply %v, want 250", got)
	}
	msgs := rig.lmtp.messages()
	if len(msgs) != 1 || len(msgs[0].rcpts) != 1 || msgs[0].rcpts[0] != addr {
		t.Fatalf("%d messages delivered, want the challenge to %s alone", len(msgs), addr)
	}
	challenge := msgs[0].data
	if msgs[0].from != "" {
		t.Errorf("challenge sent from <%s>, want the null sender", msgs[0].from)
	}
	pgpOnlyTo(t, challenge, k)
	plain, err := k.Decrypt(challenge)
	if err != nil {
		t.Fatalf("gpg cannot decrypt the challenge: %v", err)
	}
	text := strings.ReplaceAll(string(plain), "=\r\n", "")
	m := confirmLink.FindStringSubmatch(text)
	if m == nil || m[1] != "confirm" {
		t.Fatalf("no confirm link in:\n%s", text)
	}
	code := m[2]
	if bytes.Contains(challenge, []byte(code)) {
		t.Fatal("the code appears outside the encryption")
	}

	n := len(rig.lmtp.messages())
	if got := send(t, cl, addr, []string{testEnrollAddr}, codeMsg(addr, "confirm "+code)); got[testEnrollAddr].code != 250 {
		t.Fatalf("confirmation reply %v, want 250", got)
	}
	// The activation notice, to the new key.
	for _, m := range rig.lmtp.messages()[n:] {
		pgpOnlyTo(t, m.data, k)
	}
	if err := rig.holder.Reload(); err != nil {
		t.Fatal(err)
	}
	if ks := rig.holder.Current().LookupKeys(addr); len(ks) != 1 || ks[0].Fingerprint != k.FPR || ks[0].Source != certs.SourceEnrollment {
		t.Fatalf("after confirmation the store has %v for %s, want the enrolled key", ks, addr)
	}

	n = len(rig.lmtp.messages())
	if got := send(t, cl, "carol@example.net", []string{addr}, msg("secret", "for alice only\r\n")); got[addr].code != 250 {
		t.Fatalf("mail to %s: %v", addr, got)
	}
	var stored []byte
	for _, m := range rig.lmtp.messages()[n:] {
		if len(m.rcpts) == 1 && m.rcpts[0] == addr && bytes.Contains(m.data, []byte("Subject: secret")) {
			stored = m.data
		}
	}
	if stored == nil {
		t.Fatal("mail to alice not delivered")
	}
	pgpOnlyTo(t, stored, k)
	if plain, err := k.Decrypt(stored); err != nil || !bytes.Contains(plain, []byte("for alice only")) {
		t.Fatalf("mail to alice does not decrypt with her key: %v", err)
	}
}

// TestDeliverEnrollmentBothFormats: a notice to a holder with a
// certificate and an OpenPGP key goes out once as S/MIME to the
// certificate and once as PGP/MIME to the key, each opening with its own
// key only.
func TestDeliverEnrollmentBothFormats(t *testing.T) {
	rig := newEnrollRig(t)
	r := smimetest.NewRecipient(t, "both@example.test")
	u := newPGPUser(t, "both@example.test")
	e, err := certs.ReadKey(u.public)
	if err != nil {
		t.Fatal(err)
	}
	o := enroll.Outgoing{To: r.Addr, EncryptTo: []*x509.Certificate{r.Cert}, EncryptToKeys: []*certs.Key{certs.NewKey(e)},
		Entity: codeMsg(testEnrollAddr, "notice"), Purpose: "change-notice"}
	if _, err := rig.rf.be.DeliverEnrollment(context.Background(), []enroll.Outgoing{o}); err != nil {
		t.Fatal(err)
	}
	msgs := rig.lmtp.messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages delivered, want one per format", len(msgs))
	}
	encryptedOnlyTo(t, msgs[0].data, r)
	if !pgpMIMEType.Match(msgs[1].data) {
		t.Fatalf("second message is not PGP/MIME:\n%.400s", msgs[1].data)
	}
	if entity, ids := pgpOpen(t, msgs[1].data, u); len(ids) != 1 || !bytes.Contains(entity, []byte("Content-Type")) {
		t.Fatalf("PGP/MIME copy: %d key packets, entity %q", len(ids), entity)
	}
}
