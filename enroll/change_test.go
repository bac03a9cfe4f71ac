package enroll

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// changeSetup: alice@ already has a certificate in certs.dir (holder);
// a request for a new one (next) has been made. It returns the challenge
// code and the holder's cancel code.
func changeSetup(t *testing.T, v *env) (holder, next *smimetest.Recipient, code, cancel string) {
	t.Helper()
	holder = smimetest.NewRecipient(t, "alice@example.test", smimetest.KeyName("alice-old"))
	next = smimetest.NewRecipient(t, "alice@example.test")
	v.setCurrent(holder.Addr, holder.Cert)
	res := accepted(t, v.handle("someone@example.net", signGo(t, next, nil)))
	if len(res.Outgoing) != 2 {
		t.Fatalf("%d outgoing, want the challenge and the notice to the holder", len(res.Outgoing))
	}
	ch, notice := only(t, res.Outgoing, "challenge"), only(t, res.Outgoing, "change-notice")
	if len(ch.EncryptTo) != 1 || !ch.EncryptTo[0].Equal(next.Cert) {
		t.Fatal("challenge not encrypted to the requested certificate alone")
	}
	if len(notice.EncryptTo) != 1 || !notice.EncryptTo[0].Equal(holder.Cert) {
		t.Fatal("notice not encrypted to the current certificate alone")
	}
	text := read(t, notice, holder)
	for _, want := range []string{"someone@example.net", fp(next), "takes effect 3 days later"} {
		if !strings.Contains(text, want) {
			t.Errorf("holder's notice does not say %q:\n%s", want, text)
		}
	}
	return holder, next, codeOf(t, read(t, ch, next), "confirm"), codeOf(t, text, "cancel")
}

// TestChangeWaitsForDelay: confirming a new certificate for an address
// that has one schedules it ChangeDelay later; the holder is told, with a
// fresh cancel code; only when the delay has passed does Tick activate it,
// with a notice to every certificate then active.
func TestChangeWaitsForDelay(t *testing.T) {
	v := newEnv(t)
	holder, next, code, _ := changeSetup(t, v)
	start := v.clock.now()

	res := accepted(t, v.handle(next.Addr, codeMessage(next.Addr, "Re: confirm "+strings.ToLower(code))))
	scheduled := only(t, res.Outgoing, "change-notice")
	if len(scheduled.EncryptTo) != 1 || !scheduled.EncryptTo[0].Equal(holder.Cert) {
		t.Error("confirmed-change notice not encrypted to the certificates active now")
	}
	text := read(t, scheduled, holder)
	codeOf(t, text, "cancel")
	if !strings.Contains(text, when(start.Add(DefaultChangeDelay))) {
		t.Errorf("notice does not say when:\n%s", text)
	}
	read(t, only(t, res.Outgoing, "confirmed"), next)
	if got := v.state(next.Addr, fp(next)); got != StateScheduled {
		t.Fatalf("state %q after confirmation, want %q", got, StateScheduled)
	}

	v.clock.set(start.Add(DefaultChangeDelay - time.Second))
	if out := v.tick(); len(out) != 0 || v.state(next.Addr, fp(next)) != StateScheduled {
		t.Fatal("activated before the delay")
	}
	v.clock.set(start.Add(DefaultChangeDelay))
	out := v.tick()
	act := only(t, out, "activated")
	if len(act.EncryptTo) != 2 || !slices.ContainsFunc(act.EncryptTo, holder.Cert.Equal) || !slices.ContainsFunc(act.EncryptTo, next.Cert.Equal) {
		t.Errorf("activation notice for %d certificates, want the old and the new", len(act.EncryptTo))
	}
	read(t, act, holder)
	if got := v.state(next.Addr, fp(next)); got != StateActive {
		t.Fatalf("state %q after the delay, want active", got)
	}
	if out := v.tick(); len(out) != 0 {
		t.Errorf("a second Tick sent %d messages", len(out))
	}
	if got, want := v.actions(), []string{ActionRequest, ActionConfirm, ActionActivate}; !slices.Equal(got, want) {
		t.Errorf("log %q, want %q", got, want)
	}
}

// TestCancel: the cancel code of either notice stops the change, before or
// after confirmation; it works once; the administrator can cancel too.
func TestCancel(t *testing.T) {
	tests := []struct {
		name    string
		confirm bool // confirm first, then cancel with the second notice's code
		admin   bool
	}{
		{name: "before confirmation"},
		{name: "during the delay", confirm: true},
		{name: "by the administrator", confirm: true, admin: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t)
			holder, next, code, cancel := changeSetup(t, v)
			if tt.confirm {
				res := accepted(t, v.handle(next.Addr, codeMessage(next.Addr, "confirm "+code)))
				cancel = codeOf(t, read(t, only(t, res.Outgoing, "change-notice"), holder), "cancel")
			}
			var notice Outgoing
			if tt.admin {
				out, err := v.e.Cancel(next.Addr)
				if err != nil || len(out) != 1 {
					t.Fatalf("Cancel: %d, %v", len(out), err)
				}
				notice = out[0]
			} else {
				res := accepted(t, v.handle(holder.Addr, codeMessage(holder.Addr, "cancel "+cancel)))
				notice = only(t, res.Outgoing, "cancelled")
			}
			if !strings.Contains(read(t, notice, holder), "cancelled") {
				t.Error("the cancellation notice does not say so")
			}
			if len(v.list()) != 0 {
				t.Fatalf("after cancelling: %+v", v.list())
			}
			v.clock.add(DefaultChangeDelay + time.Hour)
			v.tick()
			if len(v.list()) != 0 {
				t.Fatal("activated after cancellation")
			}
			for _, c := range []string{cancel, code} {
				if res := v.handle(holder.Addr, codeMessage(holder.Addr, "cancel "+c)); !errors.Is(res.Err, ErrBadCode) {
					t.Errorf("code used again: %v, want ErrBadCode", res.Err)
				}
			}
			log := v.log()
			if last := log[len(log)-1]; last.Action != ActionCancel || (tt.admin && last.Requester != "admin") {
				t.Errorf("last log line %+v, want a cancel", last)
			}
		})
	}
}

// TestBadCodes: a wrong, used or expired code changes nothing and gets a
// permanent refusal.
func TestBadCodes(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	tests := []struct {
		name    string
		subject func(t *testing.T, v *env, code string) string
	}{
		{"wrong code", func(t *testing.T, v *env, code string) string {
			c := []byte(code)
			if c[0] == 'A' {
				c[0] = 'B'
			} else {
				c[0] = 'A'
			}
			return "confirm " + string(c)
		}},
		{"expired code", func(t *testing.T, v *env, code string) string {
			v.clock.add(DefaultCodeLifetime)
			return "confirm " + code
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newEnv(t)
			res := accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
			code := codeOf(t, read(t, only(t, res.Outgoing, "challenge"), alice), "confirm")
			before, logBefore := v.list(), v.log()
			res = v.handle(alice.Addr, codeMessage(alice.Addr, tt.subject(t, v, code)))
			if !errors.Is(res.Err, ErrBadCode) || Temporary(res.Err) {
				t.Fatalf("err = %v, want permanent ErrBadCode", res.Err)
			}
			if len(res.Outgoing) != 0 || !slices.EqualFunc(before, v.list(), func(a, b Entry) bool { return a.State == b.State }) || len(v.log()) != len(logBefore) {
				t.Error("a bad code changed something")
			}
		})
	}

	t.Run("replayed code", func(t *testing.T) {
		v := newEnv(t)
		res := accepted(t, v.handle(alice.Addr, signGo(t, alice, nil)))
		code := codeOf(t, read(t, only(t, res.Outgoing, "challenge"), alice), "confirm")
		accepted(t, v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+code)))
		logBefore := v.log()
		if res := v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+code)); !errors.Is(res.Err, ErrBadCode) {
			t.Fatalf("replay: err = %v, want ErrBadCode", res.Err)
		}
		if len(v.log()) != len(logBefore) {
			t.Error("the replay was logged as an action")
		}
	})
}

// TestReRequestAddsCode: asking again for the same certificate keeps the
// earlier code working (a replayed signed message cannot invalidate the
// user's code) and does not add a request.
func TestReRequestAddsCode(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	msg := signGo(t, alice, nil)
	first := codeOf(t, read(t, only(t, accepted(t, v.handle(alice.Addr, msg)).Outgoing, "challenge"), alice), "confirm")
	second := codeOf(t, read(t, only(t, accepted(t, v.handle("replayer@example.net", msg)).Outgoing, "challenge"), alice), "confirm")
	if first == second {
		t.Fatal("the same code twice")
	}
	if n := len(v.list()); n != 1 {
		t.Fatalf("%d entries, want one request", n)
	}
	accepted(t, v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+first)))
	if res := v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+second)); !errors.Is(res.Err, ErrBadCode) {
		t.Errorf("the other code of a confirmed request: %v, want ErrBadCode", res.Err)
	}
	if res := accepted(t, v.handle(alice.Addr, msg)); len(res.Outgoing) != 0 || !strings.Contains(res.Text, "already active") {
		t.Errorf("request for the active certificate: %q with %d messages", res.Text, len(res.Outgoing))
	}
}

// TestForgedRequest: a certificate for someone else's address, signed by
// whoever holds its key, reaches that address only as a challenge
// encrypted to the forger's certificate (the victim cannot read it, the
// forger cannot read the mailbox), the victim's current certificate is
// told, and nothing changes.
func TestForgedRequest(t *testing.T) {
	victim := smimetest.NewRecipient(t, "alice@example.test", smimetest.KeyName("alice-old"))
	forged := smimetest.NewRecipient(t, "alice@example.test", smimetest.KeyName("mallory"))
	v := newEnv(t)
	v.setCurrent(victim.Addr, victim.Cert)
	res := accepted(t, v.handle("mallory@elsewhere.example", signGo(t, forged, nil)))
	ch := only(t, res.Outgoing, "challenge")
	if _, err := smimetest.DecryptMessage(t, encrypt(t, ch), victim); err == nil {
		t.Error("the victim's key opens the forger's challenge")
	}
	notice := read(t, only(t, res.Outgoing, "change-notice"), victim)
	if !strings.Contains(notice, "mallory@elsewhere.example") || !strings.Contains(notice, fp(forged)) {
		t.Errorf("the victim is not told who asked for what:\n%s", notice)
	}
	v.clock.add(DefaultCodeLifetime + DefaultChangeDelay)
	v.tick()
	if len(v.list()) != 0 {
		t.Errorf("the forged request left %+v", v.list())
	}
	if got := v.actions(); !slices.Equal(got, []string{ActionRequest, ActionExpire}) {
		t.Errorf("log %q, want request, expire", got)
	}
}

// TestRemove: the administrator removes an enrolled certificate; the
// address is told; the log says who.
func TestRemove(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.test")
	v := newEnv(t)
	code := codeOf(t, read(t, only(t, accepted(t, v.handle(alice.Addr, signGo(t, alice, nil))).Outgoing, "challenge"), alice), "confirm")
	accepted(t, v.handle(alice.Addr, codeMessage(alice.Addr, "confirm "+code)))
	if _, err := v.e.Remove(alice.Addr, "00"+fp(alice)[2:]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove of an unknown fingerprint: %v, want ErrNotFound", err)
	}
	out, err := v.e.Remove("alice@EXAMPLE.test", strings.ToUpper(fp(alice)))
	if err != nil {
		t.Fatal(err)
	}
	if txt := read(t, only(t, out, "removed"), alice); !strings.Contains(txt, "removed") {
		t.Errorf("removal notice:\n%s", txt)
	}
	if len(v.list()) != 0 {
		t.Error("still listed after Remove")
	}
	log := v.log()
	if last := log[len(log)-1]; last.Action != ActionRemove || last.Requester != "admin" || last.Fingerprint != fp(alice) {
		t.Errorf("last log line %+v", last)
	}
}
