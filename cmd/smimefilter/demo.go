package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

const demoAddress = "demo@example.test"

// cmdDemo runs the daemon on an embedded default: Maildir delivery under a
// directory of its own and a demo certificate made on first start. It needs
// neither Postfix nor Dovecot; the private key is written beside it for the
// person trying it out, and the daemon never reads it.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	dir := fs.String("dir", "smimefilter-demo", "directory for the demo certificate, config and Maildir")
	addr := fs.String("address", "127.0.0.1:10024", "TCP address to listen on")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	cfgPath, err := writeDemo(abs, *addr)
	if err != nil {
		fmt.Fprintln(stderr, "smimefilter demo:", err)
		return exitFailure
	}
	c, err := loadConfig(cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitConfig
	}
	if err := endWithParent(); err != nil {
		fmt.Fprintln(stderr, "smimefilter demo:", err)
		return exitFailure
	}
	return serve(c, stderr, func(a net.Addr) {
		fmt.Fprintf(stdout, `smimefilter demo: listening for LMTP on %[1]s, delivering to %[2]s/Maildir
Certificate for %[3]s: %[2]s/certs/demo.pem (its key, for you only: %[2]s/demo-key.pem)
Config in use: %[4]s

Send a message (any LMTP client; with swaks):
  swaks --protocol LMTP --server %[1]s --to %[3]s
Decrypt what arrived:
  f=$(ls %[2]s/Maildir/example.test/demo/new/* | head -1)
  openssl cms -decrypt -in "$f" -inkey %[2]s/demo-key.pem -recip %[2]s/certs/demo.pem
Stop with Ctrl-C.
`, a, abs, demoAddress, cfgPath)
	})
}

// endWithParent has the kernel send SIGTERM, the clean shutdown, when the
// parent process ends (prctl(2) PR_SET_PDEATHSIG). "go run" does not pass
// SIGTERM on to the program it started: without this, killing it would
// leave the demo running, holding its port and the private key's directory
// with nobody left to stop it.
func endWithParent() error {
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0); err != nil {
		return fmt.Errorf("asking to end with the parent process: %w", err)
	}
	// A parent that ended before prctl took effect sends nothing; the
	// process was handed to another one by then.
	if os.Getppid() != ppid {
		return errors.New("the parent process has ended")
	}
	return nil
}

// writeDemo creates dir with a certificate, key and config, keeping what a
// previous run made so the demo Maildir stays readable.
func writeDemo(dir, addr string) (string, error) {
	for _, d := range []string{dir, filepath.Join(dir, "certs"), filepath.Join(dir, "Maildir")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", err
		}
	}
	certPath := filepath.Join(dir, "certs", "demo.pem")
	keyPath := filepath.Join(dir, "demo-key.pem")
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		cert, key, err := demoCertificate()
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(keyPath, key, 0o600); err != nil {
			return "", err
		}
		if err := os.WriteFile(certPath, cert, 0o644); err != nil {
			return "", err
		}
	}
	cfg := fmt.Sprintf(`# Written by "smimefilter demo". See smimefilter.toml(5).
[listen]
address = %q

[deliver]
maildir = %q

[certs]
dir = %q

[policy]
missing_certificate = "reject"
`, addr, filepath.Join(dir, "Maildir", "%d", "%n"), filepath.Join(dir, "certs"))
	cfgPath := filepath.Join(dir, "smimefilter.toml")
	return cfgPath, os.WriteFile(cfgPath, []byte(cfg), 0o644)
}

func demoCertificate() (certPEM, keyPEM []byte, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: "smimefilter demo", Organization: []string{"smimefilter demo"}},
		NotBefore:      now.Add(-time.Hour),
		NotAfter:       now.AddDate(1, 0, 0),
		KeyUsage:       x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		EmailAddresses: []string{demoAddress},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}
