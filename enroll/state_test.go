package enroll

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// enroll makes r active for its address in v (no current certificate).
func enroll(t *testing.T, v *env, r *smimetest.Recipient) {
	t.Helper()
	res := accepted(t, v.handle(r.Addr, signGo(t, r, nil)))
	code := codeOf(t, read(t, only(t, res.Outgoing, "challenge"), r), "confirm")
	accepted(t, v.handle(r.Addr, codeMessage(r.Addr, "confirm "+code)))
}

// TestRestartKeepsPendingChange: a change confirmed before a restart stays
// scheduled across restarts and becomes active only when due, once.
func TestRestartKeepsPendingChange(t *testing.T) {
	v := newEnv(t)
	_, next, code, cancel := changeSetup(t, v)
	start := v.clock.now()
	accepted(t, v.handle(next.Addr, codeMessage(next.Addr, "confirm "+code)))

	v.clock.set(start.Add(DefaultChangeDelay / 2))
	v.open()
	if out := v.tick(); len(out) != 0 {
		t.Fatalf("Tick after a restart sent %d messages", len(out))
	}
	if got := v.state(next.Addr, fp(next)); got != StateScheduled {
		t.Fatalf("state %q after a restart, want %q", got, StateScheduled)
	}
	v.clock.set(start.Add(DefaultChangeDelay - time.Second))
	v.open()
	if got := v.state(next.Addr, fp(next)); got != StateScheduled {
		t.Fatalf("active early after a restart: %q", got)
	}
	v.clock.set(start.Add(DefaultChangeDelay))
	v.open()
	only(t, v.tick(), "activated")
	v.open()
	if out := v.tick(); len(out) != 0 {
		t.Errorf("activated again after a restart: %d messages", len(out))
	}
	if got := v.state(next.Addr, fp(next)); got != StateActive {
		t.Fatalf("state %q, want active", got)
	}
	if res := v.handle(next.Addr, codeMessage(next.Addr, "cancel "+cancel)); !errors.Is(res.Err, ErrBadCode) {
		t.Errorf("cancel code after activation: %v, want ErrBadCode", res.Err)
	}
}

var errCrash = errors.New("simulated crash")

// TestCrashDuringActivation: a crash before, between or after the steps of
// an activation (certificate file, log line, removal of the request) is
// recovered at Open: the certificate ends up active exactly once, with
// one log line, and its notice is sent.
func TestCrashDuringActivation(t *testing.T) {
	tests := []struct {
		step string
		// activeAtOpen: the crash came after the certificate file, so
		// Open itself completes the activation.
		activeAtOpen bool
	}{
		{stepWriteActive, false},
		{stepLog, true},
		{stepRemovePending, true},
	}
	for _, delayed := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s delayed=%v", tt.step, delayed), func(t *testing.T) {
				v := newEnv(t)
				var next *smimetest.Recipient
				crash := func(step string) error {
					if step == tt.step {
						return errCrash
					}
					return nil
				}
				if delayed {
					var code string
					_, next, code, _ = changeSetup(t, v)
					accepted(t, v.handle(next.Addr, codeMessage(next.Addr, "confirm "+code)))
					v.clock.add(DefaultChangeDelay)
					v.e.failAt = crash
					if _, err := v.e.Tick(v.clock.now()); !errors.Is(err, errCrash) {
						t.Fatalf("Tick: %v, want the crash", err)
					}
				} else {
					next = smimetest.NewRecipient(t, "alice@example.test")
					res := accepted(t, v.handle(next.Addr, signGo(t, next, nil)))
					code := codeOf(t, read(t, only(t, res.Outgoing, "challenge"), next), "confirm")
					v.e.failAt = crash
					if _, err := v.e.HandleMessage(next.Addr, bytes.NewReader(codeMessage(next.Addr, "confirm "+code))); !errors.Is(err, errCrash) {
						t.Fatalf("HandleMessage: %v, want the crash", err)
					}
				}

				v.open() // the restart
				want := StateScheduled
				if tt.activeAtOpen {
					want = StateActive
				}
				if got := v.state(next.Addr, fp(next)); got != want {
					t.Fatalf("state %q after Open, want %q", got, want)
				}
				if n := len(v.list()); n != 1 {
					t.Errorf("%d entries after Open, want 1: %+v", n, v.list())
				}
				only(t, v.tick(), "activated")
				if got := v.state(next.Addr, fp(next)); got != StateActive {
					t.Fatalf("state %q after Tick, want active", got)
				}
				v.open()
				if out := v.tick(); len(out) != 0 {
					t.Errorf("%d more messages after a second restart", len(out))
				}
				n := 0
				for _, a := range v.actions() {
					if a == ActionActivate {
						n++
					}
				}
				if n != 1 {
					t.Errorf("%d activate lines in the log, want 1: %q", n, v.actions())
				}
			})
		}
	}
}

// TestExpiryNotices: the last certificate of an address gets a notice 30
// and 7 days before it expires, each once, across restarts; a certificate
// of certs.dir as well; thresholds passed while the daemon was down give
// one notice, not several; a renewal stops them.
func TestExpiryNotices(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	bob := smimetest.NewRecipient(t, "bob@example.test")
	v := newEnv(t)
	enroll(t, v, alice)
	until := alice.Cert.NotAfter
	const day = 24 * time.Hour
	steps := []struct {
		before  time.Duration
		restart bool
		want    int
	}{
		{40 * day, false, 0},
		{30 * day, false, 1},
		{30*day - time.Minute, false, 0},
		{29 * day, true, 0},
		{8 * day, false, 0},
		{7 * day, true, 1},
		{6 * day, true, 0},
		{time.Hour, false, 0},
	}
	for _, s := range steps {
		v.clock.set(until.Add(-s.before))
		if s.restart {
			v.open()
		}
		var got []Outgoing
		for _, o := range v.tick() {
			if o.Purpose == "expiry" {
				got = append(got, o)
			}
		}
		if len(got) != s.want {
			t.Fatalf("%v before expiry: %d notices, want %d", s.before, len(got), s.want)
		}
		for _, o := range got {
			txt := read(t, o, alice)
			if !strings.Contains(txt, when(until)) || !strings.Contains(txt, enrollAddr) {
				t.Errorf("notice does not say when, or how to enroll:\n%s", txt)
			}
		}
	}

	t.Run("certs.dir certificate, thresholds passed while down", func(t *testing.T) {
		v := newEnv(t)
		v.setCurrent(bob.Addr, bob.Cert)
		v.clock.set(bob.Cert.NotAfter.Add(-5 * day))
		o := only(t, v.tick(), "expiry")
		if o.To != bob.Addr || len(o.EncryptTo) != 1 || !o.EncryptTo[0].Equal(bob.Cert) {
			t.Errorf("notice to %s for %d certificates", o.To, len(o.EncryptTo))
		}
		read(t, o, bob)
		v.clock.add(day)
		if out := v.tick(); len(out) != 0 {
			t.Errorf("%d more notices", len(out))
		}
	})

	t.Run("renewal", func(t *testing.T) {
		v := newEnv(t)
		v.setCurrent(bob.Addr, bob.Cert)
		v.clock.set(bob.Cert.NotAfter.Add(-20 * day))
		only(t, v.tick(), "expiry")
		renewed := renew(t, bob, bob.Cert.NotAfter.Add(365*day))
		v.setCurrent(bob.Addr, bob.Cert, renewed)
		v.clock.set(bob.Cert.NotAfter.Add(-7 * day))
		if out := v.tick(); len(out) != 0 {
			t.Errorf("warned about %s although a later certificate exists", fp(bob))
		}
	})
}

// TestLimits: over a limit, the request is refused with a temporary
// error, and the limits on addresses survive a restart.
func TestLimits(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	alice2 := smimetest.NewRecipient(t, "alice@example.test")
	alice3 := smimetest.NewRecipient(t, "alice@example.test")
	bob := smimetest.NewRecipient(t, "bob@example.test")
	carol := smimetest.NewRecipient(t, "carol@example.test")
	type msg struct {
		from string
		r    *smimetest.Recipient
	}
	tests := []struct {
		name    string
		mods    func(*Options)
		ok      []msg
		refused msg
		// restart before the refused message: the limit must hold.
		restart bool
	}{
		{name: "per sender", mods: func(o *Options) { o.MaxRequestsPerSenderPerDay = 2 },
			ok: []msg{{"m@example.net", alice}, {"m@example.net", bob}}, refused: msg{"m@example.net", carol}},
		{name: "per address", mods: func(o *Options) { o.MaxRequestsPerAddressPerDay = 2 }, restart: true,
			ok: []msg{{"a@example.net", alice}, {"b@example.net", alice}}, refused: msg{"c@example.net", alice}},
		{name: "pending per address", mods: func(o *Options) { o.MaxPendingPerAddress = 2 },
			ok: []msg{{"a@example.net", alice}, {"b@example.net", alice2}}, refused: msg{"c@example.net", alice3}},
		{name: "pending in total", mods: func(o *Options) { o.MaxPendingTotal = 2 },
			ok: []msg{{"a@example.net", alice}, {"b@example.net", bob}}, refused: msg{"c@example.net", carol}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t, tt.mods)
			for _, m := range tt.ok {
				accepted(t, v.handle(m.from, signGo(t, m.r, nil)))
			}
			if tt.restart {
				v.open()
			}
			signed := signGo(t, tt.refused.r, nil)
			res := v.handle(tt.refused.from, signed)
			if !errors.Is(res.Err, ErrOverLimit) || !Temporary(res.Err) || len(res.Outgoing) != 0 {
				t.Fatalf("err = %v with %d messages, want a temporary ErrOverLimit and nothing sent", res.Err, len(res.Outgoing))
			}
			if tt.name == "per sender" || tt.name == "per address" {
				v.clock.add(limitWindow + time.Second)
				accepted(t, v.handle(tt.refused.from, signed))
			}
		})
	}
}

// TestLogLines: one JSON object a line, one line per action, with the named
// fields; untrusted text is bounded.
func TestLogLines(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	long := strings.Repeat("x", 5000) + "\n@example.net"
	res := accepted(t, v.handle(long, signGo(t, alice, nil)))
	code := codeOf(t, read(t, only(t, res.Outgoing, "challenge"), alice), "confirm")
	accepted(t, v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+code)))

	data, err := os.ReadFile(filepath.Join(v.dir, logFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	wantActions := []string{ActionRequest, ActionConfirm, ActionActivate}
	if len(lines) != len(wantActions) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(wantActions), data)
	}
	for i, line := range lines {
		if len(line) > maxLogLine {
			t.Errorf("line %d has %d bytes", i+1, len(line))
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		for _, k := range []string{"time", "address", "action", "fingerprint", "requester", "outcome"} {
			if _, ok := m[k]; !ok {
				t.Errorf("line %d lacks %q: %s", i+1, k, line)
			}
		}
		if m["action"] != wantActions[i] || m["address"] != alice.Addr || m["fingerprint"] != fp(alice) {
			t.Errorf("line %d: %s", i+1, line)
		}
		if strings.ContainsAny(m["requester"].(string), "\n\r") {
			t.Errorf("line %d: control characters in the requester", i+1)
		}
	}
}

// TestTornLogLine: a log line cut short by a crash is dropped, and the next
// line starts clean.
func TestTornLogLine(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	bob := smimetest.NewRecipient(t, "bob@example.test")
	v := newEnv(t)
	accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
	f, err := os.OpenFile(filepath.Join(v.dir, logFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"time":"2026-`)
	f.Close()
	v.open()
	if got := v.actions(); !slices.Equal(got, []string{ActionRequest}) {
		t.Fatalf("log with a torn line: %q", got)
	}
	accepted(t, v.handle(bob.Addr, signGo(t, bob, nil)))
	if got := v.actions(); !slices.Equal(got, []string{ActionRequest, ActionRequest}) {
		t.Fatalf("log after the next line: %q", got)
	}
}

// TestStateDirectory: created 0700, with the layout the store and the
// administrator rely on; temporary files a crash left are removed.
func TestStateDirectory(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	fi, err := os.Stat(v.dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("mode %v, want 0700", fi.Mode().Perm())
	}
	enroll(t, v, alice)
	stale := filepath.Join(v.dir, pendingDir, ".x.json.123.tmp")
	os.WriteFile(stale, []byte("{"), 0o600)
	v.open()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Error("stale temporary file kept")
	}
	data := readActiveFile(t, v, alice.Addr, fp(alice))
	for _, want := range []string{"Enrolled-Address: " + alice.Addr + "\n", "Enrolled-Fingerprint: " + fp(alice) + "\n", "-----BEGIN CERTIFICATE-----"} {
		if !strings.Contains(data, want) {
			t.Errorf("active file lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(data, "PRIVATE") {
		t.Error("a private key in the state directory")
	}
}

// TestReadOnly: List and Log work on a directory that does not exist yet
// or is in use, and nothing is written.
func TestReadOnly(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	missing := filepath.Join(t.TempDir(), "none")
	ro, err := Open(Options{Dir: missing, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := ro.List(); err != nil || len(l) != 0 {
		t.Errorf("List of a missing directory: %v, %v", l, err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Error("read-only Open created the directory")
	}

	v := newEnv(t)
	accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
	ro, err = Open(Options{Dir: v.dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if l, err := ro.List(); err != nil || len(l) != 1 || l[0].State != StateAwaiting {
		t.Errorf("List: %+v, %v", l, err)
	}
	if l, err := ro.Log(); err != nil || len(l) != 1 {
		t.Errorf("Log: %+v, %v", l, err)
	}
	if _, err := ro.HandleMessage(alice.Addr, strings.NewReader("")); !errors.Is(err, ErrReadOnly) {
		t.Errorf("HandleMessage: %v, want ErrReadOnly", err)
	}
	if _, err := ro.Tick(time.Now()); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Tick: %v, want ErrReadOnly", err)
	}
}

// TestConcurrentUse: the daemon's engine and a second one on the same
// directory (the command line) serve at once without losing anything.
func TestConcurrentUse(t *testing.T) {
	rs := []*smimetest.Recipient{
		smimetest.NewRecipient(t, "alice@example.test"), smimetest.NewRecipient(t, "bob@example.test"),
		smimetest.NewRecipient(t, "carol@example.test"), smimetest.NewRecipient(t, "dave@example.test"),
	}
	v := newEnv(t)
	second, err := Open(v.options())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	msgs := make([][]byte, len(rs))
	for i, r := range rs {
		msgs[i] = signGo(t, r, nil)
	}
	var wg sync.WaitGroup
	for i, r := range rs {
		e := v.e
		if i%2 == 1 {
			e = second
		}
		wg.Go(func() {
			if res, err := e.HandleMessage(r.Addr, bytes.NewReader(msgs[i])); err != nil || res.Err != nil {
				t.Errorf("%s: %v %v", r.Addr, err, res.Err)
			}
		})
		wg.Go(func() {
			if _, err := e.Tick(time.Now()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := len(v.list()); n != len(rs) {
		t.Errorf("%d requests, want %d", n, len(rs))
	}
	if n := len(v.log()); n != len(rs) {
		t.Errorf("%d log lines, want %d", n, len(rs))
	}
}

// TestMailto: the link is RFC 6068 and parses back to the Subject.
func TestMailto(t *testing.T) {
	tests := []struct {
		addr, subject, want string
	}{
		{"keys@example.org", "confirm ABCD-EFGH", "mailto:keys@example.org?subject=confirm%20ABCD-EFGH"},
		{"keys+enroll@example.org", "a+b&c=d?e", "mailto:keys+enroll@example.org?subject=a%2Bb%26c%3Dd%3Fe"},
		{`"key desk"@example.org`, "x", "mailto:%22key%20desk%22@example.org?subject=x"},
		{"a/b?c#d@example.org", "é", "mailto:a%2Fb%3Fc%23d@example.org?subject=%C3%A9"},
	}
	for _, tt := range tests {
		got := mailtoURL(tt.addr, tt.subject)
		if got != tt.want {
			t.Errorf("mailtoURL(%q, %q) = %q, want %q", tt.addr, tt.subject, got, tt.want)
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatal(err)
		}
		to, _ := url.PathUnescape(u.Opaque)
		if to != tt.addr || u.Query().Get("subject") != tt.subject {
			t.Errorf("%s parses to %q, %q", got, to, u.Query().Get("subject"))
		}
	}
}

// TestCodesIn: what counts as a code in a Subject.
func TestCodesIn(t *testing.T) {
	const c = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567"
	const canon = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	tests := []struct {
		subject string
		want    []string
	}{
		{"confirm " + c, []string{canon}},
		{"Re: Confirm " + strings.ToLower(c), []string{canon}},
		{"confirm " + canon, []string{canon}},
		{"[" + c + "]", []string{canon}},
		{"confirm " + c + "8", nil},      // 8 is no base32 digit
		{"confirm " + c[:len(c)-1], nil}, // too short
		{"Encrypt my mail", nil},
	}
	for _, tt := range tests {
		if got := codesIn(tt.subject); !slices.Equal(got, tt.want) {
			t.Errorf("codesIn(%q) = %q, want %q", tt.subject, got, tt.want)
		}
	}
}
