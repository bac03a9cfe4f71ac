// Package mailstacktest runs real mail daemons for tests: a Dovecot 2.3 that
// accepts LMTP on a Unix socket and stores Maildirs, and a Postfix 3.7 with a
// throw-away configuration, queue and log, both under one temporary
// directory per instance and stopped when the test ends.
//
// The daemons come from Debian's packages (dovecot-core, dovecot-lmtpd,
// postfix). A test that needs one skips when its binaries are missing, unless
// CI=true, when it fails instead. Postfix must be started as root; Dovecot
// runs as root and delivers as the unprivileged user nobody (or, when the
// test does not run as root, entirely as the current user).
package mailstacktest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pollInterval is how often the Wait helpers look again.
const pollInterval = 20 * time.Millisecond

// requireBinaries skips (or fails under CI=true) when a binary is missing.
func requireBinaries(t testing.TB, names ...string) map[string]string {
	t.Helper()
	paths := make(map[string]string, len(names))
	for _, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			// The sbin directories are not always in a test's PATH.
			for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
				if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
					p, err = filepath.Join(dir, name), nil
					break
				}
			}
		}
		if err != nil {
			skipOrFail(t, "mailstack: %s not found: %v", name, err)
		}
		paths[name] = p
	}
	return paths
}

// Tool returns the path of a Postfix or Dovecot program (postmap,
// doveadm...), skipping the test (failing it under CI=true) without it.
func Tool(t testing.TB, name string) string {
	t.Helper()
	return requireBinaries(t, name)[name]
}

// skipOrFail skips the test, or fails it when CI=true: CI installs the
// daemons, so a missing one there is a broken setup, not an absent option.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (CI=true: not skipping)", args...)
	}
	t.Skipf(format, args...)
}

// NewDir makes a temporary directory that unprivileged daemons (postfix,
// dovecot, nobody) can traverse, with a short path so that Unix sockets in it
// stay under the 108-byte limit. It is removed when the test ends unless
// MAILSTACK_KEEP=1 is set. t.TempDir is 0700 and named after the test, so it
// fits neither need.
func NewDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ms-"+prefix+"-")
	if err != nil {
		t.Fatalf("mailstack: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("mailstack: %v", err)
	}
	t.Cleanup(func() {
		if os.Getenv("MAILSTACK_KEEP") == "1" {
			t.Logf("mailstack: keeping %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("mailstack: removing %s: %v", dir, err)
		}
	})
	return dir
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, as
// "127.0.0.1:PORT".
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mailstack: free port: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// tail returns the last n bytes of a file, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", path, err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return fmt.Sprintf("--- %s ---\n%s", path, b)
}

// run runs a command with its output appended to logPath and returns the
// error together with that output, so a failure message says why.
func run(logPath string, name string, args ...string) (string, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	// Daemons started by the command inherit its stdout and stderr: give
	// them the file, never a pipe, or Wait blocks until they exit.
	cmd.Stdout = f
	cmd.Stderr = f
	start, _ := f.Seek(0, 2)
	err = cmd.Run()
	if b, rerr := os.ReadFile(logPath); rerr == nil && int64(len(b)) >= start {
		out.Write(b[start:])
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// waitFor polls cond until it is true or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollInterval)
	}
}

// alive reports whether a process exists and is not a zombie. Daemons that
// detach are reparented to PID 1, which here need not reap them quickly.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "PID (comm) STATE ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}
