package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// Modes of putting smimefilter into Postfix: contrib/postfix/<mode>/.
const (
	modeTransport     = "transport"
	modeContentFilter = "content-filter"
	// transport-maps/: only the domains in its map file go through the
	// filter; virtual_transport stays Dovecot for the rest.
	modeTransportMaps = "transport-maps"
)

// The paths the contrib snippets are written for, replaced by the test's.
const (
	contribFilterSocket  = "/run/smimefilter/lmtp.sock"
	contribReinjectAddr  = "127.0.0.1:10025"
	contribTransportMap  = "/etc/postfix/transport"
	contribDovecotUser   = "user = _smimefilter"
	contribDovecotGroup  = "group = _smimefilter"
	dovecotFilterListen  = "smimefilter-lmtp" // the listener 10-smimefilter.conf adds
	hostedDomain         = "example.org"
	rewrittenDomain      = "old.example.org" // rewritten to hostedDomain by the rules below
	elsewhereDomain      = "elsewhere.test"  // not hosted: re-injected in content-filter mode
	senderAddr           = "sender@example.com"
	defaultLongTimeout   = 60 * time.Second
	defaultStatusTimeout = 30 * time.Second
)

// setup describes one stack.
type setup struct {
	mode string
	// users Dovecot hosts; certs: who has a certificate.
	users []string
	certs []string
	// pgpKeys are OpenPGP public keys (armored, as a client exports them)
	// put into the certificate directory, by address.
	pgpKeys map[string][]byte
	// overQuota users answer 452 4.2.2.
	overQuota []string
	// missing is policy.missing_certificate ("" = the default).
	missing string
	// maildir: the daemon delivers into Maildirs itself instead of LMTP.
	maildir bool
	// extraTOML is appended to the daemon's config.
	extraTOML string
	// logLevel of the daemon; default debug.
	logLevel string
	// holdProxy puts a holdProxy between Postfix and the daemon (st.proxy).
	holdProxy bool
}

// stack is Postfix -> smimefilter -> Dovecot (or a Maildir).
type stack struct {
	t       testing.TB
	setup   setup
	dir     string
	dovecot *mailstacktest.Dovecot
	postfix *mailstacktest.Postfix
	filter  *daemon
	certs   map[string]*smimetest.Recipient
	// maildirRoot is the daemon's Maildir template root in maildir mode.
	maildirRoot string
	// proxy is what Postfix connects to with setup.holdProxy.
	proxy *holdProxy
}

// rewriteRules are in every daemon config: a domain move and the
// subaddress rule from contrib/dovecot/README.md.
const rewriteRules = `
[[rewrite]]
match = '^(.*)@old\.example\.org$'
replace = '$1@example.org'

[[rewrite]]
match = '^([^+@]+)\+[^@]*@(example\.org)$'
replace = '$1@$2'
`

func readContrib(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "contrib", path))
	if err != nil {
		t.Fatalf("contrib snippet: %v", err)
	}
	return string(b)
}

func newStack(t testing.TB, s setup) *stack {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	smimetest.Require(t, "openssl")
	if s.mode == "" {
		s.mode = modeTransport
	}
	st := &stack{t: t, setup: s, certs: map[string]*smimetest.Recipient{}}

	nobody := lookupUser(t, "nobody")
	// contrib/dovecot/10-smimefilter.conf, with the service user of the
	// package replaced by the one this test runs the daemon as.
	dovecotConf := strings.NewReplacer(
		contribDovecotUser, "user = "+nobody.Username,
		contribDovecotGroup, "group = "+groupName(t, nobody.Gid),
	).Replace(readContrib(t, "dovecot/10-smimefilter.conf"))
	st.dovecot = mailstacktest.StartDovecot(t, mailstacktest.DovecotOptions{
		Users:     s.users,
		OverQuota: s.overQuota,
		// Dovecot would file bob+lists@ under "lists": only the daemon's
		// subaddress rule (rewriteRules) keeps it in INBOX, and
		// TestDelivery checks that it does.
		RecipientDelimiter:  "+",
		SaveToDetailMailbox: true,
		ExtraConfig:         dovecotConf,
	})
	dovecotSock := filepath.Join(filepath.Dir(st.dovecot.LMTPSocket()), dovecotFilterListen)
	// Dovecot creates the listener and then sets its owner: poll.
	var fi os.FileInfo
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fi, err = os.Stat(dovecotSock)
		if err == nil && fi.Mode().Perm() == 0o600 && fi.Sys().(*syscall.Stat_t).Uid == uint32(atoi(t, nobody.Uid)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot's smimefilter listener %s: %v, want mode 0600 owned by %s (err %v)", dovecotSock, fi, nobody.Username, err)
		}
	}

	st.dir = mailstacktest.NewDir(t, "e2e")
	filterSock := filepath.Join(st.dir, "run", "lmtp.sock")
	reinject := mailstacktest.FreePort(t)

	masterMode := s.mode
	transportMap := filepath.Join(st.dir, "transport")
	if s.mode == modeTransportMaps {
		// Its master.cf is transport/'s; its map file is installed and
		// postmapped as contrib/postfix/README.md says.
		masterMode = modeTransport
		m := strings.ReplaceAll(readContrib(t, "postfix/transport-maps/transport"), contribFilterSocket, filterSock)
		if err := os.WriteFile(transportMap, []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(mailstacktest.Tool(t, "postmap"), "hash:"+transportMap).CombinedOutput(); err != nil {
			t.Fatalf("postmap: %v\n%s", err, out)
		}
	}
	postfixSock := filterSock
	if s.holdProxy {
		postfixSock = filepath.Join(st.dir, "proxy.sock")
		st.proxy = newHoldProxy(t, postfixSock, filterSock)
	}
	opts := mailstacktest.PostfixOptions{
		HostedDomains: []string{hostedDomain, rewrittenDomain},
		MainCF:        readContrib(t, "postfix/"+s.mode+"/main.cf"),
		MasterCF:      readContrib(t, "postfix/"+masterMode+"/master.cf"),
		Replace: map[string]string{
			contribFilterSocket: postfixSock,
			contribReinjectAddr: reinject,
			contribTransportMap: transportMap,
		},
	}
	if s.mode == modeTransportMaps {
		opts.VirtualTransport = "lmtp:unix:" + st.dovecot.LMTPSocket()
	}
	if s.mode == modeContentFilter {
		// Re-injected mail for the other domain goes straight to Dovecot,
		// standing in for a mail host elsewhere; hosted mail must never be
		// routed by Postfix itself.
		opts.MainCF += fmt.Sprintf("\ntransport_maps = inline:{%s=lmtp:unix:%s}\n", elsewhereDomain, st.dovecot.LMTPSocket())
		opts.VirtualTransport = "lmtp:unix:/nonexistent/hosted-mail-must-pass-smimefilter"
	}
	st.postfix = mailstacktest.StartPostfix(t, opts)

	// The daemon's configuration.
	certDir := filepath.Join(st.dir, "certs")
	mkdir(t, certDir, 0o755)
	for _, addr := range s.certs {
		r := smimetest.NewRecipient(t, addr)
		st.certs[addr] = r
		if err := os.WriteFile(filepath.Join(certDir, addr+".pem"), r.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for addr, key := range s.pgpKeys {
		if err := os.WriteFile(filepath.Join(certDir, addr+".asc"), key, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, "[listen]\nsocket = %q\nmode = \"0660\"\ngroup = \"postfix\"\nshutdown_grace = \"10s\"\n\n", filterSock)
	conf.WriteString("[deliver]\n")
	if s.maildir {
		st.maildirRoot = filepath.Join(st.dir, "maildirs")
		mkdir(t, st.maildirRoot, 0o755)
		chown(t, st.maildirRoot, nobody)
		fmt.Fprintf(&conf, "maildir = %q\n", st.maildirRoot+"/%d/%n")
	} else {
		fmt.Fprintf(&conf, "lmtp = %q\n", dovecotSock)
	}
	if s.mode == modeContentFilter {
		fmt.Fprintf(&conf, "hosted_domains = [%q]\nreinject = %q\n", hostedDomain, reinject)
	}
	// Certificates are looked up by the address after the rewrite rules:
	// bob@old.example.org is encrypted for bob@example.org.
	fmt.Fprintf(&conf, "\n[certs]\ndir = %q\nlookup = \"rewritten\"\n\n[policy]\n", certDir)
	if s.missing != "" {
		fmt.Fprintf(&conf, "missing_certificate = %q\n", s.missing)
	}
	if s.logLevel == "" {
		s.logLevel = "debug"
	}
	fmt.Fprintf(&conf, "\n[log]\nlevel = %q\n", s.logLevel)
	conf.WriteString(rewriteRules)
	conf.WriteString(s.extraTOML)
	confPath := filepath.Join(st.dir, "smimefilter.toml")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(st.dir, "run")
	mkdir(t, run, 0o755)
	chown(t, run, nobody)

	st.filter = &daemon{t: t, config: confPath, socket: filterSock, logPath: filepath.Join(st.dir, "smimefilter.log"), dir: st.dir, user: nobody}
	t.Cleanup(st.filter.kill)
	st.filter.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("smimefilter log:\n%s", lastBytes(st.filter.log(), 16<<10))
			t.Logf("postfix log:\n%s", lastBytes(st.postfix.Log(), 16<<10))
			t.Logf("dovecot log:\n%s", lastBytes(st.dovecot.Log(), 8<<10))
		}
	})
	return st
}

// send submits msg to Postfix's smtpd.
func (st *stack) send(to []string, msg []byte) {
	st.t.Helper()
	if err := st.postfix.Send(senderAddr, to, msg); err != nil {
		st.t.Fatalf("submitting to Postfix: %v", err)
	}
}

// messages are the messages in addr's INBOX: Dovecot's Maildir, or the
// daemon's own in maildir mode.
func (st *stack) messages(addr string) [][]byte {
	if !st.setup.maildir {
		return st.dovecot.Messages(addr)
	}
	local, domain, _ := strings.Cut(strings.ToLower(addr), "@")
	dir := filepath.Join(st.maildirRoot, domain, local)
	var msgs [][]byte
	for _, sub := range []string{"new", "cur"} {
		entries, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
			if err == nil {
				msgs = append(msgs, b)
			}
		}
	}
	return msgs
}

func (st *stack) waitMessages(addr string, n int, timeout time.Duration) [][]byte {
	st.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := st.messages(addr)
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			st.t.Fatalf("%s has %d messages after %v, want %d", addr, len(msgs), timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// daemon is one smimefilter process, run as nobody with the supplementary
// group postfix (so it may give its socket to that group), as the packaged
// unit runs it as an unprivileged user.
type daemon struct {
	t       testing.TB
	config  string
	socket  string
	logPath string
	dir     string // for the notify sockets
	user    *user.User

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
}

// listenNotify is a NOTIFY_SOCKET for one start of the daemon, writable by
// its user. The returned channel is closed at the first READY=1: the
// daemon's own word that it accepts mail (the packaged unit is
// Type=notify), where a connect loop could only guess. The socket is read
// until the test ends, so that later states (STOPPING=1) reach a reader.
func (d *daemon) listenNotify(path string) <-chan struct{} {
	d.t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		d.t.Fatalf("notify socket: %v", err)
	}
	d.t.Cleanup(func() { c.Close() })
	if err := os.Chmod(path, 0o666); err != nil {
		d.t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		seen := false
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" && !seen {
					seen = true
					close(ready)
				}
			}
		}
	}()
	return ready
}

func (d *daemon) start() {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "=== start %s\n", time.Now().Format(time.RFC3339Nano))
	d.starts++
	notifyPath := filepath.Join(d.dir, fmt.Sprintf("notify-%d", d.starts))
	ready := d.listenNotify(notifyPath)
	cmd := exec.Command(daemonBin, "-config", d.config)
	cmd.Stdout, cmd.Stderr = f, f
	// bench/e2e.sh's FILTER_ENV (e.g. GOMAXPROCS=1) reaches the daemon
	// alone, not the test process driving it.
	cmd.Env = append(os.Environ(), strings.Fields(os.Getenv("SMIMEFILTER_DAEMON_ENV"))...)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+notifyPath)
	postfixGID := atoi(d.t, lookupGroup(d.t, "postfix").Gid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: uint32(atoi(d.t, d.user.Uid)), Gid: uint32(atoi(d.t, d.user.Gid)),
		Groups: []uint32{uint32(postfixGID)},
	}}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("starting smimefilter: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	d.cmd, d.done = cmd, done

	const startTimeout = 20 * time.Second
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
	case <-done:
		d.cmd = nil
		d.t.Fatalf("smimefilter exited at start (%v):\n%s", cmd.ProcessState, lastBytes(d.log(), 8192))
	case <-timer.C:
		d.t.Fatalf("smimefilter sent no READY=1 within %v:\n%s", startTimeout, lastBytes(d.log(), 8192))
	}
	// READY=1 promises that mail is accepted: hold the daemon to it.
	c, err := net.Dial("unix", d.socket)
	if err != nil {
		d.t.Fatalf("smimefilter sent READY=1 but does not accept on %s: %v", d.socket, err)
	}
	c.Close()
	fi, err := os.Stat(d.socket)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != uint32(postfixGID) {
		d.t.Fatalf("smimefilter socket: %v %v, want 0660 group postfix", fi.Mode(), err)
	}
}

func (d *daemon) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// kill SIGKILLs the daemon and waits for it.
func (d *daemon) kill() { d.signal(syscall.SIGKILL, 5*time.Second) }

// stop sends SIGTERM and waits for the daemon to exit, as systemctl stop.
func (d *daemon) stop(timeout time.Duration) {
	d.t.Helper()
	if !d.signal(syscall.SIGTERM, timeout) {
		d.t.Errorf("smimefilter did not exit within %v of SIGTERM", timeout)
		d.kill()
	}
}

func (d *daemon) signal(sig syscall.Signal, timeout time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return true
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
		if sig == syscall.SIGTERM && d.cmd.ProcessState.ExitCode() != 0 {
			d.t.Errorf("smimefilter exited with %v after SIGTERM, want status 0", d.cmd.ProcessState)
		}
		d.cmd, d.done = nil, nil
		return true
	case <-time.After(timeout):
		return false
	}
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

func lookupUser(t testing.TB, name string) *user.User {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no user %s: %v (CI=true: not skipping)", name, err)
		}
		t.Skipf("no user %s: %v", name, err)
	}
	return u
}

func lookupGroup(t testing.TB, name string) *user.Group {
	t.Helper()
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatalf("group %s: %v", name, err)
	}
	return g
}

func groupName(t testing.TB, gid string) string {
	t.Helper()
	g, err := user.LookupGroupId(gid)
	if err != nil {
		t.Fatal(err)
	}
	return g.Name
}

func atoi(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mkdir(t testing.TB, path string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(path, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
}

func chown(t testing.TB, path string, u *user.User) {
	t.Helper()
	if err := os.Chown(path, atoi(t, u.Uid), atoi(t, u.Gid)); err != nil {
		t.Fatal(err)
	}
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// --- messages ---

// testMessage is a multipart message with 8-bit text and a binary
// attachment, CRLF throughout, and the entity expected inside the envelope.
func testMessage(to, subject string, attachment int) (raw, inner []byte) {
	var body bytes.Buffer
	body.WriteString("--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	body.WriteString("Grüße aus dem Test: " + subject + "\r\n")
	body.WriteString("--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"data.bin\"\r\n\r\n")
	data := make([]byte, attachment)
	for i := range data {
		data[i] = byte(i*7 + i/251)
	}
	writeBase64(&body, data)
	body.WriteString("--b1--\r\n")

	contentFields := "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
	var m bytes.Buffer
	fmt.Fprintf(&m, "From: Sender <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Mon, 24 Nov 2025 10:00:00 +0000\r\n"+
		"Message-ID: <%d.%s@example.com>\r\nMIME-Version: 1.0\r\n", senderAddr, to, subject, time.Now().UnixNano(), strings.ReplaceAll(subject, " ", "-"))
	m.WriteString(contentFields)
	m.WriteString("\r\n")
	m.Write(body.Bytes())
	inner = append([]byte(contentFields+"\r\n"), body.Bytes()...)
	return m.Bytes(), inner
}

func writeBase64(b *bytes.Buffer, data []byte) {
	const line = 57 // 76 characters
	enc := make([]byte, 0, 80)
	for len(data) > 0 {
		n := min(line, len(data))
		enc = enc[:0]
		enc = base64.StdEncoding.AppendEncode(enc, data[:n])
		b.Write(enc)
		b.WriteString("\r\n")
		data = data[n:]
	}
}

// decrypt extracts the S/MIME envelope of a delivered message and decrypts
// it with OpenSSL for r.
func decrypt(t testing.TB, r *smimetest.Recipient, msg []byte) []byte {
	t.Helper()
	der, err := smimetest.ExtractDER(msg)
	if err != nil {
		t.Fatalf("delivered message for %s is not S/MIME: %v\n%s", r.Addr, err, lastBytes(string(msg), 2048))
	}
	out, err := smimetest.DecryptOpenSSL(t, der, r.CertPEM, r.KeyPEM)
	if err != nil {
		t.Fatalf("openssl cannot decrypt the copy for %s: %v", r.Addr, err)
	}
	return out
}

// bodyOf returns the body of a message with LF line ends: Dovecot stores
// Maildir files with LF (mail_save_crlf = no).
func bodyOf(msg []byte) []byte {
	msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		return msg[i+2:]
	}
	return nil
}

// header returns the value of the first header field name of msg.
func header(msg []byte, name string) string {
	head := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		head = msg[:i]
	} else if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		head = msg[:i]
	}
	for _, line := range strings.Split(string(head), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
