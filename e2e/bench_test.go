package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstack"
)

// TestBenchmarkE2E measures Postfix -> smimefilter -> Dovecot against
// Postfix -> Dovecot in the same run: smtp-source submits N messages into
// Postfix, timed until all N are in the Maildir and the queue is empty. The
// recipient has a certificate, so every message is encrypted. It runs only
// when SMIMEFILTER_BENCH_N is set: see bench/e2e.sh.
func TestBenchmarkE2E(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SMIMEFILTER_BENCH_N"))
	if n <= 0 {
		t.Skip("a benchmark: run bench/e2e.sh (SMIMEFILTER_BENCH_N=messages)")
	}
	rounds, _ := strconv.Atoi(os.Getenv("SMIMEFILTER_BENCH_ROUNDS"))
	if rounds <= 0 {
		rounds = 3
	}
	sessions := os.Getenv("SMIMEFILTER_BENCH_SESSIONS")
	if sessions == "" {
		sessions = "4"
	}
	source, err := exec.LookPath("smtp-source")
	if err != nil {
		source = "/usr/sbin/smtp-source"
	}
	alice := "alice@" + hostedDomain

	// Postfix -> Dovecot, as before smimefilter.
	dd := mailstack.StartDovecot(t, mailstack.DovecotOptions{Users: []string{alice}})
	dp := mailstack.StartPostfix(t, mailstack.PostfixOptions{
		HostedDomains:    []string{hostedDomain},
		VirtualTransport: "lmtp:unix:" + dd.LMTPSocket(),
	})
	direct := func() int { return len(dd.Messages(alice)) }
	// Postfix -> smimefilter -> Dovecot with contrib/postfix/transport.
	st := newStack(t, setup{users: []string{alice}, certs: []string{alice}, logLevel: "warn"})
	filtered := func() int { return len(st.dovecot.Messages(alice)) }

	rate := func(p *mailstack.Postfix, count func() int, size int) float64 {
		t.Helper()
		before := count()
		t0 := time.Now()
		out, err := exec.Command(source, "-s", sessions, "-m", strconv.Itoa(n), "-l", strconv.Itoa(size),
			"-f", senderAddr, "-t", alice, p.SMTPAddr()).CombinedOutput()
		if err != nil {
			t.Fatalf("smtp-source: %v\n%s", err, out)
		}
		deadline := time.Now().Add(10 * time.Minute)
		for count()-before < n || !p.QueueEmpty() {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d delivered after 10 minutes", count()-before, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return float64(n) / time.Since(t0).Seconds()
	}

	fmt.Printf("%-8s %-8s %-6s %12s %12s %7s\n", "size", "sessions", "round", "direct", "via-filter", "ratio")
	for _, size := range []int{1024, 102400} {
		for r := 1; r <= rounds; r++ {
			d := rate(dp, direct, size)
			f := rate(st.postfix, filtered, size)
			fmt.Printf("%-8d %-8s %-6d %12.0f %12.0f %7.2f\n", size, sessions, r, d, f, f/d)
		}
	}
	if c := st.postfix.Count(); c.Bounced != 0 || c.Deferred != 0 {
		t.Errorf("via smimefilter: %v, want no deferrals or bounces", c)
	}
}
