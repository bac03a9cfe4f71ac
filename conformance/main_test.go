package conformance

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

// TestMain builds the daemon once, without -race whatever the test flags
// say: it is the system under test, not the test. SMIMEFILTER_DAEMON names
// a binary to test instead (another commit's build, to compare).
func TestMain(m *testing.M) {
	if bin := os.Getenv("SMIMEFILTER_DAEMON"); bin != "" {
		daemonBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "smimefilter-conformance-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	daemonBin = filepath.Join(dir, "smimefilter")
	cmd := exec.Command("go", "build", "-o", daemonBin, "./cmd/smimefilter")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("go build ./cmd/smimefilter: %w\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
