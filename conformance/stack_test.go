package conformance

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// The two sides of every comparison: the same local part is a Dovecot user
// in both domains, reached directly (directDomain) or through smimefilter
// (filterDomain). Nothing else in a session differs between the sides.
const (
	directDomain = "direct.test"
	filterDomain = "filter.test"
	senderAddr   = "sender@example.com"

	// maxMessageSize is the daemon's limits.max_message_size: the corpus
	// has messages of exactly this size and one byte more.
	maxMessageSize = 65536
	// maxLineLength is the daemon's limits.max_line_length (its default).
	maxLineLength = 4096

	// replyTimeout bounds the wait for one reply: a server that misses the
	// end of the data waits for ever, and the case must report it, not hang.
	replyTimeout = 10 * time.Second
)

// stack is one Dovecot hosting every user in both domains and one
// smimefilter in front of it, with a certificate for every filter-side
// user.
type stack struct {
	t       testing.TB
	dovecot *mailstacktest.Dovecot
	socket  string // the daemon's LMTP socket
	logPath string
	certs   map[string]*smimetest.Recipient // by filter-side address

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// startStack starts Dovecot with locals (local parts) as users in both
// domains and the daemon with a certificate for each filter-side address.
func startStack(t testing.TB, locals []string) *stack {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	var users []string
	for _, l := range locals {
		users = append(users, mailboxOf(l+"@"+directDomain), mailboxOf(l+"@"+filterDomain))
	}
	st := &stack{t: t, certs: map[string]*smimetest.Recipient{}}
	st.dovecot = mailstacktest.StartDovecot(t, mailstacktest.DovecotOptions{
		Users: users,
		// The default allows no space: "john doe"@ would be unknown.
		ExtraConfig: "auth_username_chars =",
	})

	dir := mailstacktest.NewDir(t, "conf")
	certDir := filepath.Join(dir, "certs")
	if err := os.Mkdir(certDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, l := range locals {
		addr := l + "@" + filterDomain
		// Every certificate is its own (serial, subject, address), so each
		// recipient needs its own envelope, and decrypting with one
		// certificate finds only the RecipientInfo naming it; the key is
		// shared because generating a hundred RSA keys under -race takes
		// minutes.
		r := smimetest.NewRecipient(t, addr, smimetest.KeyName("conformance"))
		st.certs[strings.ToLower(addr)] = r
		if err := os.WriteFile(filepath.Join(certDir, fmt.Sprintf("%03d.pem", i)), r.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st.socket = filepath.Join(dir, "lmtp.sock")
	st.logPath = filepath.Join(dir, "smimefilter.log")
	conf := fmt.Sprintf(`[listen]
socket = %q
mode = "0600"
hostname = "filter.localhost"

[limits]
max_message_size = %d
max_line_length = %d

[deliver]
lmtp = %q

[certs]
dir = %q

[log]
level = "info"
`, st.socket, maxMessageSize, maxLineLength, st.dovecot.LMTPSocket(), certDir)
	confPath := filepath.Join(dir, "smimefilter.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	st.start(confPath)
	t.Cleanup(st.stop)
	return st
}

func (st *stack) start(confPath string) {
	st.t.Helper()
	f, err := os.OpenFile(st.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		st.t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(daemonBin, "-config", confPath)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		st.t.Fatalf("starting smimefilter: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	st.cmd, st.done = cmd, done
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case <-done:
			st.t.Fatalf("smimefilter exited at start (%v):\n%s", cmd.ProcessState, st.log())
		default:
		}
		if c, err := net.Dial("unix", st.socket); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			st.t.Fatalf("smimefilter does not accept on %s:\n%s", st.socket, st.log())
		}
	}
}

func (st *stack) stop() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.cmd != nil {
		st.cmd.Process.Signal(syscall.SIGKILL)
		<-st.done
		st.cmd = nil
	}
}

func (st *stack) log() string {
	b, _ := os.ReadFile(st.logPath)
	return string(b)
}

// socketFor is where a session for a domain is sent.
func (st *stack) socketFor(domain string) string {
	if domain == filterDomain {
		return st.socket
	}
	return st.dovecot.LMTPSocket()
}

// mailboxOf is the Dovecot user an address reaches: Dovecot removes the
// quotes of a quoted local part ("john doe"@x is user john doe@x).
func mailboxOf(addr string) string {
	local, domain, _ := strings.Cut(addr, "@")
	if len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"' {
		local = local[1 : len(local)-1]
	}
	return local + "@" + domain
}

// messages returns what addr's INBOX holds (new/ and cur/), oldest first.
// It reads the Maildir itself: Dovecot.Messages reports to the test that
// started Dovecot, which inside a fuzz target is the F, not the T.
func (st *stack) messages(addr string) ([][]byte, error) {
	var names []string
	for _, sub := range []string{"new", "cur"} {
		dir := filepath.Join(st.dovecot.Maildir(mailboxOf(addr)), sub)
		entries, _ := os.ReadDir(dir) // not there before the first delivery
		for _, e := range entries {
			names = append(names, filepath.Join(dir, e.Name()))
		}
	}
	// Dovecot names files TIME.MusecPpid.host: the name orders deliveries.
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(filepath.Base(a), filepath.Base(b)) })
	var msgs [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, b)
	}
	return msgs, nil
}

// clear removes every message of addr, so that a mailbox can be used again
// (by the fuzz target). Dovecot tolerates files vanishing from a Maildir.
func (st *stack) clear(t testing.TB, addr string) {
	t.Helper()
	for _, sub := range []string{"new", "cur"} {
		dir := filepath.Join(st.dovecot.Maildir(mailboxOf(addr)), sub)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
}
