package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
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

// Helpers for the enrollment tests beyond the first enrollment
// (enroll_test.go): what arrives in a mailbox is found by its Subject,
// which stays outside the encryption, because Dovecot's file names do not
// order deliveries within one second reliably.

// The Subjects of the messages the engine sends (enroll/handle.go,
// enroll/tick.go).
const (
	subjChallenge = "Confirm your certificate for encrypted mail"
	subjRequested = "A new certificate was requested for your address"
	subjScheduled = "The change of your certificate was confirmed"
	subjConfirmed = "Your confirmation arrived"
	subjActivated = "Your mail is now encrypted to a new certificate"
	subjCancelled = "The certificate change was cancelled"
	subjExpiry    = "Your certificate for encrypted mail expires soon"
)

var cancelCode = regexp.MustCompile(`subject=cancel%20([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})`)

// enrollState is enrollTOML that also returns the state directory, for
// the tests that read its change log.
func enrollState(t *testing.T, delay string) (toml, dir string) {
	dir = filepath.Join(mailstacktest.NewDir(t, "enroll"), "state")
	mkdir(t, dir, 0o700)
	chown(t, dir, lookupUser(t, "nobody"))
	return "\n[enroll]\naddress = \"" + enrollAddr + "\"\ndir = \"" + dir + "\"\nchange_delay = \"" + delay + "\"\n", dir
}

// withSubject returns the messages in addr's mailbox whose Subject is
// subject.
func (st *stack) withSubject(addr, subject string) [][]byte {
	var out [][]byte
	for _, m := range st.messages(addr) {
		if header(m, "Subject") == subject {
			out = append(out, m)
		}
	}
	return out
}

// waitSubject waits until addr's mailbox holds n messages with that
// Subject and returns the n-th (which one is which among equal Subjects
// does not matter to the callers: they wait for each before causing the
// next).
func (st *stack) waitSubject(addr, subject string, n int) []byte {
	st.t.Helper()
	deadline := time.Now().Add(defaultLongTimeout)
	for {
		if ms := st.withSubject(addr, subject); len(ms) >= n {
			if len(ms) > n {
				st.t.Fatalf("%s has %d messages %q, want %d", addr, len(ms), subject, n)
			}
			return ms[n-1]
		}
		if time.Now().After(deadline) {
			st.t.Fatalf("%s has no message %q (#%d) after %v; subjects: %q", addr, subject, n, defaultLongTimeout, st.subjects(addr))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (st *stack) subjects(addr string) []string {
	var s []string
	for _, m := range st.messages(addr) {
		s = append(s, header(m, "Subject"))
	}
	return s
}

// sendCode sends what a click on a mailto: link of a challenge or notice
// sends: a message to the enrollment address with "verb code" as Subject.
func (st *stack) sendCode(from, verb, code string) {
	st.t.Helper()
	msg := "From: <" + from + ">\r\nTo: <" + enrollAddr + ">\r\nSubject: " + verb + " " + code + "\r\n\r\n\r\n"
	if err := st.postfix.Send(from, []string{enrollAddr}, []byte(msg)); err != nil {
		st.t.Fatalf("submitting to Postfix: %v", err)
	}
}

// mailTo sends a test message to addr and returns it as delivered, found
// by its Subject.
func (st *stack) mailTo(addr, subject string) []byte {
	st.t.Helper()
	raw, _ := testMessage(addr, subject, 0)
	st.send([]string{addr}, raw)
	return st.waitSubject(addr, subject, 1)
}

// mailUntilEncryptedTo sends test mail to addr until one arrives encrypted
// to exactly want: the certificate store picks up the active/ directory
// by its watch, a moment after the engine wrote it.
func (st *stack) mailUntilEncryptedTo(t *testing.T, addr string, want ...*smimetest.Recipient) {
	t.Helper()
	deadline := time.Now().Add(defaultLongTimeout)
	for i := 0; ; i++ {
		msg := st.mailTo(addr, fmt.Sprintf("after the change %d", i))
		got := recipientsOf(t, msg)
		if sameRecipients(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mail to %s is encrypted to %v, want %v", addr, got, names(want))
		}
	}
}

// recipientsOf lists who the envelope of a delivered message is for.
func recipientsOf(t *testing.T, msg []byte) []smimetest.RecipientInfo {
	t.Helper()
	der, err := smimetest.ExtractDER(msg)
	if err != nil {
		t.Fatalf("delivered message is not S/MIME: %v\n%s", err, lastBytes(string(msg), 2048))
	}
	ris, err := smimetest.RecipientsOf(der)
	if err != nil {
		t.Fatalf("RecipientInfos: %v", err)
	}
	return ris
}

// sameRecipients: the envelope has one RecipientInfo for each of want and
// none other.
func sameRecipients(got []smimetest.RecipientInfo, want []*smimetest.Recipient) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		n := 0
		for _, ri := range got {
			if ri.Is(w.Cert) {
				n++
			}
		}
		if n != 1 {
			return false
		}
	}
	return true
}

// requireEncryptedTo fails unless msg is encrypted to exactly want.
func requireEncryptedTo(t *testing.T, what string, msg []byte, want ...*smimetest.Recipient) {
	t.Helper()
	if got := recipientsOf(t, msg); !sameRecipients(got, want) {
		t.Fatalf("%s is encrypted to %v, want exactly %v", what, got, names(want))
	}
}

func names(rs []*smimetest.Recipient) []string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Addr+" serial "+r.Cert.SerialNumber.Text(16))
	}
	return s
}

// openText decrypts msg for r with OpenSSL and returns its text with
// quoted-printable soft line breaks joined (the engine uses QP for
// non-ASCII texts).
func openText(t *testing.T, r *smimetest.Recipient, msg []byte) string {
	t.Helper()
	return strings.ReplaceAll(string(decrypt(t, r, msg)), "=\r\n", "")
}

// codeOf returns the code of the mailto: link matched by re in text, and
// checks that it does not appear outside the encryption of msg.
func codeOf(t *testing.T, re *regexp.Regexp, text string, msg []byte) string {
	t.Helper()
	m := re.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no link %v in:\n%s", re, text)
	}
	if bytes.Contains(msg, []byte(m[1])) || bytes.Contains(msg, []byte(strings.ReplaceAll(m[1], "-", ""))) {
		t.Fatal("a code appears outside the encryption")
	}
	return m[1]
}

// requireContains fails unless text holds every one of want.
func requireContains(t *testing.T, what, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Fatalf("%s does not say %q:\n%s", what, w, text)
		}
	}
}

func fingerprintHex(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// noticeTime is how the engine's texts write a time (enroll/messages.go).
func noticeTime(t time.Time) string { return t.UTC().Format("Monday, 2 January 2006, 15:04 MST") }

// logEntry is one line of the change log (log.jsonl), read here without
// the engine's code so that its format is checked too.
type logEntry struct {
	Time        time.Time `json:"time"`
	Address     string    `json:"address"`
	Action      string    `json:"action"`
	Fingerprint string    `json:"fingerprint"`
	Requester   string    `json:"requester"`
	Outcome     string    `json:"outcome"`
}

func readChangeLog(t *testing.T, stateDir string) []logEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "log.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []logEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var le logEntry
		if err := json.Unmarshal(sc.Bytes(), &le); err != nil {
			t.Fatalf("log.jsonl line %q: %v", sc.Text(), err)
		}
		out = append(out, le)
	}
	return out
}

// logged returns the entries of the change log for addr with action and,
// when fp is not empty, that fingerprint.
func logged(t *testing.T, stateDir, addr, action, fp string) []logEntry {
	t.Helper()
	var out []logEntry
	for _, le := range readChangeLog(t, stateDir) {
		if le.Address == addr && le.Action == action && (fp == "" || le.Fingerprint == fp) {
			out = append(out, le)
		}
	}
	return out
}

// activateAt is when the confirmed change of addr to fp takes effect: the
// engine schedules it change_delay after the time of its "confirm" log line.
func activateAt(t *testing.T, stateDir, addr, fp string, delay time.Duration) time.Time {
	t.Helper()
	c := logged(t, stateDir, addr, "confirm", fp)
	if len(c) != 1 {
		t.Fatalf("%d confirm lines for %s %s in the change log, want 1: %+v", len(c), addr, fp, readChangeLog(t, stateDir))
	}
	return c[0].Time.Add(delay)
}

// certsCmd runs "smimefilter certs SUB -config ..." with the built daemon
// binary, as an administrator would beside the running daemon.
func (st *stack) certsCmd(t *testing.T, sub string) string {
	t.Helper()
	out, err := exec.Command(daemonBin, "certs", sub, "-config", st.filter.config).CombinedOutput()
	if err != nil {
		t.Fatalf("smimefilter certs %s: %v\n%s", sub, err, out)
	}
	return string(out)
}

// listed returns the line of "certs list" for addr and fp, "" if none.
func (st *stack) listed(t *testing.T, addr, fp string) string {
	t.Helper()
	for _, l := range strings.Split(st.certsCmd(t, "list"), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == addr && f[1] == fp {
			return l
		}
	}
	return ""
}

// listedState is the state "certs list" shows for an enrolled addr and
// fp (the word after the source "enrollment"), "" if it shows none.
func (st *stack) listedState(t *testing.T, addr, fp string) string {
	t.Helper()
	f := strings.Fields(st.listed(t, addr, fp))
	for i := 2; i+1 < len(f); i++ {
		if f[i] == "enrollment" {
			return f[i+1]
		}
	}
	return ""
}

// expiringRecipient is r's key with a certificate from the same CA that
// expires after validFor: smimetest has no option for a validity that
// ends soon.
func expiringRecipient(t *testing.T, r *smimetest.Recipient, validFor time.Duration) *smimetest.Recipient {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:   serial.Add(serial, big.NewInt(1)),
		Subject:        pkix.Name{CommonName: r.Addr, Organization: []string{"smimetest"}},
		NotBefore:      now.Add(-time.Hour),
		NotAfter:       now.Add(validFor),
		EmailAddresses: []string{r.Addr},
		KeyUsage:       x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.CA.Cert, r.Key.Public(), r.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &smimetest.Recipient{Addr: r.Addr, Cert: cert, Key: r.Key, KeyPEM: r.KeyPEM, CA: r.CA,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}
