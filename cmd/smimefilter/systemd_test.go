package main_test

// The daemon as systemd runs it (smimefilter.socket + smimefilter.service
// in packaging/systemd): the real binary, a socket passed with LISTEN_FDS
// (sd_listen_fds(3)), and sd_notify(3) messages on NOTIFY_SOCKET. The
// activation tests follow go-systemd's activation/listeners_test.go: the
// listener goes in as ExtraFiles[0] (fd 3) and a shell sets LISTEN_PID to
// its own PID before it execs the daemon, because the child's PID is not
// known before it starts.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	testRcpt    = "alice@example.org"
	exitConfig  = 2
	waitTimeout = 20 * time.Second
)

var (
	daemonBin string // built once in TestMain
	certPEM   []byte // a usable S/MIME certificate for testRcpt
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "smimefilter-systemd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	daemonBin = filepath.Join(dir, "smimefilter")
	build := exec.Command("go", "build", "-o", daemonBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building smimefilter:", err)
		return 1
	}
	if certPEM, err = makeCert(testRcpt); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// makeCert returns a self-signed certificate fit to encrypt to addr
// (RFC 8550: rfc822Name, keyEncipherment, emailProtection, RSA 2048).
func makeCert(addr string) ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: addr},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		BasicConstraintsValid: true,
		EmailAddresses:        []string{addr},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// env is one daemon's directory: config, certificates, Maildir, log.
type env struct {
	dir     string
	config  string
	maildir string
	log     string
}

// newEnv writes a config delivering into a Maildir under a temp dir.
// listen is the [listen] table's keys ("" for none); @DIR@ in it stands for
// that directory.
func newEnv(t *testing.T, listen string) *env {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir can be long.
	dir, err := os.MkdirTemp("", "sf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{
		dir:     dir,
		config:  filepath.Join(dir, "smimefilter.toml"),
		maildir: filepath.Join(dir, "mail"),
		log:     filepath.Join(dir, "daemon.log"),
	}
	if err := os.Mkdir(filepath.Join(dir, "certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "certs", "alice.pem"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`[listen]
%s
shutdown_grace = "2s"

[deliver]
maildir = %q

[certs]
dir = %q

[policy]
missing_certificate = "reject"

[log]
level = "debug"
`, strings.ReplaceAll(listen, "@DIR@", dir), filepath.Join(e.maildir, "%d", "%n"), filepath.Join(dir, "certs"))
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) path(name string) string { return filepath.Join(e.dir, name) }

// logText is what the daemon wrote to stderr so far.
func (e *env) logText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(e.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// daemon is a running smimefilter.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done is closed
}

// start runs the daemon with extra environment; with activated set, it
// passes listener as fd 3 with LISTEN_FDS=1 and LISTEN_PID of the daemon.
func (e *env) start(t *testing.T, activated *net.UnixListener, extraEnv ...string) *daemon {
	t.Helper()
	logf, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	var cmd *exec.Cmd
	if activated != nil {
		f, err := activated.File() // a dup; the child gets it as fd 3
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd = exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`,
			daemonBin, "-config", e.config)
		cmd.ExtraFiles = []*os.File{f}
		extraEnv = append(extraEnv, "LISTEN_FDS=1")
	} else {
		cmd = exec.Command(daemonBin, "-config", e.config)
	}
	cmd.Env = append(cleanEnv(), extraEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", e.logText(t))
		}
	})
	return d
}

// cleanEnv is the test's environment without systemd's variables, so a
// test run under systemd (or a CI runner started by it) does not leak them.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// exitCode waits for the daemon to exit and returns its status.
func (d *daemon) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(waitTimeout):
		t.Fatalf("daemon still running after %v", waitTimeout)
	}
	var ee *exec.ExitError
	switch {
	case d.err == nil:
		return 0
	case errors.As(d.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("waiting for daemon: %v", d.err)
	return -1
}

func (d *daemon) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("sending %v: %v", sig, err)
	}
}

// stop sends SIGTERM and wants a clean exit (status 0).
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.signal(t, syscall.SIGTERM)
	if code := d.exitCode(t); code != 0 {
		t.Fatalf("exit status after SIGTERM: got %d, want 0", code)
	}
}

func listenUnix(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	// Closing our copy after the daemon has its own must not remove the
	// path, as systemd keeps it too.
	l.SetUnlinkOnClose(false)
	t.Cleanup(func() { l.Close() })
	return l
}

// dialLMTP connects, waiting for the socket to appear, and reads the
// greeting.
func dialLMTP(t *testing.T, path string) *textproto.Conn {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.SetDeadline(time.Now().Add(waitTimeout))
			tc := textproto.NewConn(c)
			t.Cleanup(func() { tc.Close() })
			if _, _, err := tc.ReadResponse(220); err != nil {
				t.Fatalf("greeting: %v", err)
			}
			return tc
		}
		if time.Now().After(deadline) {
			t.Fatalf("dialing %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lmtpCmd sends one command and wants a reply of the given class (2, 3...).
func lmtpCmd(t *testing.T, c *textproto.Conn, want int, format string, args ...any) string {
	t.Helper()
	id, err := c.Cmd(format, args...)
	if err != nil {
		t.Fatal(err)
	}
	c.StartResponse(id)
	defer c.EndResponse(id)
	_, msg, err := c.ReadResponse(want)
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
	return msg
}

// deliverOne runs one LMTP transaction to testRcpt with body as text.
func deliverOne(t *testing.T, c *textproto.Conn, body string) {
	t.Helper()
	ext := lmtpCmd(t, c, 250, "LHLO test.example")
	if !strings.Contains(ext, "8BITMIME") {
		t.Errorf("LHLO: want 8BITMIME among the extensions, got %q", ext)
	}
	lmtpCmd(t, c, 250, "MAIL FROM:<sender@example.net>")
	lmtpCmd(t, c, 250, "RCPT TO:<%s>", testRcpt)
	lmtpCmd(t, c, 354, "DATA")
	w := c.DotWriter()
	fmt.Fprintf(w, "From: sender@example.net\r\nTo: %s\r\nSubject: systemd test\r\n\r\n%s\r\n", testRcpt, body)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// LMTP: one reply per recipient (RFC 2033 §4.2).
	if _, msg, err := c.ReadResponse(250); err != nil {
		t.Fatalf("DATA reply for %s: %v (%s)", testRcpt, err, msg)
	}
	lmtpCmd(t, c, 221, "QUIT")
}

// wantEncryptedMail checks that exactly one message for testRcpt is in the
// Maildir, stored as S/MIME without the plain body.
func (e *env) wantEncryptedMail(t *testing.T, body string) {
	t.Helper()
	dir := filepath.Join(e.maildir, "example.org", "alice", "new")
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 {
		t.Fatalf("%s: got %d messages, want 1", dir, len(files))
	}
	msg, err := os.ReadFile(filepath.Join(dir, files[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	hdr, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(append(hdr, "\r\n\r\n"...))))
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("stored message header: %v", err)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/pkcs7-mime") {
		t.Errorf("stored Content-Type: got %q, want application/pkcs7-mime", ct)
	}
	if bytes.Contains(msg, []byte(body)) {
		t.Errorf("the plain body is readable in the stored message")
	}
}

// TestSystemdSocketActivation: a socket passed as systemd does it is used
// (the config names the same path), and mail goes through it.
func TestSystemdSocketActivation(t *testing.T) {
	e := newEnv(t, `socket = "@DIR@/lmtp.sock"`)
	sock := e.path("lmtp.sock")
	l := listenUnix(t, sock)
	d := e.start(t, l)
	l.Close() // only the daemon holds the socket now

	c := dialLMTP(t, sock)
	deliverOne(t, c, "activated body")
	e.wantEncryptedMail(t, "activated body")
	if log := e.logText(t); !strings.Contains(log, "activated=true") {
		t.Errorf("daemon log does not report activated=true:\n%s", log)
	}
	d.stop(t)
}

// TestSystemdSocketActivationNoListenKey: an activated socket and a config
// without listen.socket/address is fine.
func TestSystemdSocketActivationNoListenKey(t *testing.T) {
	e := newEnv(t, "")
	sock := e.path("lmtp.sock")
	l := listenUnix(t, sock)
	d := e.start(t, l)
	l.Close()
	c := dialLMTP(t, sock)
	deliverOne(t, c, "no listen key")
	e.wantEncryptedMail(t, "no listen key")
	d.stop(t)
}

// TestSystemdOwnListener: without LISTEN_FDS the daemon makes the socket
// of listen.socket itself, with listen.mode, and removes it on exit.
func TestSystemdOwnListener(t *testing.T) {
	// The directory does not exist yet, as /run/smimefilter would not.
	e := newEnv(t, "socket = \"@DIR@/run/lmtp.sock\"\nmode = \"0620\"")
	sock := e.path("run/lmtp.sock")
	d := e.start(t, nil)

	c := dialLMTP(t, sock)
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o620 {
		t.Errorf("socket mode: got %v, want a socket with 0620", st.Mode())
	}
	deliverOne(t, c, "own listener body")
	e.wantEncryptedMail(t, "own listener body")
	if log := e.logText(t); !strings.Contains(log, "activated=false") {
		t.Errorf("daemon log does not report activated=false:\n%s", log)
	}
	d.stop(t)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after exit: got %v, want it removed", err)
	}
}

// TestSystemdActivationMismatch: a passed socket that is not the configured
// listen.socket is a configuration error (exit 2) naming both, and systemd
// hears no READY=1.
func TestSystemdActivationMismatch(t *testing.T) {
	e := newEnv(t, `socket = "@DIR@/configured.sock"`)
	configured := e.path("configured.sock")
	passed := e.path("passed.sock")
	n := newNotifySocket(t, e.path("notify.sock"))
	l := listenUnix(t, passed)
	d := e.start(t, l, "NOTIFY_SOCKET="+n.path)

	if code := d.exitCode(t); code != exitConfig {
		t.Fatalf("exit status: got %d, want %d", code, exitConfig)
	}
	log := e.logText(t)
	for _, want := range []string{"listen.socket", configured, passed} {
		if !strings.Contains(log, want) {
			t.Errorf("error message lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Lstat(configured); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the daemon created the configured socket anyway (%v)", err)
	}
	if msgs := n.drain(200 * time.Millisecond); containsState(msgs, "READY=1") {
		t.Errorf("READY=1 sent although startup failed: %q", msgs)
	}
}

// TestSystemdTwoActivatedSockets: smimefilter.socket passes one socket;
// two are an error, not a silent pick.
func TestSystemdTwoActivatedSockets(t *testing.T) {
	e := newEnv(t, "")
	l1 := listenUnix(t, e.path("one.sock"))
	l2 := listenUnix(t, e.path("two.sock"))
	f1, _ := l1.File()
	f2, _ := l2.File()
	defer f1.Close()
	defer f2.Close()
	logf, _ := os.Create(e.log)
	defer logf.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, daemonBin, "-config", e.config)
	cmd.ExtraFiles = []*os.File{f1, f2}
	cmd.Env = append(cleanEnv(), "LISTEN_FDS=2")
	cmd.Stdout, cmd.Stderr = logf, logf
	err := runWithTimeout(cmd)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig {
		t.Fatalf("two activated sockets: got %v, want exit status %d (a configuration error)\n%s", err, exitConfig, e.logText(t))
	}
	if log := e.logText(t); !strings.Contains(log, "exactly one") {
		t.Errorf("error message does not say exactly one socket is wanted:\n%s", log)
	}
}

func runWithTimeout(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(waitTimeout):
		cmd.Process.Kill()
		<-done
		return errors.New("timed out")
	}
}

// TestSystemdNotify: READY=1 only once the daemon serves, RELOADING=1 then
// READY=1 around SIGHUP, STOPPING=1 on SIGTERM, and no WATCHDOG=1 unless
// asked for.
func TestSystemdNotify(t *testing.T) {
	e := newEnv(t, "")
	sock := e.path("lmtp.sock")
	n := newNotifySocket(t, e.path("notify.sock"))
	l := listenUnix(t, sock)
	d := e.start(t, l, "NOTIFY_SOCKET="+n.path)
	l.Close()

	ready := n.await(t, "READY=1")
	// Startup is complete when READY=1 arrives: configuration and
	// certificates loaded, the start logged, the LMTP server answering.
	log := e.logText(t)
	if !strings.Contains(log, "smimefilter started") {
		t.Errorf("READY=1 (%q) arrived before startup was logged:\n%s", ready, log)
	}
	if !containsState([]string{ready}, "STATUS=") {
		t.Errorf("READY=1 without STATUS=: %q", ready)
	}
	c := dialLMTP(t, sock)
	lmtpCmd(t, c, 250, "LHLO test.example")
	lmtpCmd(t, c, 221, "QUIT")

	d.signal(t, syscall.SIGHUP)
	n.await(t, "RELOADING=1")
	n.await(t, "READY=1")

	d.signal(t, syscall.SIGTERM)
	n.await(t, "STOPPING=1")
	if code := d.exitCode(t); code != 0 {
		t.Fatalf("exit status after SIGTERM: got %d, want 0", code)
	}
	if containsState(n.seen, "WATCHDOG=1") {
		t.Errorf("WATCHDOG=1 sent without WATCHDOG_USEC: %q", n.seen)
	}
}

// TestSystemdWatchdog: with WATCHDOG_USEC (WatchdogSec= in the unit) the
// daemon pings at about half the interval.
func TestSystemdWatchdog(t *testing.T) {
	e := newEnv(t, "")
	sock := e.path("lmtp.sock")
	n := newNotifySocket(t, e.path("notify.sock"))
	l := listenUnix(t, sock)
	const interval = 400 * time.Millisecond
	d := e.start(t, l, "NOTIFY_SOCKET="+n.path,
		fmt.Sprintf("WATCHDOG_USEC=%d", interval.Microseconds()))
	l.Close()

	n.await(t, "READY=1")
	start := time.Now()
	n.await(t, "WATCHDOG=1")
	n.await(t, "WATCHDOG=1")
	// Two pings at interval/2 take about one interval (systemd kills the
	// service after one interval without any); the bound is loose for
	// loaded CI machines and -race.
	if el := time.Since(start); el > 10*interval {
		t.Errorf("two WATCHDOG=1 took %v, want about %v", el, interval)
	}
	d.stop(t)
}

// notifySocket is systemd's side of sd_notify: a unixgram socket.
type notifySocket struct {
	path string
	msgs chan string
	seen []string // every message await and drain looked at
}

func newNotifySocket(t *testing.T, path string) *notifySocket {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &notifySocket{path: path, msgs: make(chan string, 100)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// await returns the next message that carries state (a line such as
// "READY=1"), skipping others in between.
func (n *notifySocket) await(t *testing.T, state string) string {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %s; seen %q", state, n.seen)
			}
			n.seen = append(n.seen, m)
			if containsState([]string{m}, state) {
				return m
			}
		case <-timeout:
			t.Fatalf("no %s within %v; seen %q", state, waitTimeout, n.seen)
		}
	}
}

// drain collects what arrives within d.
func (n *notifySocket) drain(d time.Duration) []string {
	timeout := time.After(d)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				return n.seen
			}
			n.seen = append(n.seen, m)
		case <-timeout:
			return n.seen
		}
	}
}

// containsState reports whether a message has a line equal to state, or
// starting with it when state ends in "=".
func containsState(msgs []string, state string) bool {
	for _, m := range msgs {
		for _, line := range strings.Split(m, "\n") {
			if line == state || strings.HasSuffix(state, "=") && strings.HasPrefix(line, state) {
				return true
			}
		}
	}
	return false
}
