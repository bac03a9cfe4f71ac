package e2e

import (
	"bytes"
	"mime/quotedprintable"
	"strings"
	"testing"

	"github.com/smimefilter/smimefilter/internal/pgptest"
)

// TestEnrollOpenPGPChange: through the real Postfix and Dovecot, a user
// whose mail is encrypted to an OpenPGP key the administrator put into
// certs.dir (made by GnuPG) asks, as Thunderbird's "Attach My Public Key"
// does, for a new key (made by Sequoia). The challenge is PGP/MIME and
// opens with the new key only; the current key gets the notice that a new
// key was requested, with the new fingerprint: the daemon tells the engine
// about the keys of certs.dir, so the change is not taken for a first
// enrollment that needs no notice.
func TestEnrollOpenPGPChange(t *testing.T) {
	t.Parallel()
	pgptest.Require(t, "gpg", "gpg-agent", "sq")
	bob := "bob@" + hostedDomain
	g, err := pgptest.NewGnuPG("e2e-enroll-gnupg")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Run("--quick-gen-key", "Bob <"+bob+">", "future-default", "default", "never"); err != nil {
		t.Fatal(err)
	}
	current, err := g.Export("e2e-enroll-gnupg", bob)
	if err != nil {
		t.Fatal(err)
	}
	next, err := pgptest.NewSqKey("e2e-enroll-sq", "Bob <"+bob+">")
	if err != nil {
		t.Fatal(err)
	}
	st := newStack(t, setup{users: []string{bob}, pgpKeys: map[string][]byte{bob: current.Armored}, extraTOML: enrollTOML(t, "1h")})

	var qp bytes.Buffer
	w := quotedprintable.NewWriter(&qp)
	w.Write(next.Armored)
	w.Close()
	req := "From: Bob <" + bob + ">\r\nTo: <" + enrollAddr + ">\r\nSubject: my new key\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"tb\"\r\n\r\n" +
		"--tb\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nPlease encrypt my mail.\r\n" +
		"--tb\r\nContent-Type: application/pgp-keys; name=\"OpenPGP_0x" + strings.ToUpper(next.FPR[24:]) + ".asc\"\r\n" +
		"Content-Disposition: attachment\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		strings.ReplaceAll(qp.String(), "\n", "\r\n") + "\r\n--tb--\r\n"
	st.send([]string{enrollAddr}, []byte(req))

	challenge := st.waitSubject(bob, "Confirm your OpenPGP key for encrypted mail", 1)
	text, err := next.Decrypt(challenge)
	if err != nil {
		t.Fatalf("the new key (Sequoia) cannot open the challenge: %v", err)
	}
	if enrollCode.FindSubmatch(bytes.ReplaceAll(text, []byte("=\r\n"), nil)) == nil {
		t.Errorf("no confirmation link in the challenge:\n%s", text)
	}
	if _, err := current.Decrypt(challenge); err == nil {
		t.Error("the current key opens the challenge: it must go to the requested key only")
	}
	notice := st.waitSubject(bob, "A new OpenPGP key was requested for your address", 1)
	ntext, err := current.Decrypt(notice)
	if err != nil {
		t.Fatalf("the current key (GnuPG) cannot open the notice: %v", err)
	}
	if !bytes.Contains(bytes.ToLower(ntext), []byte(next.FPR)) {
		t.Errorf("the notice does not name the new key %s:\n%s", next.FPR, ntext)
	}
}
