package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
)

// fanoutLocal is the local part smtp-source numbers: with -r N it sends to
// "Nfan@", "N-1fan@", ..., "2fan@" and "fan@" (and to "fan@" alone with -r 1).
const fanoutLocal = "fan"

// fanoutUsers are the addresses smtp-source -r n writes to.
func fanoutUsers(n int) []string {
	users := []string{fanoutLocal + "@" + hostedDomain}
	for i := 2; i <= n; i++ {
		users = append(users, fmt.Sprintf("%d%s@%s", i, fanoutLocal, hostedDomain))
	}
	return users
}

// BenchmarkFanout measures one message to many recipients, each with their
// own certificate, through Postfix -> smimefilter -> Dovecot ("filter")
// against Postfix -> Dovecot ("direct"): smtp-source submits b.N messages,
// each to rcpts recipients, timed until the queue is empty and every copy
// is in its Maildir. Reported per sub-benchmark:
//
//   - msgs/s and s-to-empty (seconds until the queue was empty);
//
//   - deferred: Postfix's status=deferred lines for these messages; 0 means
//     every recipient was delivered in the first attempt;
//
//   - daemon-ms/msg: the daemon's user + system CPU time over the run
//     (/proc/PID/stat) divided by b.N.
//
//     go test -run '^$' -bench BenchmarkFanout -benchtime 50x ./e2e/
//
// bench/fanout.sh prints the ratios. SMIMEFILTER_BENCH_SIZES and
// SMIMEFILTER_BENCH_RCPTS are space-separated lists (defaults "10240
// 1048576" and "20"), SMIMEFILTER_BENCH_SESSIONS is smtp-source's sessions
// (default 4), SMIMEFILTER_BENCH_BIN runs another daemon binary (an older
// commit's), and SMIMEFILTER_BENCH_CONFIG adds daemon settings written as
// "section.key=value" separated by spaces (e.g. "limits.max_copies=20").
func BenchmarkFanout(b *testing.B) {
	useBenchBin(b)
	sessions := envOr("SMIMEFILTER_BENCH_SESSIONS", "4")
	sizes := envInts(b, "SMIMEFILTER_BENCH_SIZES", "10240 1048576")
	counts := envInts(b, "SMIMEFILTER_BENCH_RCPTS", "20")
	source, err := exec.LookPath("smtp-source")
	if err != nil {
		source = "/usr/sbin/smtp-source"
	}
	users := fanoutUsers(slices.Max(counts))

	dd := mailstacktest.StartDovecot(b, mailstacktest.DovecotOptions{Users: users})
	dp := mailstacktest.StartPostfix(b, mailstacktest.PostfixOptions{
		HostedDomains:    []string{hostedDomain},
		VirtualTransport: "lmtp:unix:" + dd.LMTPSocket(),
	})
	st := newStack(b, setup{users: users, certs: users, logLevel: "warn"})
	if settings := os.Getenv("SMIMEFILTER_BENCH_CONFIG"); settings != "" {
		conf, err := os.ReadFile(st.filter.config)
		if err != nil {
			b.Fatal(err)
		}
		tuned, err := tuneConfig(string(conf), strings.Fields(settings))
		if err != nil {
			b.Fatalf("SMIMEFILTER_BENCH_CONFIG: %v", err)
		}
		if err := os.WriteFile(st.filter.config, []byte(tuned), 0o644); err != nil {
			b.Fatal(err)
		}
		st.filter.stop(15 * time.Second)
		st.filter.start()
	}

	paths := []struct {
		name    string
		postfix *mailstacktest.Postfix
		dovecot *mailstacktest.Dovecot
		pid     func() int
	}{
		{"direct", dp, dd, func() int { return 0 }},
		{"filter", st.postfix, st.dovecot, st.filter.pid},
	}
	for _, size := range sizes {
		for _, n := range counts {
			rcpts := fanoutUsers(n)
			for _, p := range paths {
				b.Run(fmt.Sprintf("size=%d/rcpts=%d/%s", size, n, p.name), func(b *testing.B) {
					delivered := func() int {
						sum := 0
						for _, r := range rcpts {
							sum += p.dovecot.Count(r)
						}
						return sum
					}
					// As in BenchmarkE2E: the previous path's write-back
					// must not land on this one.
					syscall.Sync()
					before, counts0 := delivered(), p.postfix.Count()
					pid := p.pid()
					cpu0 := cpuTicks(b, pid)
					b.ResetTimer()
					out, err := exec.Command(source, "-s", sessions, "-m", strconv.Itoa(b.N), "-l", strconv.Itoa(size),
						"-r", strconv.Itoa(n), "-f", senderAddr, "-t", fanoutLocal+"@"+hostedDomain,
						p.postfix.SMTPAddr()).CombinedOutput()
					if err != nil {
						b.Fatalf("smtp-source: %v\n%s", err, out)
					}
					want := b.N * n
					deadline := time.Now().Add(10 * time.Minute)
					// smtp-source has returned, so every message is queued;
					// deferred recipients stay queued until they are
					// delivered, so an empty queue short of copies means
					// bounces.
					for !p.postfix.QueueEmpty() || delivered()-before < want {
						if time.Now().After(deadline) || p.postfix.QueueEmpty() && p.postfix.Count().Bounced > counts0.Bounced {
							b.Fatalf("%d of %d copies delivered; Postfix: %v", delivered()-before, want, p.postfix.Count())
						}
						time.Sleep(10 * time.Millisecond)
					}
					b.StopTimer()
					elapsed := b.Elapsed().Seconds()
					b.ReportMetric(float64(b.N)/elapsed, "msgs/s")
					b.ReportMetric(elapsed, "s-to-empty")
					c := p.postfix.Count()
					b.ReportMetric(float64(c.Deferred-counts0.Deferred), "deferred")
					if c.Bounced != counts0.Bounced {
						b.Errorf("%d bounced, want 0", c.Bounced-counts0.Bounced)
					}
					if pid != 0 {
						if p.pid() != pid {
							b.Fatalf("the daemon restarted (pid %d, then %d): its CPU time is lost", pid, p.pid())
						}
						b.ReportMetric(ticksToSeconds(cpuTicks(b, pid)-cpu0)*1000/float64(b.N), "daemon-ms/msg")
					}
				})
			}
		}
	}
}

// useBenchBin runs the daemon binary named by SMIMEFILTER_BENCH_BIN instead
// of the one TestMain built, so that one benchmark compares commits. The
// tree's own build does not matter then: its error is set aside.
func useBenchBin(b *testing.B) {
	bin := os.Getenv("SMIMEFILTER_BENCH_BIN")
	if bin == "" {
		return
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		b.Fatal(err)
	}
	if fi, err := os.Stat(abs); err != nil || fi.Mode().Perm()&0o001 == 0 {
		b.Fatalf("SMIMEFILTER_BENCH_BIN %s: %v, mode %v: the daemon runs as nobody and must be able to execute it", abs, err, fi)
	}
	savedBin, savedErr := daemonBin, buildErr
	daemonBin, buildErr = abs, nil
	b.Cleanup(func() { daemonBin, buildErr = savedBin, savedErr })
	b.Logf("daemon binary: %s", abs)
}

// tuneConfig sets "section.key=value" settings (value in TOML syntax) in a
// daemon configuration: inside the section's table when it has one (TOML
// forbids defining a table twice), in a new table at the end otherwise.
func tuneConfig(conf string, settings []string) (string, error) {
	lines := strings.SplitAfter(conf, "\n")
	for _, s := range settings {
		name, value, ok := strings.Cut(s, "=")
		section, key, dotted := strings.Cut(name, ".")
		if !ok || !dotted || section == "" || key == "" || value == "" {
			return "", fmt.Errorf("setting %q, want section.key=value", s)
		}
		header := "[" + section + "]"
		i := slices.IndexFunc(lines, func(l string) bool { return strings.TrimSpace(l) == header })
		if i < 0 {
			lines = append(lines, "\n", header+"\n")
			i = len(lines) - 1
		}
		lines = slices.Insert(lines, i+1, key+" = "+value+"\n")
	}
	out := strings.Join(lines, "")
	// A typo should stop the benchmark here, not later as a daemon that
	// does not start.
	var probe map[string]any
	if _, err := toml.Decode(out, &probe); err != nil {
		return "", fmt.Errorf("tuned config does not parse: %w", err)
	}
	return out, nil
}

// cpuTicks is a process's user + system CPU time in clock ticks, from
// /proc/PID/stat; 0 for pid 0.
func cpuTicks(b *testing.B, pid int) int64 {
	if pid == 0 {
		return 0
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("daemon CPU time: %v", err)
	}
	// The command name (field 2) may hold spaces: count fields after its ")".
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 {
		b.Fatalf("daemon CPU time: /proc/%d/stat unreadable: %q", pid, raw)
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		b.Fatalf("daemon CPU time: /proc/%d/stat unreadable: %q", pid, raw)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("daemon CPU time: /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return utime + stime
}

// ticksToSeconds converts /proc clock ticks: USER_HZ is 100 on every Linux
// architecture Go supports (sysconf(_SC_CLK_TCK) would need cgo).
func ticksToSeconds(t int64) float64 { return float64(t) / 100 }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInts(b *testing.B, name, def string) []int {
	var ns []int
	for _, f := range strings.Fields(envOr(name, def)) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			b.Fatalf("%s: %q is not a positive number", name, f)
		}
		ns = append(ns, n)
	}
	if len(ns) == 0 {
		b.Fatalf("%s is empty", name)
	}
	return ns
}

func TestTuneConfig(t *testing.T) {
	const conf = "[listen]\nsocket = \"/s\"\n\n[deliver]\nlmtp = \"/d\"\n\n[log]\nlevel = \"warn\"\n\n[[rewrite]]\nmatch = 'a'\nreplace = 'b'\n"
	tests := []struct {
		settings []string
		want     map[string]map[string]any // section -> key -> value
		bad      bool
	}{
		{settings: []string{"deliver.max_connections=24"},
			want: map[string]map[string]any{"deliver": {"max_connections": int64(24), "lmtp": "/d"}}},
		{settings: []string{"limits.max_copies=20", "deliver.max_connections=24", "limits.max_recipients=30"},
			want: map[string]map[string]any{
				"limits":  {"max_copies": int64(20), "max_recipients": int64(30)},
				"deliver": {"max_connections": int64(24)},
			}},
		{settings: []string{`listen.shutdown_grace="1s"`},
			want: map[string]map[string]any{"listen": {"shutdown_grace": "1s", "socket": "/s"}}},
		{settings: []string{"max_copies=20"}, bad: true},
		{settings: []string{"limits.max_copies"}, bad: true},
		{settings: []string{"deliver.lmtp=\"/x\""}, bad: true}, // defined twice
	}
	for _, tt := range tests {
		out, err := tuneConfig(conf, tt.settings)
		if tt.bad {
			if err == nil {
				t.Errorf("tuneConfig(%q): got no error, want one; config:\n%s", tt.settings, out)
			}
			continue
		}
		if err != nil {
			t.Errorf("tuneConfig(%q): %v", tt.settings, err)
			continue
		}
		var got map[string]any
		if _, err := toml.Decode(out, &got); err != nil {
			t.Fatalf("tuneConfig(%q) gave a config that does not parse: %v", tt.settings, err)
		}
		for section, keys := range tt.want {
			table, _ := got[section].(map[string]any)
			for k, v := range keys {
				if table[k] != v {
					t.Errorf("tuneConfig(%q): got %s.%s = %v, want %v; config:\n%s", tt.settings, section, k, table[k], v, out)
				}
			}
		}
		if rules, _ := got["rewrite"].([]map[string]any); len(rules) != 1 {
			t.Errorf("tuneConfig(%q): got rewrite rules %v, want the one rule kept", tt.settings, got["rewrite"])
		}
	}
}
