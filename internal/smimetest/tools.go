package smimetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// toolTimeout bounds every external command: a decryptor that waits for a
// passphrase prompt must fail the test, not hang the suite.
const toolTimeout = 3 * time.Minute

// Packages name the Debian package that provides each tool, for messages.
var toolPackages = map[string]string{
	"openssl":   "openssl",
	"gpgsm":     "gpgsm",
	"gpg-agent": "gpg-agent",
	"gpgconf":   "gpgconf",
	"certutil":  "libnss3-tools",
	"pk12util":  "libnss3-tools",
	"cmsutil":   "libnss3-tools",
}

// Require skips the test when tool is not on PATH, or fails it when the
// environment says CI=true: CI installs every tool, so a missing one there is
// a broken setup, not a reason to pass quietly.
func Require(t testing.TB, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err == nil {
		return
	}
	msg := fmt.Sprintf("%s not found in PATH", tool)
	if pkg, ok := toolPackages[tool]; ok {
		msg += fmt.Sprintf(" (apt-get install %s)", pkg)
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
		return
	}
	t.Skip(msg)
}

// run executes a command with a timeout and returns its stdout; the error
// carries stderr, which is where these tools explain themselves.
func run(env []string, stdin []byte, name string, args ...string) ([]byte, error) {
	stdout, _, err := runFull(env, stdin, name, args...)
	return stdout, err
}

// runFull is run that also returns stderr, for tools that report on it.
func runFull(env []string, stdin []byte, name string, args ...string) (_, _ []byte, _ error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}

// tempFiles writes files (name: content) into a new temporary directory,
// for the tools that read their inputs from files, and returns the
// directory and what removes it.
func tempFiles(files map[string][]byte) (dir string, remove func(), err error) {
	dir, err = os.MkdirTemp("", "smimetest")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			remove()
			return "", nil, err
		}
	}
	return dir, remove, nil
}

func writeTemp(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
