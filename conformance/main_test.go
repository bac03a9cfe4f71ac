package conformance

import (
	"os"
	"testing"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
)

// daemonBin is the smimefilter binary built by TestMain.
var daemonBin string

// buildErr is why the build failed; every test then fails with it.
var buildErr error

// TestMain builds the daemon once, without -race whatever the test flags
// say: it is the system under test, not the test. SMIMEFILTER_DAEMON names
// a binary to test instead (another commit's build, to compare).
func TestMain(m *testing.M) {
	if bin := os.Getenv("SMIMEFILTER_DAEMON"); bin != "" {
		daemonBin = bin
		os.Exit(m.Run())
	}
	bin, remove, err := mailstacktest.BuildDaemon("smimefilter-conformance-bin-")
	daemonBin, buildErr = bin, err
	code := m.Run()
	remove()
	os.Exit(code)
}
