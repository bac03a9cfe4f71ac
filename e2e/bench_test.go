package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
)

// BenchmarkE2E measures Postfix -> smimefilter -> Dovecot ("filter")
// against Postfix -> Dovecot ("direct"): smtp-source submits b.N messages
// into Postfix, timed until all of them are in the Maildir and the queue is
// empty. The recipient has a certificate, so every message is encrypted.
// Each sub-benchmark reports msgs/s; bench/e2e.sh prints the ratios.
//
//	go test -run '^$' -bench BenchmarkE2E -benchtime 2000x -count 3 ./e2e/
//
// SMIMEFILTER_BENCH_SESSIONS sets smtp-source's sessions (default 4);
// SMIMEFILTER_BENCH_BIN runs another daemon binary (see useBenchBin).
func BenchmarkE2E(b *testing.B) {
	useBenchBin(b)
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
	dd := mailstacktest.StartDovecot(b, mailstacktest.DovecotOptions{Users: []string{alice}})
	dp := mailstacktest.StartPostfix(b, mailstacktest.PostfixOptions{
		HostedDomains:    []string{hostedDomain},
		VirtualTransport: "lmtp:unix:" + dd.LMTPSocket(),
	})
	// Postfix -> smimefilter -> Dovecot with contrib/postfix/transport.
	st := newStack(b, setup{users: []string{alice}, certs: []string{alice}, logLevel: "warn"})

	paths := []struct {
		name    string
		postfix *mailstacktest.Postfix
		count   func() int
	}{
		{"direct", dp, func() int { return dd.Count(alice) }},
		{"filter", st.postfix, func() int { return st.dovecot.Count(alice) }},
	}
	for _, size := range []int{1024, 102400} {
		for _, p := range paths {
			b.Run(fmt.Sprintf("size=%d/%s", size, p.name), func(b *testing.B) {
				// Start each path with the previous one's writes on disk:
				// otherwise their write-back lands on this run (Postfix's
				// fsyncs share the journal) and the second path pays for both.
				syscall.Sync()
				before := p.count()
				b.ResetTimer()
				out, err := exec.Command(source, "-s", sessions, "-m", strconv.Itoa(b.N), "-l", strconv.Itoa(size),
					"-f", senderAddr, "-t", alice, p.postfix.SMTPAddr()).CombinedOutput()
				if err != nil {
					b.Fatalf("smtp-source: %v\n%s", err, out)
				}
				deadline := time.Now().Add(10 * time.Minute)
				// smtp-source has returned, so every message is queued: an
				// empty queue means all were handled, and the (costlier)
				// Maildir count only confirms it.
				for !p.postfix.QueueEmpty() || p.count()-before < b.N {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d delivered after 10 minutes", p.count()-before, b.N)
					}
					time.Sleep(10 * time.Millisecond)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
	if c := st.postfix.Count(); c.Bounced != 0 || c.Deferred != 0 {
		b.Errorf("via smimefilter: %v, want no deferrals or bounces", c)
	}
}
