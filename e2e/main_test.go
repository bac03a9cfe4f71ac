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
	"os"
	"testing"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/pgptest"
)

// daemonBin is the smimefilter binary built by TestMain.
var daemonBin string

// buildErr is why the build failed; every test then fails with it.
var buildErr error

func TestMain(m *testing.M) {
	bin, remove, err := mailstacktest.BuildDaemon("smimefilter-e2e-bin-")
	daemonBin, buildErr = bin, err
	code := m.Run()
	remove()
	pgptest.Cleanup()
	os.Exit(code)
}
