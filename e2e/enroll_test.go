package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

const enrollAddr = "keys@" + hostedDomain

var enrollCode = regexp.MustCompile(`subject=confirm%20([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})`)

// signedRequest is what a user's client sends: signed by
// `openssl smime -sign`, to the enrollment address.
func signedRequest(t *testing.T, r *smimetest.Recipient) []byte {
	t.Helper()
	dir := t.TempDir()
	cert, key := r.WriteFiles(t, dir)
	in := filepath.Join(dir, "entity")
	if err := os.WriteFile(in, []byte("Content-Type: text/plain\r\n\r\nPlease encrypt my mail.\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "smime", "-sign", "-signer", cert, "-inkey", key, "-in", in,
		"-from", r.Addr, "-to", enrollAddr, "-subject", "Encrypt my mail").Output()
	if err != nil {
		t.Fatalf("openssl smime -sign: %v", err)
	}
	return bytes.ReplaceAll(bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// enrollTOML is the [enroll] table of a stack, with a state directory the
// daemon (run as nobody) can write.
func enrollTOML(t *testing.T, delay string) string {
	state := filepath.Join(mailstacktest.NewDir(t, "enroll"), "state")
	mkdir(t, state, 0o700)
	chown(t, state, lookupUser(t, "nobody"))
	return "\n[enroll]\naddress = \"" + enrollAddr + "\"\ndir = \"" + state + "\"\nchange_delay = \"" + delay + "\"\n"
}

// TestEnrollFirstEnrollment: through the real Postfix and Dovecot, a
// signed request gets a challenge that decrypts with the requested key
// only, the code activates the certificate, and the next mail is
// encrypted to it.
func TestEnrollFirstEnrollment(t *testing.T) {
	alice := "alice@" + hostedDomain
	st := newStack(t, setup{users: []string{alice}, extraTOML: enrollTOML(t, "2s")})
	r := smimetest.NewRecipient(t, alice)
	st.send([]string{enrollAddr}, signedRequest(t, r))
	msgs := st.waitMessages(alice, 1, defaultLongTimeout)
	plain := decrypt(t, r, msgs[0])
	text := strings.ReplaceAll(string(plain), "=\r\n", "")
	m := enrollCode.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no confirmation link in the challenge:\n%s", text)
	}
	if bytes.Contains(msgs[0], []byte(m[1])) {
		t.Fatal("the code appears outside the encryption")
	}
	st.send([]string{enrollAddr}, []byte("From: <"+alice+">\r\nTo: <"+enrollAddr+">\r\nSubject: confirm "+m[1]+"\r\n\r\n\r\n"))
	st.waitMessages(alice, 2, defaultLongTimeout) // the activation notice

	// The store picks the enrolled certificate up by its watch: poll
	// with fresh mail until one is encrypted to it.
	deadline := time.Now().Add(defaultLongTimeout)
	for i := 0; ; i++ {
		raw, _ := testMessage(alice, "after enrollment", 0)
		st.send([]string{alice}, raw)
		msgs = st.waitMessages(alice, 3+i, defaultLongTimeout)
		if _, err := smimetest.DecryptMessage(t, msgs[len(msgs)-1], r); err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("mail after enrollment not encrypted to the enrolled certificate: %v", err)
			}
			break
		}
	}
}
