package mailstacktest

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// PostfixOptions configures StartPostfix.
type PostfixOptions struct {
	// HostedDomains become virtual_mailbox_domains. Postfix accepts any
	// local part there (virtual_mailbox_maps is empty), so a recipient that
	// Dovecot does not know reaches Dovecot and is refused by it.
	HostedDomains []string
	// VirtualTransport sets virtual_transport, e.g.
	// "lmtp:unix:" + dovecot.LMTPSocket().
	VirtualTransport string
	// MainCF is appended to main.cf after the harness's settings (a later
	// line wins in Postfix), MasterCF to master.cf. Put contrib snippets
	// here verbatim and map their paths with Replace.
	MainCF   string
	MasterCF string
	// Replace maps strings in MainCF and MasterCF to test values, e.g.
	// "/run/smimefilter/lmtp.sock" to a socket in a temp dir, or
	// "127.0.0.1:10025" to a FreePort.
	Replace map[string]string
}

// Postfix is a running Postfix instance; see StartPostfix.
type Postfix struct {
	t       testing.TB
	bin     map[string]string
	dir     string
	confDir string
	spool   string
	logPath string
	outPath string
	addr    string

	daemonDir string
}

// StartPostfix starts a Postfix instance with its own config_directory,
// queue_directory, data_directory and maillog_file under a temporary
// directory, every service non-chrooted, an smtpd on 127.0.0.1:<free port>,
// retries after about a second, message_size_limit 200 MiB and
// default_transport = error. It needs root. It stops Postfix when the test
// ends and fails the test with Postfix's log when it cannot start.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	bin := requireBinaries(t, "postfix", "postqueue", "postsuper", "postconf")
	if os.Geteuid() != 0 {
		skipOrFail(t, "mailstack: Postfix needs root (euid %d)", os.Geteuid())
	}
	if _, err := user.Lookup("postfix"); err != nil {
		skipOrFail(t, "mailstack: no postfix user: %v", err)
	}
	dir := NewDir(t, "postfix")
	p := &Postfix{
		t:       t,
		bin:     bin,
		dir:     dir,
		confDir: filepath.Join(dir, "etc"),
		spool:   filepath.Join(dir, "spool"),
		logPath: filepath.Join(dir, "log", "maillog"),
		outPath: filepath.Join(dir, "postfix.out"),
	}
	for _, sub := range []string{"etc", "spool", "data", "log"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatalf("mailstack: %v", err)
		}
	}
	pu, _ := user.Lookup("postfix")
	uid, _ := strconv.Atoi(pu.Uid)
	// master.lock lives in data_directory, which must belong to postfix.
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		t.Fatalf("mailstack: %v", err)
	}
	replace := func(s string) string {
		for from, to := range opts.Replace {
			s = strings.ReplaceAll(s, from, to)
		}
		return s
	}

	var lastErr string
	started := false
	for attempt := 0; attempt < 3 && !started; attempt++ {
		p.addr = FreePort(t)
		if err := p.writeConfig(opts, replace); err != nil {
			t.Fatalf("mailstack: %v", err)
		}
		out, err := p.start()
		if err == nil {
			started = true
			break
		}
		p.Stop()
		// Another process took the port between FreePort and the bind:
		// try another one. (The master cannot say so: see below.)
		l, lerr := net.Listen("tcp", p.addr)
		if lerr != nil {
			lastErr = fmt.Sprintf("port %s taken: %v", p.addr, lerr)
			continue
		}
		l.Close()
		// The master's errors before postlogd runs (a bad parameter, a
		// port it cannot bind) go to syslog only, which does not exist
		// here: show what "postfix check" says and the configuration.
		diag, _ := run(p.outPath, bin["postfix"], "-c", p.confDir, "check")
		main, _ := os.ReadFile(filepath.Join(p.confDir, "main.cf"))
		master, _ := os.ReadFile(filepath.Join(p.confDir, "master.cf"))
		lastErr = fmt.Sprintf("%v\n%s%s\n%s\n--- main.cf ---\n%s--- master.cf ---\n%s(the master logs early errors to syslog only)",
			err, out, diag, tail(p.logPath, 8192), main, master)
		break
	}
	if !started {
		t.Fatalf("mailstack: postfix did not start: %s", lastErr)
	}
	t.Cleanup(p.Stop)
	p.waitSMTP()
	return p
}

func (p *Postfix) writeConfig(opts PostfixOptions, replace func(string) string) error {
	var main strings.Builder
	fmt.Fprintf(&main, `# Written by internal/mailstacktest for one test.
compatibility_level = 3.6
queue_directory = %[1]s/spool
data_directory = %[1]s/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
biff = no
# No syslog here: Postfix logs to a file through postlogd.
maillog_file = %[1]s/log/maillog
maillog_file_prefixes = %[1]s/log
# Quick retries for fault tests.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
message_size_limit = 209715200
mailbox_size_limit = 0
virtual_mailbox_limit = 0
default_transport = error:no route in this test
relay_transport = error:no route in this test
virtual_mailbox_domains = %[2]s
`, p.dir, strings.Join(opts.HostedDomains, ", "))
	if opts.VirtualTransport != "" {
		fmt.Fprintf(&main, "virtual_transport = %s\n", opts.VirtualTransport)
	}
	if opts.MainCF != "" {
		main.WriteString("\n# PostfixOptions.MainCF\n" + replace(opts.MainCF) + "\n")
	}

	// Every service non-chrooted: a chrooted lmtp client looks a socket
	// path up under the queue directory and fails.
	var master strings.Builder
	fmt.Fprintf(&master, `# Written by internal/mailstacktest for one test.
%s inet n - n - - smtpd
pickup     unix n - n 60   1 pickup
cleanup    unix n - n -    0 cleanup
qmgr       unix n - n 300  1 qmgr
rewrite    unix - - n -    - trivial-rewrite
bounce     unix - - n -    0 bounce
defer      unix - - n -    0 bounce
trace      unix - - n -    0 bounce
verify     unix - - n -    1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n -    - proxymap
proxywrite unix - - n -    1 proxymap
smtp       unix - - n -    - smtp
relay      unix - - n -    - smtp
showq      unix n - n -    - showq
error      unix - - n -    - error
retry      unix - - n -    - error
discard    unix - - n -    - discard
lmtp       unix - - n -    - lmtp
anvil      unix - - n -    1 anvil
scache     unix - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
`, p.addr)
	if opts.MasterCF != "" {
		master.WriteString("\n# PostfixOptions.MasterCF\n" + replace(opts.MasterCF) + "\n")
	}
	for name, content := range map[string]string{"main.cf": main.String(), "master.cf": master.String()} {
		if err := writeOld(filepath.Join(p.confDir, name), content); err != nil {
			return err
		}
	}
	return nil
}

// writeOld writes a Postfix configuration file dated a minute back: Postfix
// programs wait, in 300 ms steps, until a table file is a second old before
// they read it, which costs every fresh instance about 2 s.
func writeOld(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return err
	}
	old := time.Now().Add(-time.Minute)
	return os.Chtimes(path, old, old)
}

// queueDirs are the queue_directory subdirectories with the owner group
// and mode that "postfix check" (post-install create-missing) gives them.
var queueDirs = []struct {
	name     string
	postdrop bool
	mode     os.FileMode
}{
	{"active", false, 0o700}, {"bounce", false, 0o700}, {"corrupt", false, 0o700},
	{"defer", false, 0o700}, {"deferred", false, 0o700}, {"flush", false, 0o700},
	{"hold", false, 0o700}, {"incoming", false, 0o700}, {"private", false, 0o700},
	{"saved", false, 0o700}, {"trace", false, 0o700},
	{"maildrop", true, 0o730}, {"public", true, 0o710},
}

// makeQueue creates the queue directories the way "postfix check" does,
// which takes it 2-3 s on a fresh queue.
func (p *Postfix) makeQueue() error {
	pu, err := user.Lookup("postfix")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(pu.Uid)
	postdrop := 0
	if g, err := user.LookupGroup("postdrop"); err == nil {
		postdrop, _ = strconv.Atoi(g.Gid)
	}
	for _, q := range queueDirs {
		path := filepath.Join(p.spool, q.name)
		if err := os.MkdirAll(path, 0o700); err != nil {
			return err
		}
		gid := 0
		if q.postdrop {
			gid = postdrop
		}
		if err := os.Chown(path, uid, gid); err != nil {
			return err
		}
		if err := os.Chmod(path, q.mode); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(p.spool, "pid"), 0o755)
}

// start does what "postfix start" does without its slow checks: it runs
// "master -w", which returns once the master daemon has initialized.
func (p *Postfix) start() (string, error) {
	if err := p.makeQueue(); err != nil {
		return "", err
	}
	if p.daemonDir == "" {
		p.daemonDir = strings.TrimSpace(p.postconfValue("daemon_directory"))
	}
	return run(p.outPath, filepath.Join(p.daemonDir, "master"), "-c", p.confDir, "-w")
}

func (p *Postfix) postconfValue(name string) string {
	out, err := exec.Command(p.bin["postconf"], "-c", p.confDir, "-h", name).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// masterPID reads the master's pid file; 0 when there is none.
func (p *Postfix) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.spool, "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Stop kills Postfix: SIGKILL to the master's process group (its children),
// since "postfix stop" spends a second or more waiting. Queued mail stays in
// the queue; Start brings the instance back. Stop is registered with
// t.Cleanup.
func (p *Postfix) Stop() {
	pid := p.masterPID()
	if pid <= 0 {
		return
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(10*time.Second, func() bool { return !alive(pid) })
	os.Remove(filepath.Join(p.spool, "pid", "master.pid"))
}

// Start starts a stopped instance again on the same address.
func (p *Postfix) Start() {
	p.t.Helper()
	if out, err := p.start(); err != nil {
		p.t.Fatalf("mailstack: postfix did not start: %v\n%s\n%s", err, out, tail(p.logPath, 8192))
	}
	p.waitSMTP()
}

func (p *Postfix) waitSMTP() {
	p.t.Helper()
	if !waitFor(30*time.Second, func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}) {
		p.t.Fatalf("mailstack: postfix smtpd on %s does not answer\n%s\n%s",
			p.addr, tail(p.outPath, 4096), tail(p.logPath, 8192))
	}
}

// SMTPAddr is the smtpd's "127.0.0.1:PORT".
func (p *Postfix) SMTPAddr() string { return p.addr }

// ConfigDir is the instance's config_directory (for postfix -c, postconf
// -c, postqueue -c).
func (p *Postfix) ConfigDir() string { return p.confDir }

// Send submits one message over SMTP. It returns the first error (for
// example a rejected recipient) as an *smtp.SMTPError when the server
// answered one.
func (p *Postfix) Send(from string, to []string, msg []byte) error {
	return SendSMTP(p.addr, from, to, msg)
}

// SendSMTP submits one message to an SMTP server (not LMTP).
func SendSMTP(addr, from string, to []string, msg []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.example.test"); err != nil {
		return err
	}
	var mopts *smtp.MailOptions
	if ok, _ := c.Extension("8BITMIME"); ok {
		mopts = &smtp.MailOptions{Body: smtp.Body8BitMIME}
	}
	if err := c.Mail(from, mopts); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return fmt.Errorf("RCPT TO:<%s>: %w", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// Postconf runs postconf -c DIR with args (e.g. "-e", "name=value" to change
// main.cf; call Reload afterwards) and returns its output.
func (p *Postfix) Postconf(args ...string) string {
	p.t.Helper()
	out, err := run(p.outPath, p.bin["postconf"], append([]string{"-c", p.confDir}, args...)...)
	if err != nil {
		p.t.Fatalf("mailstack: %v\n%s", err, out)
	}
	// postconf -e/-M rewrote a file: date it back (see writeOld).
	old := time.Now().Add(-time.Minute)
	for _, name := range []string{"main.cf", "master.cf"} {
		os.Chtimes(filepath.Join(p.confDir, name), old, old)
	}
	return out
}

// Flush runs postqueue -f: deferred mail is retried now.
func (p *Postfix) Flush() {
	p.t.Helper()
	if out, err := run(p.outPath, p.bin["postqueue"], "-c", p.confDir, "-f"); err != nil {
		p.t.Fatalf("mailstack: %v\n%s", err, out)
	}
}

// QueueLen counts the messages in the queue (maildrop, incoming, active,
// deferred, hold) by their files, without a round trip through showq.
func (p *Postfix) QueueLen() int {
	n := 0
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		filepath.WalkDir(filepath.Join(p.spool, q), func(_ string, e os.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

// QueueEmpty reports whether no message is queued. It stops at the first
// queue file: benchmarks poll it while thousands are queued.
func (p *Postfix) QueueEmpty() bool {
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		found := false
		filepath.WalkDir(filepath.Join(p.spool, q), func(_ string, e os.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				found = true
				return fs.SkipAll
			}
			return nil
		})
		if found {
			return false
		}
	}
	return true
}

// WaitQueueEmpty waits until the queue is empty; it fails the test with the
// queue listing and the log after timeout.
func (p *Postfix) WaitQueueEmpty(timeout time.Duration) {
	p.t.Helper()
	if !waitFor(timeout, p.QueueEmpty) {
		out, _ := run(p.outPath, p.bin["postqueue"], "-c", p.confDir, "-p")
		p.t.Fatalf("mailstack: %d messages still queued after %v\n%s\n%s",
			p.QueueLen(), timeout, out, tail(p.logPath, 8192))
	}
}

// Log returns the maillog.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Delivery is one delivery attempt logged by a Postfix delivery agent.
type Delivery struct {
	QueueID string
	Service string // the logging program: "lmtp", "error", "smtp", ...
	To      string
	OrigTo  string
	Relay   string
	DSN     string // "2.0.0", "4.2.2", ...
	Status  string // "sent", "deferred", "bounced", "expired"
	Text    string // the reason in parentheses
}

// e.g. "postfix/lmtp[11884]: 2D5FB984835: to=<a@example.org>, relay=..., delay=0.04,
// delays=..., dsn=2.0.0, status=sent (250 2.0.0 ...)"
var deliveryLine = regexp.MustCompile(`postfix[^/\s]*/([^\[\s]+)\[\d+\]: (\w+): to=<([^>]*)>, (?:orig_to=<([^>]*)>, )?relay=([^,]*), .*?dsn=([^,]*), status=(\w+) \((.*)\)$`)

// Deliveries parses every delivery attempt from the maillog, in order.
func (p *Postfix) Deliveries() []Delivery {
	var ds []Delivery
	sc := bufio.NewScanner(bytes.NewReader([]byte(p.Log())))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		m := deliveryLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ds = append(ds, Delivery{QueueID: m[2], Service: m[1], To: m[3], OrigTo: m[4],
			Relay: m[5], DSN: m[6], Status: m[7], Text: m[8]})
	}
	return ds
}

// Counts are delivery attempts by status.
type Counts struct {
	Sent, Deferred, Bounced, Expired int
}

func (c Counts) String() string {
	return fmt.Sprintf("sent=%d deferred=%d bounced=%d expired=%d", c.Sent, c.Deferred, c.Bounced, c.Expired)
}

// Count counts the logged delivery attempts, for every recipient, or only
// for the given ones (compared case-insensitively). A deferred message that
// is delivered later counts once as deferred (per attempt) and once as sent.
func (p *Postfix) Count(rcpts ...string) Counts {
	want := map[string]bool{}
	for _, r := range rcpts {
		want[strings.ToLower(r)] = true
	}
	var c Counts
	for _, d := range p.Deliveries() {
		if len(want) > 0 && !want[strings.ToLower(d.To)] {
			continue
		}
		switch d.Status {
		case "sent":
			c.Sent++
		case "deferred":
			c.Deferred++
		case "bounced":
			c.Bounced++
		case "expired":
			c.Expired++
		}
	}
	return c
}

// WaitStatus waits for a logged delivery attempt for rcpt with status
// ("sent", "deferred", "bounced") and returns the first one; it fails the
// test after timeout.
func (p *Postfix) WaitStatus(rcpt, status string, timeout time.Duration) Delivery {
	p.t.Helper()
	var found Delivery
	if !waitFor(timeout, func() bool {
		for _, d := range p.Deliveries() {
			if strings.EqualFold(d.To, rcpt) && d.Status == status {
				found = d
				return true
			}
		}
		return false
	}) {
		p.t.Fatalf("mailstack: no status=%s for <%s> after %v\n%s", status, rcpt, timeout, tail(p.logPath, 8192))
	}
	return found
}

// WaitCount waits until Count(rcpts...) satisfies cond; it fails the test
// after timeout and returns the last counts.
func (p *Postfix) WaitCount(timeout time.Duration, cond func(Counts) bool, rcpts ...string) Counts {
	p.t.Helper()
	var c Counts
	if !waitFor(timeout, func() bool { c = p.Count(rcpts...); return cond(c) }) {
		p.t.Fatalf("mailstack: counts %v after %v do not satisfy the condition\n%s", c, timeout, tail(p.logPath, 8192))
	}
	return c
}
