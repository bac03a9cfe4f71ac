package mailstacktest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildDaemon builds cmd/smimefilter into a new directory for a test
// binary's TestMain, without -race whatever the test flags say (the daemon
// is the system under test, not the test), readable by an unprivileged
// daemon user. remove deletes the directory; it is safe to call after an
// error.
func BuildDaemon(prefix string) (bin string, remove func(), err error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", func() {}, err
	}
	remove = func() { os.RemoveAll(dir) }
	bin = filepath.Join(dir, "smimefilter")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/smimefilter/smimefilter/cmd/smimefilter")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return bin, remove, fmt.Errorf("go build ./cmd/smimefilter: %w\n%s", err, out)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return bin, remove, err
	}
	return bin, remove, nil
}
