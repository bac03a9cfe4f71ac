package encrypted

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests encrypt with the real tools once per run; every test that needs
// their output shares it.

var toolDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "encrypted-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	toolDir = d
	code := m.Run()
	// The material generators stop their agents; this is for one that
	// failed half-way.
	for _, home := range []string{"gnupg", "gpgsm"} {
		if h := filepath.Join(d, home); exists(h) {
			stopAgent(h)
		}
	}
	os.RemoveAll(d)
	os.Exit(code)
}

// stopAgent ends the gpg-agent that gpg or gpgsm started for a throw-away
// home, as soon as the keys are no longer needed.
func stopAgent(home string) {
	cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	_ = cmd.Run()
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// require skips the test when tool is missing, or fails it under CI=true,
// where every tool is installed and a missing one is a broken setup.
func require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found in PATH", tool)
			}
			t.Skipf("%s not found in PATH", tool)
		}
	}
}

func run(env []string, stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = toolDir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes(), nil
}

// once caches one generator's result (or its error) for the whole run.
type once[T any] struct {
	sync.Once
	v   T
	err error
}

func (o *once[T]) get(t testing.TB, f func() (T, error)) T {
	t.Helper()
	o.Do(func() { o.v, o.err = f() })
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o.v
}

const plaintext = "Content-Type: text/plain\r\n\r\nDear Bob, the secret is 42.\r\n"

// cmsSamples holds DER/BER ContentInfos written by OpenSSL, gpgsm and NSS.
type cmsSamples map[string][]byte

var cmsOnce once[cmsSamples]

func cmsMaterial(t testing.TB) cmsSamples {
	t.Helper()
	require(t, "openssl", "gpgsm", "gpgconf", "certutil", "cmsutil")
	return cmsOnce.get(t, func() (cmsSamples, error) {
		in := filepath.Join(toolDir, "m.txt")
		if err := os.WriteFile(in, []byte(plaintext), 0o600); err != nil {
			return nil, err
		}
		steps := [][]string{
			{"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=a", "-addext",
				"subjectAltName=email:a@example.test", "-keyout", "k.pem", "-out", "c.pem", "-days", "2"},
			{"ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "eck.pem"},
			{"req", "-x509", "-key", "eck.pem", "-subj", "/CN=e", "-out", "ecc.pem", "-days", "2"},
		}
		for _, s := range steps {
			if _, err := run(nil, nil, "openssl", s...); err != nil {
				return nil, err
			}
		}
		s := cmsSamples{}
		cms := func(name string, args ...string) error {
			out, err := run(nil, nil, "openssl", append([]string{"cms", "-outform", "DER", "-in", in}, args...)...)
			s[name] = out
			return err
		}
		for _, c := range []struct {
			name string
			args []string
		}{
			{"openssl cms DER", []string{"-encrypt", "-aes256", "c.pem"}},
			{"openssl cms -stream", []string{"-encrypt", "-stream", "-aes256", "c.pem"}},
			{"openssl cms two recipients", []string{"-encrypt", "-aes256", "c.pem", "ecc.pem"}},
			{"openssl cms AES-GCM", []string{"-encrypt", "-aes-256-gcm", "c.pem"}},
			{"openssl cms AES-GCM -stream", []string{"-encrypt", "-stream", "-aes-256-gcm", "c.pem"}},
			{"openssl cms ECDH", []string{"-encrypt", "-aes128", "ecc.pem"}},
			{"openssl cms password", []string{"-encrypt", "-aes256", "-pwri_password", "secret"}},
			{"openssl cms signed-data", []string{"-sign", "-signer", "c.pem", "-inkey", "k.pem", "-nodetach"}},
			{"openssl cms signed-data -stream", []string{"-sign", "-stream", "-signer", "c.pem", "-inkey", "k.pem", "-nodetach"}},
			{"openssl cms data", []string{"-data_create"}},
		} {
			if err := cms(c.name, c.args...); err != nil {
				return nil, err
			}
		}
		// openssl smime writes a whole S/MIME message: its body, without
		// the header, is base64 with 64-character LF lines.
		msg, err := run(nil, nil, "openssl", "smime", "-encrypt", "-aes256", "-in", in, "c.pem")
		if err != nil {
			return nil, err
		}
		_, body, ok := bytes.Cut(msg, []byte("\n\n"))
		if !ok {
			return nil, fmt.Errorf("openssl smime: no header end in %q", msg)
		}
		der, err := base64.StdEncoding.DecodeString(string(bytes.ReplaceAll(body, []byte("\n"), nil)))
		if err != nil {
			return nil, fmt.Errorf("openssl smime: %w", err)
		}
		s["openssl smime"] = der

		// gpgsm (KMail, Kleopatra) in a throw-away home.
		home := filepath.Join(toolDir, "gpgsm")
		if err := os.Mkdir(home, 0o700); err != nil {
			return nil, err
		}
		env := []string{"GNUPGHOME=" + home}
		if _, err := run(env, nil, "gpgsm", "--batch", "--import", "c.pem"); err != nil {
			return nil, err
		}
		fp, err := run(nil, nil, "openssl", "x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha1")
		if err != nil {
			return nil, err
		}
		_, f, _ := strings.Cut(strings.TrimSpace(string(fp)), "=")
		if err := os.WriteFile(filepath.Join(home, "trustlist.txt"), []byte(f+" S relax\n"), 0o600); err != nil {
			return nil, err
		}
		if s["gpgsm"], err = run(env, []byte(plaintext), "gpgsm", "--batch", "--disable-crl-checks",
			"--disable-policy-checks", "-r", "a@example.test", "--encrypt"); err != nil {
			return nil, err
		}
		stopAgent(home)

		// NSS (Thunderbird, Evolution).
		db := "sql:" + filepath.Join(toolDir, "nss")
		if err := os.Mkdir(filepath.Join(toolDir, "nss"), 0o700); err != nil {
			return nil, err
		}
		for _, c := range [][]string{
			{"certutil", "-N", "-d", db, "--empty-password"},
			{"certutil", "-A", "-n", "a", "-t", ",,", "-i", "c.pem", "-d", db},
		} {
			if _, err := run(nil, nil, c[0], c[1:]...); err != nil {
				return nil, err
			}
		}
		if s["NSS cmsutil"], err = run(nil, []byte(plaintext), "cmsutil", "-E", "-r", "a@example.test", "-d", db); err != nil {
			return nil, err
		}
		return s, nil
	})
}

// pgpSamples holds armored messages written by GnuPG, LF line ends as gpg
// writes them.
type pgpSamples map[string][]byte

var pgpOnce once[pgpSamples]

func pgpMaterial(t testing.TB) pgpSamples {
	t.Helper()
	require(t, "gpg", "gpgconf")
	return pgpOnce.get(t, func() (pgpSamples, error) {
		home := filepath.Join(toolDir, "gnupg")
		if err := os.Mkdir(home, 0o700); err != nil {
			return nil, err
		}
		env := []string{"GNUPGHOME=" + home}
		gpg := func(stdin []byte, args ...string) ([]byte, error) {
			return run(env, stdin, "gpg", append([]string{"--batch", "--trust-model", "always"}, args...)...)
		}
		if _, err := gpg(nil, "--passphrase", "", "--quick-gen-key", "A <a@example.test>", "default", "default", "never"); err != nil {
			return nil, err
		}
		if _, err := gpg(nil, "--passphrase", "", "--quick-gen-key", "B <b@example.test>", "future-default", "default", "never"); err != nil {
			return nil, err
		}
		// Input of unknown size from a pipe: gpg writes partial body
		// lengths (8 KiB, then the rest); -z 0 keeps the size.
		big := make([]byte, 9000)
		for i := range big {
			big[i] = byte(i*7919 + i>>3*31)
		}
		s := pgpSamples{}
		for _, c := range []struct {
			name  string
			stdin []byte
			args  []string
		}{
			{"gpg -e", []byte(plaintext), []string{"-e", "-a", "-r", "a@example.test"}},
			{"gpg -e two recipients", []byte(plaintext), []string{"-e", "-a", "-r", "a@example.test", "-r", "b@example.test"}},
			{"gpg -e --throw-keyids", []byte(plaintext), []string{"-e", "-a", "--throw-keyids", "-r", "a@example.test"}},
			{"gpg -e partial lengths", big, []string{"-e", "-a", "-z", "0", "-r", "a@example.test"}},
			{"gpg -c", []byte(plaintext), []string{"-c", "-a", "--pinentry-mode", "loopback", "--passphrase", "x"}},
			{"gpg -e -c", []byte(plaintext), []string{"-e", "-c", "-a", "--pinentry-mode", "loopback", "--passphrase", "x", "-r", "a@example.test"}},
			{"gpg --store", []byte(plaintext), []string{"--store", "-z", "0", "-a"}},
			{"gpg --sign", []byte(plaintext), []string{"--sign", "-a", "-u", "a@example.test", "--pinentry-mode", "loopback", "--passphrase", ""}},
		} {
			out, err := gpg(c.stdin, c.args...)
			if err != nil {
				return nil, err
			}
			s[c.name] = out
		}
		stopAgent(home)
		return s, nil
	})
}

// crlf turns LF line ends into CRLF, as a mail client sends them.
func crlf(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// b64Lines is base64 in CRLF lines of n characters.
func b64Lines(b []byte, n int) []byte {
	s := base64.StdEncoding.EncodeToString(b)
	var out bytes.Buffer
	for len(s) > n {
		out.WriteString(s[:n] + "\r\n")
		s = s[n:]
	}
	out.WriteString(s + "\r\n")
	return out.Bytes()
}

var otherPGPOnce once[pgpSamples]

// otherPGPMaterial holds messages for the key of pgpMaterial written by RNP
// (the OpenPGP library inside Thunderbird) and Sequoia.
func otherPGPMaterial(t testing.TB) pgpSamples {
	t.Helper()
	pgpMaterial(t)
	require(t, "rnp", "rnpkeys", "sq")
	return otherPGPOnce.get(t, func() (pgpSamples, error) {
		env := []string{"GNUPGHOME=" + filepath.Join(toolDir, "gnupg")}
		pub, err := run(env, nil, "gpg", "--batch", "--armor", "--export", "a@example.test")
		if err != nil {
			return nil, err
		}
		pubFile := filepath.Join(toolDir, "pub.asc")
		if err := os.WriteFile(pubFile, pub, 0o600); err != nil {
			return nil, err
		}
		rnpHome := filepath.Join(toolDir, "rnp")
		if err := os.Mkdir(rnpHome, 0o700); err != nil {
			return nil, err
		}
		if _, err := run(nil, nil, "rnpkeys", "--homedir", rnpHome, "--import", pubFile); err != nil {
			return nil, err
		}
		s := pgpSamples{}
		if s["rnp"], err = run(nil, []byte(plaintext), "rnp", "--homedir", rnpHome, "-e", "-r", "a@example.test", "--armor", "--output", "-"); err != nil {
			return nil, err
		}
		if s["sq"], err = run(nil, []byte(plaintext), "sq", "encrypt", "--recipient-cert", pubFile); err != nil {
			return nil, err
		}
		return s, nil
	})
}
