package filter

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// TestSpoolHoldsCiphertextOnly looks at what the daemon really keeps on
// disk while a message's copies go out: with the second copy held at the
// backend, it finds the spool's unnamed file through /proc/self/fd (as an
// attacker with the disk would find its blocks) and reads it. The message
// is there, in size, and its plaintext is not, nor is its header. A message
// whose plaintext copy is made by decrypting the spool (plain@) shows that
// nothing needs a plaintext spool either.
func TestSpoolHoldsCiphertextOnly(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	bob := smimetest.NewRecipient(t, "bob@example.org")
	f := startFakeLMTP(t)
	release := make(chan struct{})
	f.rcptAnswer = func(rcpt string) error {
		if rcpt == "bob@example.org" {
			<-release
		}
		return nil
	}
	spoolDir := t.TempDir()
	rf := startFilter(t, f.path, filterOpts{cfg: Config{
		Certs:       holder(t, certDir(t, alice, bob)),
		SpoolMemory: 4096,
		SpoolDir:    spoolDir,
	}})
	const marker = "only-the-recipients-may-read-this"
	body := strings.Repeat(marker+"\r\n", 20_000)
	done := make(chan map[string]result, 1)
	go func() {
		done <- send(t, lmtpClient(t, rf.path), "s@example.net",
			[]string{"alice@example.org", "bob@example.org", "plain@example.org"}, msg("secret subject", body))
	}()

	var spooled []byte
	waitFor(t, "the spool file while bob's copy is held", 30*time.Second, func() bool {
		spooled = readSpoolFiles(t, spoolDir)
		// All but the spool's first spool.memory bytes are in the file.
		return len(spooled) >= len(body)-4096
	})
	close(release)
	got := <-done
	for _, a := range []string{"alice@example.org", "bob@example.org", "plain@example.org"} {
		if got[a].code != 250 {
			t.Errorf("%s: got %v, want 250", a, got[a])
		}
	}
	if bytes.Contains(spooled, []byte(marker)) || bytes.Contains(spooled, []byte("secret subject")) {
		t.Fatalf("the spool file holds plaintext")
	}
	if p := copyFor(t, f, "plain@example.org"); !bytes.HasSuffix(p, []byte(body)) {
		t.Errorf("the plaintext copy made from the spool lost its body")
	}
}

// readSpoolFiles returns the contents of this process's open files below
// dir (unnamed: /proc shows them as "dir/... (deleted)" or "dir/#N").
func readSpoolFiles(t *testing.T, dir string) []byte {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var out []byte
	for _, fd := range fds {
		p := filepath.Join("/proc/self/fd", fd.Name())
		target, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		if b, err := os.ReadFile(p); err == nil {
			out = append(out, b...)
		}
	}
	return out
}
