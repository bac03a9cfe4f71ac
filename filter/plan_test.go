package filter

import (
	"errors"
	"testing"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/recipients"
)

// TestPlan: every rule of the per-recipient plan, without I/O: rewriting,
// hosted domains, lookup by original or rewritten address, subaddresses,
// and the missing-certificate policy per address, domain and default.
func TestPlan(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	quoted := smimetest.NewRecipient(t, `"john doe"@example.org`)
	carol := smimetest.NewRecipient(t, "carol@example.org")
	keys := []*pgpUser{newPGPUser(t, "bob@example.org"), newPGPUser(t, "carol@example.org")}
	store, err := certs.Load(certs.Options{Dir: keyDir(t, []*smimetest.Recipient{alice, quoted, carol}, keys)})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := recipients.Compile([]recipients.Rule{
		{Match: `^(.*)@old\.example$`, Replace: `$1@example.org`},
		{Match: `^broken@`, Replace: "a\tb@"},
	})
	if err != nil {
		t.Fatal(err)
	}
	policy := Policy{
		Default:   Tempfail,
		Domains:   map[string]MissingPolicy{"open.example": Plaintext, "strict.example": Reject},
		Addresses: map[string]MissingPolicy{"vip@open.example": Reject},
	}.folded()
	base := planner{rewriter: rw, policy: policy, delimiter: "+"}
	for _, tc := range []struct {
		name      string
		p         planner
		to        string
		store     *certs.Store
		rewritten string
		action    action
		certs     int
		keys      int
		missing   error // the policy's verdict when there is no certificate
		err       error
	}{
		{name: "certificate", p: base, to: "alice@example.org", store: store, rewritten: "alice@example.org", action: actEncrypt, certs: 1},
		{name: "domain case", p: base, to: "alice@EXAMPLE.org", store: store, rewritten: "alice@EXAMPLE.org", action: actEncrypt, certs: 1},
		{name: "quoted local part as go-smtp gives it", p: base, to: "john doe@example.org", store: store, rewritten: "john doe@example.org", action: actEncrypt, certs: 1},
		{name: "subaddress uses the base certificate", p: base, to: "alice+lists@example.org", store: store, rewritten: "alice+lists@example.org", action: actEncrypt, certs: 1},
		{name: "no delimiter, no base", p: planner{rewriter: rw, policy: policy}, to: "alice+lists@example.org", store: store, rewritten: "alice+lists@example.org", missing: ErrNoCertificate},
		{name: "looked up by original address", p: base, to: "alice@old.example", store: store, rewritten: "alice@example.org", missing: ErrNoCertificate},
		{name: "looked up by rewritten address", p: planner{rewriter: rw, policy: policy, lookupRewritten: true}, to: "alice@old.example", store: store, rewritten: "alice@example.org", action: actEncrypt, certs: 1},
		{name: "no store", p: base, to: "alice@example.org", rewritten: "alice@example.org", missing: ErrNoCertificate},
		{name: "OpenPGP key", p: base, to: "bob@example.org", store: store, rewritten: "bob@example.org", action: actEncryptPGP, keys: 1},
		{name: "subaddress uses the base key", p: base, to: "bob+x@example.org", store: store, rewritten: "bob+x@example.org", action: actEncryptPGP, keys: 1},
		{name: "both: S/MIME by default", p: base, to: "carol@example.org", store: store, rewritten: "carol@example.org", action: actEncrypt, certs: 1},
		{name: "both: prefer openpgp", p: planner{rewriter: rw, policy: policy, prefer: PreferOpenPGP}, to: "carol@example.org", store: store, rewritten: "carol@example.org", action: actEncryptPGP, keys: 1},
		{name: "prefer openpgp, certificate only", p: planner{rewriter: rw, policy: policy, prefer: PreferOpenPGP}, to: "alice@example.org", store: store, rewritten: "alice@example.org", action: actEncrypt, certs: 1},
		{name: "default policy", p: base, to: "dave@example.org", store: store, rewritten: "dave@example.org", missing: ErrNoCertificate},
		{name: "domain policy plaintext", p: base, to: "bob@Open.Example", store: store, rewritten: "bob@Open.Example", action: actPlaintext},
		{name: "domain policy reject", p: base, to: "bob@strict.example", store: store, rewritten: "bob@strict.example", missing: ErrPolicyReject},
		{name: "address policy wins", p: base, to: "vip@open.example", store: store, rewritten: "vip@open.example", missing: ErrPolicyReject},
		{name: "empty default is tempfail", p: planner{rewriter: rw}, to: "dave@example.org", store: store, rewritten: "dave@example.org", missing: ErrNoCertificate},
		{name: "not hosted: reinjected", p: planner{rewriter: rw, policy: policy, hosted: map[string]bool{"example.org": true}}, to: "carol@elsewhere.example", store: store, rewritten: "carol@elsewhere.example", action: actReinject},
		{name: "hosted after rewriting", p: planner{rewriter: rw, policy: policy, hosted: map[string]bool{"example.org": true}}, to: "alice@old.example", store: store, rewritten: "alice@example.org", missing: ErrNoCertificate},
		{name: "rule gives an invalid address", p: base, to: "broken@example.org", store: store, rewritten: "a\tb@example.org", err: recipients.ErrInvalidAddress},
		{name: "unchanged odd address is not judged", p: base, to: "x y@example.org", store: store, rewritten: "x y@example.org", missing: ErrNoCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, missing, err := tc.p.plan(tc.to, tc.store)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if r.addr != tc.to || r.rewritten != tc.rewritten {
				t.Errorf("addr, rewritten = %q, %q; want %q, %q", r.addr, r.rewritten, tc.to, tc.rewritten)
			}
			if tc.err != nil {
				return
			}
			if !errors.Is(missing, tc.missing) || (tc.missing == nil && missing != nil) {
				t.Fatalf("missing = %v, want %v", missing, tc.missing)
			}
			if tc.missing == nil && (r.action != tc.action || len(r.certs) != tc.certs || len(r.keys) != tc.keys) {
				t.Errorf("action %v with %d certificates and %d keys, want %v with %d and %d", r.action, len(r.certs), len(r.keys), tc.action, tc.certs, tc.keys)
			}
		})
	}
}

// TestCopyKey: recipients with the same certificate set share a copy,
// whatever the order; different sets and different actions do not.
func TestCopyKey(t *testing.T) {
	a := &certs.Cert{Fingerprint: "aa"}
	b := &certs.Cert{Fingerprint: "bb"}
	if copyKey(actEncrypt, []*certs.Cert{a, b}, nil) != copyKey(actEncrypt, []*certs.Cert{b, a}, nil) {
		t.Error("the same set in another order makes another copy")
	}
	for _, pair := range [][2]string{
		{copyKey(actEncrypt, []*certs.Cert{a}, nil), copyKey(actEncrypt, []*certs.Cert{a, b}, nil)},
		{copyKey(actEncrypt, []*certs.Cert{a}, nil), copyKey(actPlaintext, nil, nil)},
		{copyKey(actPass, nil, nil), copyKey(actReinject, nil, nil)},
	} {
		if pair[0] == pair[1] {
			t.Errorf("%q and %q share a copy", pair[0], pair[1])
		}
	}
}
