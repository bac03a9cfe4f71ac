package main_test

import (
	"os"
	"strings"
	"testing"
)

// TestMaxCopiesFromConfig: limits.max_copies reaches the filter. With 1,
// a second recipient with a different certificate would need a second copy
// of the message in the same transaction: 452 4.5.3, so Postfix sends it in
// the next one.
func TestMaxCopiesFromConfig(t *testing.T) {
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
	if msg := lmtpCmd(t, c, 4, "RCPT TO:<bob@example.org>"); !strings.HasPrefix(msg, "4.5.3") {
		t.Errorf("second certificate set with max_copies = 1: got %q, want 452 4.5.3", msg)
	}
	lmtpCmd(t, c, 250, "RSET")
	lmtpCmd(t, c, 221, "QUIT")
	d.stop(t)
}
