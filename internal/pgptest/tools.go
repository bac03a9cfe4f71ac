package pgptest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// toolTimeout bounds every external command: a tool waiting for a
// passphrase or a pinentry must fail the test, not hang the suite.
const toolTimeout = 3 * time.Minute

// toolPackages name the Debian package that provides each tool, for the
// message of a skipped test.
var toolPackages = map[string]string{
	"gpg":               "gpg",
	"gpg-agent":         "gpg-agent",
	"gpgconf":           "gpgconf",
	"gpg-connect-agent": "gpgconf",
	"sq":                "sq",
	"rnp":               "rnp",
	"rnpkeys":           "rnp",
}

// Require skips the test when a tool is not on PATH, or fails it when the
// environment says CI=true: CI installs every tool, so a missing one there
// is a broken setup, not a reason to pass quietly. It is the rule of
// smimetest.Require.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err == nil {
			continue
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
		return
	}
}

// The kit's state lives for the test binary: one scratch directory that
// holds every home and key file, made on first use, and the GnuPG homes
// whose agents Cleanup stops.
var (
	mu         sync.Mutex
	scratchDir string
	homes      []string
)

// Dir returns the scratch directory of the test binary, made on first use.
// Cleanup removes it.
func Dir() (string, error) { return scratch() }

func scratch() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if scratchDir == "" {
		d, err := os.MkdirTemp("", "pgptest")
		if err != nil {
			return "", fmt.Errorf("pgptest: scratch directory: %w", err)
		}
		scratchDir = d
	}
	return scratchDir, nil
}

// subdir makes a fresh directory, named after name, in the scratch
// directory.
func subdir(name string) (string, error) {
	dir, err := scratch()
	if err != nil {
		return "", err
	}
	// A fresh directory each call, named after name: a test that makes
	// its own key runs again under go test -count.
	d, err := os.MkdirTemp(dir, name+"-")
	if err != nil {
		return "", fmt.Errorf("pgptest: %w", err)
	}
	return d, nil
}

// addHome records a GnuPG home for Cleanup.
func addHome(home string) {
	mu.Lock()
	defer mu.Unlock()
	homes = append(homes, home)
}

// Cleanup stops the gpg-agent of every GnuPG home the kit made (gpg starts
// one per home on first use of a secret key and leaves it running) and
// removes the scratch directory, if the tests made one. A TestMain calls it
// after m.Run; the keys made so far are gone afterwards.
func Cleanup() {
	mu.Lock()
	dir, hs := scratchDir, homes
	scratchDir, homes = "", nil
	mu.Unlock()
	for _, home := range hs {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = cmd.Run() // no agent running, or no gpgconf: nothing to stop
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// run executes a tool with extra environment and optional input, with a
// timeout, and returns its stdout; the error carries stderr, which is where
// these tools explain themselves.
func run(env []string, stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// withFile writes data to a fresh file in the scratch directory for the
// duration of f: the tools read messages from files. Safe for parallel use.
func withFile(data []byte, f func(path string) ([]byte, error)) ([]byte, error) {
	dir, err := scratch()
	if err != nil {
		return nil, err
	}
	file, err := os.CreateTemp(dir, "msg-*.asc")
	if err != nil {
		return nil, fmt.Errorf("pgptest: %w", err)
	}
	defer os.Remove(file.Name())
	_, err = file.Write(data)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("pgptest: %w", err)
	}
	return f(file.Name())
}
