// Package e2e runs smimefilter between a real Postfix 3.7 and a real
// Dovecot 2.3 (internal/mailstacktest), configured with the snippets in
// contrib/postfix and contrib/dovecot loaded verbatim (only paths, the
// re-injection port and the service user are replaced), and checks what
// lands in the Maildirs and what Postfix logs: delivered, deferred, bounced.
//
// TestMain builds the daemon once (without -race: it is the system under
// test, not the test). The tests need root, postfix, dovecot-core,
// dovecot-lmtpd and openssl; without them they skip, or fail under CI=true.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// daemonBin is the smimefilter binary built by TestMain.
var daemonBin string

// buildErr is why the build failed; every test then fails with it.
var buildErr error

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "smimefilter-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	daemonBin = filepath.Join(dir, "smimefilter")
	cmd := exec.Command("go", "build", "-o", daemonBin, "./cmd/smimefilter")
	cmd.Dir = ".."
	// The daemon is built without -race whatever the test flags say.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build ./cmd/smimefilter: %v\n%s", err, out)
	}
	// Everything under dir is readable by the unprivileged daemon user.
	os.Chmod(dir, 0o755)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
