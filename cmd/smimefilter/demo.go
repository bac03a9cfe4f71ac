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
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
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
	watch, err := endWithParent(newLogger(c, stderr))
	if err != nil {
		fmt.Fprintln(stderr, "smimefilter demo:", err)
		return exitFailure
	}
	return serve(c, stderr, func(a net.Addr) {
		watch() // serve handles SIGTERM by now
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

// parentDeathSignal is what the kernel sends when the demo's parent thread
// ends. Not SIGTERM itself: see endWithParent.
const parentDeathSignal = unix.SIGUSR1

// parentPoll is how often the demo looks for a new parent process even
// without a signal: one getppid(2) a second.
const parentPoll = time.Second

// endWithParent arranges for the demo to stop, as on SIGTERM (the clean
// shutdown), once the process that started it has ended. "go run" does not
// pass SIGTERM on to the program it started: without this, killing it would
// leave the demo running, holding its port and the private key's directory
// with nobody left to stop it. The returned function starts the watch; call
// it once SIGTERM is handled, or the SIGTERM it sends kills the process.
//
// prctl(2) PR_SET_PDEATHSIG fires when the parent *thread* ends, which in a
// multi-threaded parent such as go run may happen while its process lives
// on (this process then gets another thread of it as parent); a SIGTERM from
// it would stop the demo early. So it sends parentDeathSignal, and the demo
// stops only if getppid(2) names another process than at the start. The
// setting belongs to the thread that made the call and is lost if that
// thread ends, so getppid is also polled every parentPoll.
func endWithParent(log *slog.Logger) (watch func(), err error) {
	ppid := os.Getppid()
	died := make(chan os.Signal, 1)
	signal.Notify(died, parentDeathSignal)
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(parentDeathSignal), 0, 0, 0); err != nil {
		signal.Stop(died)
		return nil, fmt.Errorf("asking to end with the parent process: %w", err)
	}
	// A parent that ended before prctl took effect sends nothing; the
	// process was handed to another one by then.
	if os.Getppid() != ppid {
		signal.Stop(died)
		return nil, errors.New("the parent process has ended")
	}
	return func() {
		go watchParent(ppid, os.Getppid, died, parentPoll, log, func() {
			unix.Kill(os.Getpid(), unix.SIGTERM)
		})
	}, nil
}

// watchParent calls stop once getppid differs from ppid, looking at each
// signal on died and every poll.
func watchParent(ppid int, getppid func() int, died <-chan os.Signal, poll time.Duration, log *slog.Logger, stop func()) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		signalled := false
		select {
		case <-died:
			signalled = true
		case <-t.C:
		}
		if now := getppid(); now != ppid {
			log.Info("demo: the parent process has ended, stopping", "parent", ppid, "new_parent", now)
			stop()
			return
		}
		if signalled {
			log.Info("demo: parent-death signal (a thread of the parent ended), but the process lives on: still running", "parent", ppid)
		}
	}
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
