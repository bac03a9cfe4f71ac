package mailstacktest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DovecotOptions configures StartDovecot.
type DovecotOptions struct {
	// Users are the addresses Dovecot hosts ("alice@example.org"). Any
	// other recipient gets 550 5.1.1 at RCPT.
	Users []string
	// OverQuota users start with a quota of one byte: every delivery to
	// them fails with 452 4.2.2 at DATA (quota_full_tempfail = yes).
	// SetOverQuota changes it while Dovecot runs.
	OverQuota []string
	// RecipientDelimiter sets recipient_delimiter (e.g. "+"); empty leaves
	// Dovecot's default.
	RecipientDelimiter string
	// SaveToDetailMailbox sets lmtp_save_to_detail_mailbox = yes and
	// lda_mailbox_autocreate = yes: alice+work@ lands in mailbox "work".
	SaveToDetailMailbox bool
	// ExtraConfig is appended to dovecot.conf verbatim.
	ExtraConfig string
}

// Dovecot is a running Dovecot instance; see StartDovecot.
type Dovecot struct {
	t       testing.TB
	bin     map[string]string
	dir     string
	conf    string
	socket  string
	logPath string
	outPath string
	uid     int
	gid     int

	mu        sync.Mutex
	overQuota map[string]bool
	users     []string
	cmd       *exec.Cmd
	done      chan struct{}
}

// StartDovecot starts Dovecot from a temporary directory: its own base_dir,
// a passwd-file userdb/passdb with opts.Users, Maildirs under DIR/mail/DOMAIN/
// LOCAL, the quota plugin, and LMTP on a 0666 Unix socket as its only
// listener. It returns once the socket accepts connections and stops Dovecot
// when the test ends. It fails the test with Dovecot's log when it cannot
// start.
func StartDovecot(t testing.TB, opts DovecotOptions) *Dovecot {
	t.Helper()
	bin := requireBinaries(t, "dovecot", "doveadm")
	if _, err := os.Stat("/usr/lib/dovecot/lmtp"); err != nil {
		skipOrFail(t, "mailstack: dovecot-lmtpd is not installed: %v", err)
	}
	dir := NewDir(t, "dovecot")
	d := &Dovecot{
		t:         t,
		bin:       bin,
		dir:       dir,
		conf:      filepath.Join(dir, "dovecot.conf"),
		socket:    filepath.Join(dir, "run", "lmtp"),
		logPath:   filepath.Join(dir, "dovecot.log"),
		outPath:   filepath.Join(dir, "dovecot.out"),
		overQuota: map[string]bool{},
		users:     append([]string(nil), opts.Users...),
	}
	for _, u := range opts.OverQuota {
		d.overQuota[strings.ToLower(u)] = true
	}

	internalUser, loginUser := "dovecot", "dovenull"
	if os.Geteuid() == 0 {
		// Deliver as nobody: Dovecot refuses mail for root by default, and
		// a non-root owner lets tests make a Maildir unwritable.
		d.uid, d.gid = 65534, 65534
		if u, err := user.Lookup("nobody"); err == nil {
			d.uid, _ = strconv.Atoi(u.Uid)
			d.gid, _ = strconv.Atoi(u.Gid)
		}
	} else {
		u, err := user.Current()
		if err != nil {
			t.Fatalf("mailstack: %v", err)
		}
		d.uid, d.gid = os.Geteuid(), os.Getegid()
		internalUser, loginUser = u.Username, u.Username
	}
	for _, sub := range []string{"mail", "state"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatalf("mailstack: %v", err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "mail"), d.uid, d.gid); err != nil {
		t.Fatalf("mailstack: %v", err)
	}
	if err := d.writeUsers(); err != nil {
		t.Fatalf("mailstack: %v", err)
	}

	var conf strings.Builder
	fmt.Fprintf(&conf, `# Written by internal/mailstacktest for one test.
base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = %[2]s
protocols = lmtp
# An empty "listen =" is refused; LMTP has no inet listener anyway.
listen = 127.0.0.1
ssl = no
log_path = %[1]s/dovecot.log
default_internal_user = %[3]s
default_login_user = %[4]s
first_valid_uid = %[5]d
first_valid_gid = %[6]d
mail_location = maildir:%[1]s/mail/%%d/%%n
passdb {
  driver = passwd-file
  args = %[1]s/users
}
userdb {
  driver = passwd-file
  args = %[1]s/users
}
mail_plugins = $mail_plugins quota
# A full mailbox is a temporary failure (452 4.2.2), not 552.
quota_full_tempfail = yes
plugin {
  quota = maildir:User quota
}
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
`, dir, filepath.Base(dir), internalUser, loginUser, min(d.uid, 1000), min(d.gid, 1000))
	if opts.RecipientDelimiter != "" {
		fmt.Fprintf(&conf, "recipient_delimiter = %s\n", opts.RecipientDelimiter)
	}
	if opts.SaveToDetailMailbox {
		conf.WriteString("lmtp_save_to_detail_mailbox = yes\nlda_mailbox_autocreate = yes\n")
	}
	if opts.ExtraConfig != "" {
		conf.WriteString(opts.ExtraConfig + "\n")
	}
	if err := os.WriteFile(d.conf, []byte(conf.String()), 0o644); err != nil {
		t.Fatalf("mailstack: %v", err)
	}
	t.Cleanup(d.Stop)
	d.Start()
	return d
}

// writeUsers writes the passwd-file. Dovecot re-reads it when its mtime or
// size changes; an over-quota user carries an extra field, so the size does.
func (d *Dovecot) writeUsers() error {
	var b strings.Builder
	for _, addr := range d.users {
		addr = strings.ToLower(addr)
		fmt.Fprintf(&b, "%s:{PLAIN}secret:%d:%d::%s::", addr, d.uid, d.gid, d.Maildir(addr))
		// Without a rule, the Maildir++ backend falls back to the limit
		// stored in maildirsize: a user who was over quota needs an
		// explicit large limit to stop being it.
		if on, set := d.overQuota[addr]; set {
			b.WriteString("userdb_quota_rule=" + quotaRule(on))
		}
		b.WriteString("\n")
	}
	tmp := filepath.Join(d.dir, "users.tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(d.dir, "users"))
}

// Start starts Dovecot (again, after Stop) and waits until the LMTP socket
// accepts connections. It does nothing when Dovecot is running.
func (d *Dovecot) Start() {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		return
	}
	out, err := os.OpenFile(d.outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatalf("mailstack: %v", err)
	}
	defer out.Close()
	cmd := exec.Command(d.bin["dovecot"], "-F", "-c", d.conf)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("mailstack: starting dovecot: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	d.cmd, d.done = cmd, done

	exited := false
	ready := waitFor(30*time.Second, func() bool {
		select {
		case <-done:
			exited = true
			return true
		default:
		}
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if exited || !ready {
		d.stopLocked()
		d.t.Fatalf("mailstack: dovecot did not start (exited=%v, state %v)\n%s\n%s",
			exited, cmd.ProcessState, tail(d.outPath, 4096), tail(d.logPath, 8192))
	}
}

// Stop kills Dovecot and all its processes (SIGKILL to the process group,
// like a crash: a graceful SIGTERM shutdown takes Dovecot 3-6 s) and waits
// for the master to exit. The socket file stays: connecting to it is
// refused. Stop is registered with t.Cleanup.
func (d *Dovecot) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
}

func (d *Dovecot) stopLocked() {
	if d.cmd == nil {
		return
	}
	pgid := d.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-d.done
	// The children die a moment after the master; until the last one
	// holding the listening socket is gone, connections still succeed.
	waitFor(10*time.Second, func() bool {
		syscall.Kill(-pgid, syscall.SIGKILL)
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	d.cmd, d.done = nil, nil
}

// SetOverQuota gives user a one-byte quota (on) or none (off) while Dovecot
// runs. It returns once Dovecot's userdb reports the change.
func (d *Dovecot) SetOverQuota(addr string, on bool) {
	d.t.Helper()
	addr = strings.ToLower(addr)
	d.mu.Lock()
	d.overQuota[addr] = on
	err := d.writeUsers()
	d.mu.Unlock()
	if err != nil {
		d.t.Fatalf("mailstack: %v", err)
	}
	want := quotaRule(on)
	var got string
	ok := waitFor(10*time.Second, func() bool {
		out, _ := exec.Command(d.bin["doveadm"], "-c", d.conf, "user", "-f", "quota_rule", addr).Output()
		got = strings.TrimSpace(string(out))
		return got == want
	})
	if !ok {
		d.t.Fatalf("mailstack: quota_rule of %s is %q, want %q", addr, got, want)
	}
}

func quotaRule(over bool) string {
	if over {
		return "*:storage=1B"
	}
	return "*:storage=1024G"
}

// LMTPSocket is the path of Dovecot's LMTP socket (mode 0666).
func (d *Dovecot) LMTPSocket() string { return d.socket }

// Log returns Dovecot's log and its stdout/stderr.
func (d *Dovecot) Log() string {
	a, _ := os.ReadFile(d.logPath)
	b, _ := os.ReadFile(d.outPath)
	return string(a) + string(b)
}

// Maildir is the Maildir of user (an address). Dovecot creates it at the
// first delivery.
func (d *Dovecot) Maildir(addr string) string {
	addr = strings.ToLower(addr)
	local, domain := addr, ""
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		local, domain = addr[:i], addr[i+1:]
	}
	return filepath.Join(d.dir, "mail", domain, local)
}

// Messages returns the messages in user's INBOX (new/ and cur/), oldest
// first by file name.
func (d *Dovecot) Messages(addr string) [][]byte {
	return d.MessagesIn(addr, "INBOX")
}

// Count returns how many messages addr's INBOX holds, without reading
// them: benchmarks poll it, and reading thousands of messages every poll
// would cost more than the deliveries being measured.
func (d *Dovecot) Count(addr string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		f, err := os.Open(filepath.Join(d.Maildir(addr), sub))
		if err != nil {
			continue // not created yet
		}
		names, _ := f.Readdirnames(-1)
		f.Close()
		n += len(names)
	}
	return n
}

// MessagesIn returns the messages in a mailbox of user ("INBOX", or e.g.
// "work" for Maildir++ folder .work).
func (d *Dovecot) MessagesIn(addr, mailbox string) [][]byte {
	d.t.Helper()
	dir := d.Maildir(addr)
	if mailbox != "" && !strings.EqualFold(mailbox, "INBOX") {
		dir = filepath.Join(dir, "."+strings.ReplaceAll(mailbox, "/", "."))
	}
	type file struct{ name, path string }
	var files []file
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			continue // not created yet
		}
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, file{e.Name(), filepath.Join(dir, sub, e.Name())})
			}
		}
	}
	// Dovecot names files TIME.MusecPpid.host: the name orders deliveries.
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	msgs := make([][]byte, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			d.t.Fatalf("mailstack: %v", err)
		}
		msgs = append(msgs, b)
	}
	return msgs
}

// WaitMessages waits until user's INBOX holds at least n messages and
// returns them; it fails the test after timeout.
func (d *Dovecot) WaitMessages(addr string, n int, timeout time.Duration) [][]byte {
	d.t.Helper()
	return d.WaitMessagesIn(addr, "INBOX", n, timeout)
}

// WaitMessagesIn is WaitMessages for another mailbox.
func (d *Dovecot) WaitMessagesIn(addr, mailbox string, n int, timeout time.Duration) [][]byte {
	d.t.Helper()
	var msgs [][]byte
	if !waitFor(timeout, func() bool {
		msgs = d.MessagesIn(addr, mailbox)
		return len(msgs) >= n
	}) {
		d.t.Fatalf("mailstack: %s/%s has %d messages after %v, want %d\n%s",
			addr, mailbox, len(msgs), timeout, n, tail(d.logPath, 4096))
	}
	return msgs
}
