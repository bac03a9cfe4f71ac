package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "smimefilter.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckGoodConfig(t *testing.T) {
	p := writeConfig(t, `
[listen]
socket = "/run/smimefilter/lmtp.sock"
mode = "0660"

[deliver]
lmtp = "/run/dovecot/lmtp"
max_idle = 2
idle_timeout = "5s"

[[rewrite]]
match   = '^(.*)@old\.example$'
replace = '$1@example.org'

[policy]
missing_certificate = "plaintext"
[policy.domains]
"Example.NET" = "reject"
`)
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitOK {
		t.Fatalf("check exit %d, stderr:\n%s", code, errb.String())
	}
	for _, want := range []string{`lmtp = "/run/dovecot/lmtp"`, `idle_timeout = "5s"`, `max_transactions = 100`, `match = "^(.*)@old\\.example$"`, `missing_certificate = "plaintext"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("effective settings lack %q:\n%s", want, out.String())
		}
	}
}

func TestCheckReportsEveryProblem(t *testing.T) {
	p := writeConfig(t, `
[listen]
socket = "relative.sock"
mode = "999"
colour = "blue"

[limits]
max_line_length = 80

[deliver]
maildir = "/var/mail/%x"
max_idle = 99
max_connections = 4

[[rewrite]]
match = '('
replace = ''

[policy]
missing_certificate = "maybe"
key_transport = "rot13"
prefer = "gpg"

[log]
level = "chatty"

[spool]
memory = 4096
`)
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitConfig {
		t.Fatalf("check exit %d, want %d", code, exitConfig)
	}
	msg := errb.String()
	for _, want := range []string{
		p + ":listen.colour: unknown key",
		p + ":listen.socket:",
		p + ":listen.mode:",
		p + ":limits.max_line_length:",
		p + ":deliver.maildir:",
		p + ":deliver.max_idle:",
		p + ":spool.memory:",
		p + ":rewrite: rule 1",
		p + ":policy.missing_certificate:",
		p + ":policy.key_transport:",
		p + ":policy.prefer:",
		p + ":log.level:",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("problems lack %q; got:\n%s", want, msg)
		}
	}
}

func TestCheckSyntaxError(t *testing.T) {
	p := writeConfig(t, "[listen\nsocket = 1\n")
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitConfig {
		t.Fatalf("exit %d, want 2", code)
	}
	if !strings.HasPrefix(errb.String(), p+":2: ") {
		t.Errorf("got %q, want it to start with %s:2:", errb.String(), p)
	}
}

func TestCheckMissingFile(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", "/nonexistent/smimefilter.toml"}, &out, &errb); code != exitConfig {
		t.Fatalf("exit %d, want 2", code)
	}
}

func TestDeliverRequired(t *testing.T) {
	_, err := parseConfig("x.toml", []byte("[listen]\naddress = \"127.0.0.1:1\"\n"))
	if err == nil || !strings.Contains(err.Error(), "x.toml:deliver: set lmtp") {
		t.Errorf("got %v, want a deliver problem", err)
	}
}

func TestCommandLine(t *testing.T) {
	commands := []string{"smimefilter [run] [-config FILE]", "smimefilter check [-config FILE]", "smimefilter demo [-dir DIR] [-address HOST:PORT]", "smimefilter certs list [-config FILE]", "smimefilter certs log [-config FILE]", "smimefilter certs remove [-config FILE] ADDRESS FINGERPRINT", "smimefilter certs cancel [-config FILE] ADDRESS", "smimefilter version", "smimefilter help"}
	tests := []struct {
		args       []string
		code       int
		stdout     []string // each must appear
		stderr     []string
		emptyOut   bool
		emptyError bool
	}{
		{args: []string{"-h"}, stdout: commands, emptyError: true},
		{args: []string{"-help"}, stdout: commands, emptyError: true},
		{args: []string{"--help"}, stdout: commands, emptyError: true},
		{args: []string{"help"}, stdout: commands, emptyError: true},
		{args: []string{"run", "-h"}, stdout: commands, emptyError: true},
		{args: []string{"check", "--help"}, stdout: commands, emptyError: true},
		{args: []string{"demo", "-h"}, stdout: commands, emptyError: true},
		{args: []string{"version"}, stdout: []string{"smimefilter "}, emptyError: true},
		{args: []string{"--version"}, stdout: []string{"smimefilter "}, emptyError: true},
		{args: []string{"-version"}, stdout: []string{"smimefilter "}, emptyError: true},
		{args: []string{"frobnicate"}, code: exitConfig, stderr: append([]string{`unknown command "frobnicate"`}, commands...), emptyOut: true},
		{args: []string{"-frobnicate"}, code: exitConfig, stderr: append([]string{"flag provided but not defined: -frobnicate"}, commands...), emptyOut: true},
		{args: []string{"check", "-config"}, code: exitConfig, stderr: []string{"flag needs an argument: -config"}, emptyOut: true},
		{args: []string{"check", "extra"}, code: exitConfig, stderr: []string{`unexpected argument "extra"`}, emptyOut: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != tt.code {
				t.Errorf("exit status: got %d, want %d", code, tt.code)
			}
			for _, want := range tt.stdout {
				if !strings.Contains(out.String(), want) {
					t.Errorf("stdout: got %q, want it to contain %q", out.String(), want)
				}
			}
			for _, want := range tt.stderr {
				if !strings.Contains(errb.String(), want) {
					t.Errorf("stderr: got %q, want it to contain %q", errb.String(), want)
				}
			}
			if tt.emptyOut && out.Len() > 0 {
				t.Errorf("stdout: got %q, want nothing", out.String())
			}
			if tt.emptyError && errb.Len() > 0 {
				t.Errorf("stderr: got %q, want nothing", errb.String())
			}
		})
	}
}

// TestUnknownKeys: each unknown key or table is one problem, with the
// nearest known key when there is one that close.
func TestUnknownKeys(t *testing.T) {
	base := "[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n"
	tests := []struct {
		name string
		toml string
		want []string // the problems, without "FILE:"
	}{
		{"misspelled key", base + "max_conections = 3\n",
			[]string{"deliver.max_conections: unknown key (did you mean deliver.max_connections?)"}},
		{"key in the wrong table", "[listen]\nmax_message_size = 1\n" + base,
			[]string{"listen.max_message_size: unknown key (did you mean limits.max_message_size?)"}},
		{"key outside its table", "socket = \"/run/x.sock\"\n" + base,
			[]string{"socket: unknown key (did you mean listen.socket?)"}},
		{"misspelled table, reported once", base + "[delivr]\nmax_idle = 1\nmax_transactions = 2\nidle_timeout = \"1s\"\n",
			[]string{"delivr: unknown table (did you mean deliver?)"}},
		{"empty misspelled table", base + "[lisen]\n",
			[]string{"lisen: unknown table (did you mean listen?)"}},
		{"misspelled array of tables", base + "[[rewrit]]\nmatch = 'a'\nreplace = 'b'\n[[rewrit]]\nmatch = 'c'\nreplace = 'd'\n",
			[]string{"rewrit: unknown table (did you mean rewrite?)"}},
		{"key of a rule", base + "[[rewrite]]\nmatchh = 'a'\nreplace = 'b'\n",
			[]string{"rewrite.matchh: unknown key (did you mean rewrite.match?)"}},
		{"unknown dotted key", base + "x.y = 1\nx.z = 2\n",
			[]string{"deliver.x: unknown table"}},
		{"nothing near", base + "[weather]\ncolour = \"blue\"\n",
			[]string{"weather: unknown table"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig("x.toml", []byte(tt.toml))
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *configError", err)
			}
			if !slices.Equal(ce.problems, tt.want) {
				t.Errorf("got %q, want %q", ce.problems, tt.want)
			}
		})
	}
}

// TestMaxCopiesNoLongerUsed: older files still load; check says the key
// is ignored, and exits 0.
func TestMaxCopiesNoLongerUsed(t *testing.T) {
	p := writeConfig(t, "[limits]\nmax_copies = 1\n[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n")
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitOK {
		t.Fatalf("check exit %d, want 0; stderr:\n%s", code, errb.String())
	}
	if want := p + ":limits.max_copies: no longer used and ignored"; !strings.HasPrefix(errb.String(), want) {
		t.Errorf("stderr: got %q, want it to start with %q", errb.String(), want)
	}
	if strings.Contains(out.String(), "max_copies") {
		t.Errorf("effective settings show max_copies:\n%s", out.String())
	}
}

func TestSpoolSettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	tests := []struct {
		spool   string
		problem string // "" for none
	}{
		{"", ""},
		{"dir = \"" + dir + "\"\nmemory = 65536", ""},
		{"memory = 65535", "spool.memory: must be at least 65536, got 65535"},
		{"memory = -1", "spool.memory: must be at least 65536, got -1"},
		{"dir = \"spool\"", `spool.dir: "spool" is not an absolute path`},
		{"dir = \"" + file + "\"", "spool.dir: " + file + " is not a directory"},
		{"dir = \"" + dir + "/missing\"", "spool.dir: stat " + dir + "/missing: no such file or directory"},
		{"size = 1", "spool.size: unknown key"},
	}
	for _, tt := range tests {
		t.Run(tt.spool, func(t *testing.T) {
			c, err := parseConfig("x.toml", []byte("[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n[spool]\n"+tt.spool+"\n"))
			switch {
			case tt.problem == "" && err != nil:
				t.Errorf("got %v, want no problem", err)
			case tt.problem == "" && c.Spool.Memory < 65536:
				t.Errorf("spool.memory: got %d, want at least 65536", c.Spool.Memory)
			case tt.problem != "" && (err == nil || !strings.HasPrefix(err.Error(), "x.toml:"+tt.problem)):
				t.Errorf("got %v, want x.toml:%s", err, tt.problem)
			}
		})
	}
}

func TestListenUnixReplacesStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lmtp.sock")
	// A socket file left by a crash: bound, then the process went away
	// without unlinking it.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l2, err := listenUnix(path, 0o660, -1)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("mode = %v (%v), want 0660", st.Mode().Perm(), err)
	}
	// A live socket is never stolen.
	if _, err := listenUnix(path, 0o660, -1); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second listener on a live socket: %v, want an 'in use' error", err)
	}
	// Nor is a regular file replaced.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	if _, err := listenUnix(file, 0o660, -1); err == nil {
		t.Error("listenUnix replaced a regular file")
	}
}

func TestListenUnixGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lmtp.sock")
	// Group 0 exists everywhere; a real install uses postfix.
	l, err := listenUnix(path, 0o640, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
}

func TestDemoConfigIsValid(t *testing.T) {
	dir := t.TempDir()
	p, err := writeDemo(dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitOK {
		t.Fatalf("demo config fails check: %s", errb.String())
	}
	if !strings.Contains(out.String(), "demo@example.test") || !strings.Contains(out.String(), "certificates loaded: 1") {
		t.Errorf("check does not list the demo certificate:\n%s", out.String())
	}
}

func TestCheckListsCertificates(t *testing.T) {
	dir := t.TempDir()
	good := smimetest.NewRecipient(t, "alice@example.org")
	expired := smimetest.NewRecipient(t, "old@example.org", smimetest.Expired())
	os.WriteFile(filepath.Join(dir, "alice.pem"), good.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "old.pem"), expired.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "broken.pem"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	// One that expires in ten days, self-signed for brevity.
	key, _ := good.Key.(*rsa.PrivateKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "soon"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		EmailAddresses: []string{"soon@example.org"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "soon.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	// OpenPGP keys beside them: one that never expires, one in twenty days.
	bob := writePGPKey(t, dir, "bob.asc", "bob@example.org", 0)
	writePGPKey(t, dir, "later.asc", "later@example.org", 20*24*time.Hour)

	p := writeConfig(t, "[listen]\naddress = \"127.0.0.1:10024\"\n[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n[certs]\ndir = \""+dir+"\"\n")
	var out, errb bytes.Buffer
	if code := run([]string{"check", "-config", p}, &out, &errb); code != exitOK {
		t.Fatalf("check exit %d: %s", code, errb.String())
	}
	o := out.String()
	sum := sha256.Sum256(good.Cert.Raw)
	for _, want := range []string{
		"certificates loaded: 2",
		"alice@example.org  sha256:" + hex.EncodeToString(sum[:]) + "  expires " + good.Cert.NotAfter.UTC().Format(time.RFC3339),
		"soon@example.org",
		"expiring within 30 days: 2",
		"(in 9 days)",
		"OpenPGP keys loaded: 2",
		"bob@example.org  openpgp:" + bob + "  expires never",
		"later@example.org  openpgp:",
		"(in 19 days)",
		"old.pem",
		"broken.pem",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("check output lacks %q:\n%s", want, o)
		}
	}
	if !strings.Contains(o, "expired") {
		t.Errorf("the expired certificate's reason is not given:\n%s", o)
	}
}

// writePGPKey writes an armored OpenPGP public key for addr into dir and
// returns its fingerprint; lifetime 0 never expires.
func writePGPKey(t *testing.T, dir, name, addr string, lifetime time.Duration) string {
	t.Helper()
	e, err := openpgp.NewEntity("", "", addr, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, KeyLifetimeSecs: uint32(lifetime / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(e.PrimaryKey.Fingerprint)
}
