package conformance

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// startStack starts Dovecot with the local parts of every session as
// users in both domains and the daemon with a certificate for each
// filter-side address. sessions lists the local parts that share a
// session (one LMTP transaction): each of them gets a key of its own.
func startStack(t testing.TB, sessions [][]string) *stack {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	var users []string
	for _, locals := range sessions {
		for _, l := range locals {
			users = append(users, mailboxOf(l+"@"+directDomain), mailboxOf(l+"@"+filterDomain))
		}
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
	for i, r := range issueCerts(t, sessions) {
		st.certs[strings.ToLower(r.Addr)] = r
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

// issueCerts makes a certificate for every filter-side address of the
// sessions. Every certificate is its own (serial, subject, address), so
// each recipient needs its own envelope. The j-th recipient of every
// session has key j: within a transaction no two recipients share a key,
// so a copy encrypted for another recipient's key does not decrypt with
// its own. Sessions never share a transaction, so they may share keys:
// about 50 RSA keys instead of one per address. Generating one costs some
// 80 ms under -race, so they are made on every core.
func issueCerts(t testing.TB, sessions [][]string) []*smimetest.Recipient {
	t.Helper()
	type job struct {
		addr string
		key  int
	}
	var jobs []job
	for _, locals := range sessions {
		for j, l := range locals {
			jobs = append(jobs, job{l + "@" + filterDomain, j})
		}
	}
	ca := smimetest.DefaultCA(t)
	out := make([]*smimetest.Recipient, len(jobs))
	failed := make([]*recorder, len(jobs))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, jb := range jobs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			rec := &recorder{TB: t}
			out[i] = ca.NewRecipient(rec, jb.addr, smimetest.KeyName(fmt.Sprintf("conformance-%d", jb.key)))
			failed[i] = rec
		})
	}
	wg.Wait()
	for i, rec := range failed {
		if rec.err != nil {
			t.Fatalf("certificate for %s: %v", jobs[i].addr, rec.err)
		}
	}
	return out
}

// recorder stands in for the test on a goroutine of its own, where
// testing's FailNow must not be called: it keeps the failure for the
// test's goroutine to report.
type recorder struct {
	testing.TB
	err error
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatal(args ...any)                 { r.err = errors.New(fmt.Sprint(args...)) }
func (r *recorder) Fatalf(format string, args ...any) { r.err = fmt.Errorf(format, args...) }

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
