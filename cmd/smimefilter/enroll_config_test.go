package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// TestEnrollDefaults: without [enroll] enrollment is off, the state
// directory follows $STATE_DIRECTORY, and the limits are the engine's.
func TestEnrollDefaults(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/smimefilter-test:/other")
	c, err := parseConfig("t.toml", []byte("[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Enroll
	if e.Address != "" {
		t.Errorf("enroll.address = %q, want off", e.Address)
	}
	if e.Dir != "/var/lib/smimefilter-test" {
		t.Errorf("enroll.dir = %q, want $STATE_DIRECTORY's first entry", e.Dir)
	}
	o := c.enrollOptions()
	if o.ChangeDelay != 72*time.Hour || o.CodeLifetime != enroll.DefaultCodeLifetime ||
		o.MaxMessageSize != enroll.DefaultMaxMessageSize || o.MaxRequestsPerSenderPerDay != enroll.DefaultMaxRequestsPerSenderPerDay ||
		len(o.ExpiryWarnings) != 2 {
		t.Errorf("enroll options %+v, want the engine's defaults", o)
	}

	t.Setenv("STATE_DIRECTORY", "")
	c, err = parseConfig("t.toml", []byte("[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n[enroll]\naddress = \"keys@example.org\"\nexpiry_warnings = []\nchange_delay = \"2s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Enroll.Dir != "/var/lib/smimefilter" {
		t.Errorf("enroll.dir = %q, want /var/lib/smimefilter", c.Enroll.Dir)
	}
	if o := c.enrollOptions(); o.ExpiryWarnings == nil || len(o.ExpiryWarnings) != 0 || o.ChangeDelay != 2*time.Second {
		t.Errorf("expiry_warnings = [] gave %v (nil %v), change_delay %v; want none, 2s", o.ExpiryWarnings, o.ExpiryWarnings == nil, o.ChangeDelay)
	}
}

// TestEnrollBadValues: every bad [enroll] key is reported at once.
func TestEnrollBadValues(t *testing.T) {
	_, err := parseConfig("t.toml", []byte(`
[deliver]
lmtp = "/run/dovecot/lmtp"
[enroll]
address = "not an address"
dir = "relative/dir"
change_delay = "0s"
code_lifetime = "-1h"
expiry_warnings = ["-24h"]
max_message_size = 0
max_pending_per_address = 0
max_pending_total = -1
max_requests_per_sender = 0
max_requests_per_address = 0
`))
	if err == nil {
		t.Fatal("parseConfig accepted bad [enroll] values")
	}
	for _, key := range []string{"enroll.address", "enroll.dir", "enroll.change_delay", "enroll.code_lifetime",
		"enroll.expiry_warnings", "enroll.max_message_size", "enroll.max_pending_per_address", "enroll.max_pending_total",
		"enroll.max_requests_per_sender", "enroll.max_requests_per_address"} {
		if !strings.Contains(err.Error(), "t.toml:"+key+":") {
			t.Errorf("no problem reported for %s in:\n%v", key, err)
		}
	}
}

// TestCertsCommands: check and certs list show an enrolled certificate
// with its source, certs log reads the log, and cancel with nothing
// pending says so.
func TestCertsCommands(t *testing.T) {
	state := t.TempDir()
	alice := smimetest.NewRecipient(t, "alice@example.test", smimetest.AlsoFor("bob@example.test"))
	sum := sha256.Sum256(alice.Cert.Raw)
	fp := hex.EncodeToString(sum[:])
	if err := os.MkdirAll(filepath.Join(state, "active"), 0o700); err != nil {
		t.Fatal(err)
	}
	file := "Enrolled-Address: alice@example.test\nEnrolled-Kind: smime\nEnrolled-Fingerprint: " + fp +
		"\nEnrolled-At: 2026-01-01T00:00:00Z\nRequested-By: alice@example.test\nRequest: 00\n" + string(alice.CertPEM)
	if err := os.WriteFile(filepath.Join(state, "active", "alice@example.test_"+fp+".pem"), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	p := writeConfig(t, "[deliver]\nmaildir = \""+t.TempDir()+"/%u\"\n[enroll]\naddress = \"keys@example.test\"\ndir = \""+state+"\"\n")

	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitOK {
		t.Fatalf("check exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "alice@example.test  sha256:"+fp) || !strings.Contains(out.String(), "(enrollment: ") {
		t.Errorf("check does not list the enrolled certificate with its source:\n%s", out.String())
	}
	if strings.Contains(out.String(), "bob@example.test") {
		t.Errorf("check lists the enrolled certificate for bob, for whom it was not enrolled:\n%s", out.String())
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"certs", "list", "-config", p}, &out, &errb); code != exitOK {
		t.Fatalf("certs list exit %d: %s", code, errb.String())
	}
	if !regexp.MustCompile(`alice@example\.test +` + fp + ` +\S+ +enrollment +active`).MatchString(out.String()) {
		t.Errorf("certs list:\n%s\nwant alice's enrolled certificate, active", out.String())
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"certs", "log", "-config", p}, &out, &errb); code != exitOK || !strings.HasPrefix(out.String(), "TIME") {
		t.Errorf("certs log exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"certs", "cancel", "-config", p, "alice@example.test"}, &out, &errb); code != exitConfig ||
		!strings.Contains(errb.String(), "no such enrollment") {
		t.Errorf("certs cancel with nothing pending: exit %d, stderr %q; want 2 and the reason", code, errb.String())
	}
	if code := run([]string{"certs", "remove", "-config", p, "alice@example.test"}, &out, &errb); code != exitConfig {
		t.Errorf("certs remove without a fingerprint: exit %d, want 2", code)
	}
}
