package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMaxCopiesIgnored: limits.max_copies is no longer used. A file that
// still sets it loads, the start-up log says it is ignored, and recipients
// with different certificates share one transaction even with
// max_copies = 1.
func TestMaxCopiesIgnored(t *testing.T) {
	e := newEnv(t, "socket = \"@DIR@/lmtp.sock\"")
	bob, err := makeCert("bob@example.org")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.path("certs/bob.pem"), bob, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\n[limits]\nmax_copies = 1\n")
	f.Close()
	d := e.start(t, nil)

	c := dialLMTP(t, e.path("lmtp.sock"))
	lmtpCmd(t, c, 250, "LHLO test.example")
	lmtpCmd(t, c, 250, "MAIL FROM:<sender@example.net>")
	lmtpCmd(t, c, 250, "RCPT TO:<%s>", testRcpt)
	lmtpCmd(t, c, 250, "RCPT TO:<bob@example.org>")
	lmtpCmd(t, c, 354, "DATA")
	w := c.DotWriter()
	fmt.Fprintf(w, "From: sender@example.net\r\nTo: %s, bob@example.org\r\nSubject: two sets\r\n\r\ntwo certificate sets\r\n", testRcpt)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{testRcpt, "bob@example.org"} {
		if _, msg, err := c.ReadResponse(250); err != nil {
			t.Errorf("DATA reply for %s: got %v (%s), want 250", rcpt, err, msg)
		}
	}
	lmtpCmd(t, c, 221, "QUIT")
	e.wantEncryptedMail(t, "two certificate sets")
	if files, err := os.ReadDir(filepath.Join(e.maildir, "example.org", "bob", "new")); err != nil || len(files) != 1 {
		t.Errorf("bob's Maildir: got %d messages (%v), want 1", len(files), err)
	}
	if log := e.logText(t); !strings.Contains(log, "limits.max_copies: no longer used") {
		t.Errorf("start-up log does not say limits.max_copies is ignored:\n%s", log)
	}
	d.stop(t)
}

// TestSpoolDirectory: the daemon spools in a private directory (0700) it
// makes in spool.dir, else in $CACHE_DIRECTORY (systemd's
// RuntimeDirectory=), and removes at exit.
func TestSpoolDirectory(t *testing.T) {
	tests := []struct {
		name     string
		spoolDir bool // set spool.dir
		runtime  bool // set CACHE_DIRECTORY
	}{
		{name: "CACHE_DIRECTORY", runtime: true},
		{name: "spool.dir wins", spoolDir: true, runtime: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, "socket = \"@DIR@/lmtp.sock\"")
			runtimeDir, configured := e.path("runtime"), e.path("spool")
			for _, d := range []string{runtimeDir, configured} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			want := runtimeDir
			if tt.spoolDir {
				want = configured
				f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(f, "\n[spool]\ndir = %q\nmemory = 65536\n", configured)
				f.Close()
			}
			var env []string
			if tt.runtime {
				env = append(env, "CACHE_DIRECTORY="+runtimeDir)
			}
			d := e.start(t, nil, env...)
			// Serving: the spool directory exists by now.
			lmtpCmd(t, dialLMTP(t, e.path("lmtp.sock")), 221, "QUIT")

			made, _ := filepath.Glob(filepath.Join(want, "smimefilter-spool-*"))
			if len(made) != 1 {
				t.Fatalf("spool directories in %s: got %q, want one", want, made)
			}
			if st, err := os.Stat(made[0]); err != nil || st.Mode().Perm() != 0o700 {
				t.Errorf("spool directory mode: got %v (%v), want 0700", st.Mode().Perm(), err)
			}
			for _, other := range []string{runtimeDir, configured} {
				if other == want {
					continue
				}
				if stray, _ := filepath.Glob(filepath.Join(other, "smimefilter-spool-*")); len(stray) > 0 {
					t.Errorf("spool directory in %s too: %q", other, stray)
				}
			}
			d.stop(t)
			if _, err := os.Stat(made[0]); !os.IsNotExist(err) {
				t.Errorf("spool directory after exit: got %v, want it removed", err)
			}
		})
	}
}
