package conformance

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// absentGrace is how long mailboxes are watched for a copy that must not
// come after the client gave up on a server (no reply in time, or it
// closed its side): the server may still be delivering. Polled, not slept.
const absentGrace = time.Second

// concurrentCases is how many cases are played at once: most of a case's
// time is waiting (for Dovecot's fsync, or for replyTimeout when a server
// misses the end of the data), not computing.
const concurrentCases = 8

// TestConformance plays every corpus session to Dovecot directly and
// through smimefilter and compares, per recipient, the reply class and
// the stored message (see the comment above dovecotTrace for what "equal"
// means). Each case is a subtest; a summary of all of them is logged.
func TestConformance(t *testing.T) {
	cs := cases(t)
	var sessions [][]string
	for i, c := range cs {
		var users []string
		for _, l := range c.localsOf(i) {
			if !strings.HasPrefix(l, "nouser") {
				users = append(users, l)
			}
		}
		sessions = append(sessions, users)
	}
	st := startStack(t, sessions)

	results := make([]result, len(cs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, concurrentCases)
	for i, c := range cs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = st.play(t, c.localsOf(i), c.s, c.want)
		})
	}
	wg.Wait()

	var summary strings.Builder
	for i, c := range cs {
		r := results[i]
		t.Run(c.name, func(t *testing.T) {
			for _, p := range r.problems {
				t.Error(p)
			}
			if len(r.problems) > 0 {
				t.Logf("directly:\n%s\nthrough the filter:\n%s", r.direct, r.filtered)
			}
		})
		fmt.Fprintf(&summary, "%-44s %-18s %s\n", c.name, c.class, r.summary())
	}
	t.Logf("summary (case, class, result):\n%s", summary.String())
	if t.Failed() {
		t.Logf("smimefilter log (last 16 KiB):\n%s", lastBytes(st.log(), 16<<10))
	}
}

// result is what play found for one session.
type result struct {
	problems         []string
	direct, filtered string // transcripts
}

func (r result) summary() string {
	switch len(r.problems) {
	case 0:
		return "ok"
	case 1:
		return "MISMATCH: " + r.problems[0]
	}
	return fmt.Sprintf("MISMATCH: %s (and %d more)", r.problems[0], len(r.problems)-1)
}

// play sends s to both sides for the local parts and compares the outcome
// per recipient. t is only used by the decryptor; play may run on any
// goroutine.
func (st *stack) play(t testing.TB, locals []string, s session, w want) result {
	addrs := func(domain string) []string {
		out := make([]string, len(locals))
		for i, l := range locals {
			out[i] = l + "@" + domain
		}
		return out
	}
	directAddrs, filterAddrs := addrs(directDomain), addrs(filterDomain)
	direct := run(st.socketFor(directDomain), directAddrs, s)
	filtered := run(st.socketFor(filterDomain), filterAddrs, s)
	res := result{direct: direct.String(), filtered: filtered.String()}
	report := func(format string, args ...any) {
		res.problems = append(res.problems, fmt.Sprintf(format, args...))
	}
	if direct.stuck || filtered.stuck || s.eof {
		var empty []string
		for i := range locals {
			if direct.outcome[i].class() != 2 {
				empty = append(empty, directAddrs[i])
			}
			if filtered.outcome[i].class() != 2 {
				empty = append(empty, filterAddrs[i])
			}
		}
		st.watchEmpty(empty)
	}
	for i := range locals {
		d, f := direct.outcome[i], filtered.outcome[i]
		wantClass := d.class()
		if w.filterClass != 0 {
			wantClass = w.filterClass
		}
		if f.class() != wantClass && !(w.policyMay && f.class() == d.class()) {
			report("%s: reply class %d through the filter (%s), want %d (Dovecot directly: %s)",
				locals[i], f.class(), f, wantClass, d)
		}
		// A 2xx reply means stored once; anything else, not at all (a
		// copy stored after a 4xx is a duplicate when the client retries).
		var stored [2][][]byte
		for j, side := range []struct {
			name, addr string
			rep        reply
		}{{"directly", directAddrs[i], d}, {"through the filter", filterAddrs[i], f}} {
			msgs, err := st.messages(side.addr)
			if err != nil {
				report("%s: reading the Maildir: %v", side.addr, err)
			}
			stored[j] = msgs
			want := 0
			if side.rep.class() == 2 {
				want = 1
			}
			if len(msgs) != want {
				report("%s: %d messages stored %s after %q, want %d", locals[i], len(msgs), side.name, side.rep, want)
			}
		}
		if len(stored[0]) != 1 || len(stored[1]) != 1 {
			continue
		}
		if diff := st.compare(t, stored[0][0], stored[1][0], filterAddrs[i], w); diff != "" {
			report("%s: %s", locals[i], diff)
		}
	}
	return res
}

// watchEmpty returns when one of the mailboxes holds a message, or after
// absentGrace.
func (st *stack) watchEmpty(addrs []string) {
	for deadline := time.Now().Add(absentGrace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, a := range addrs {
			if msgs, _ := st.messages(a); len(msgs) > 0 {
				return
			}
		}
	}
}

// compare applies the comparison described above dovecotTrace to one
// recipient's two copies; "" means equal.
func (st *stack) compare(t testing.TB, direct, filtered []byte, filterAddr string, w want) string {
	d, err := stripTrace(direct)
	if err != nil {
		return "direct copy: " + err.Error()
	}
	f, err := stripTrace(filtered)
	if err != nil {
		return "filter's copy: " + err.Error()
	}
	switch same := bytes.Equal(d, f); {
	case same && (w.passThrough || w.mayPassThrough):
		return ""
	case same:
		return "stored in plaintext through the filter (identical to the direct copy)"
	case w.passThrough:
		return "already encrypted mail changed by the filter: " + firstDifference(d, f)
	}
	r := st.certs[strings.ToLower(filterAddr)]
	if r == nil {
		return "no certificate made for " + filterAddr
	}
	diff := compareEncrypted(d, f, owner{
		certs:          []*x509.Certificate{r.Cert},
		recipientInfos: smimetest.RecipientsOf,
		decrypt: func(der []byte) ([]byte, error) {
			return smimetest.DecryptGo(t, der, r.CertPEM, r.KeyPEM)
		},
	})
	if w.otherContent && (strings.HasPrefix(diff, "header fields differ") || strings.HasPrefix(diff, "body differs")) {
		return "" // encrypted, and the content differs by design
	}
	return diff
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
