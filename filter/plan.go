package filter

import (
	"fmt"
	"slices"
	"strings"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/recipients"
)

// MissingPolicy says what happens to a recipient without a usable
// certificate.
type MissingPolicy string

const (
	// Tempfail: 451 4.7.0 at RCPT; the mail waits in Postfix's queue until
	// a certificate appears or the queue lifetime ends.
	Tempfail MissingPolicy = "tempfail"
	// Reject: 550 5.7.1 at RCPT; the sender gets a bounce.
	Reject MissingPolicy = "reject"
	// Plaintext: delivered unencrypted, marked with PlaintextHeader.
	Plaintext MissingPolicy = "plaintext"
)

// Policy picks the MissingPolicy for an address: the address's own entry,
// else its domain's, else Default. Domains are compared case-insensitively
// (NewBackend folds the keys), local parts exactly.
type Policy struct {
	Default   MissingPolicy
	Domains   map[string]MissingPolicy
	Addresses map[string]MissingPolicy
}

// folded returns p with its keys' domains in lower case, as For looks
// them up.
func (p Policy) folded() Policy {
	out := Policy{Default: p.Default}
	if len(p.Domains) > 0 {
		out.Domains = make(map[string]MissingPolicy, len(p.Domains))
		for k, v := range p.Domains {
			out.Domains[strings.ToLower(k)] = v
		}
	}
	if len(p.Addresses) > 0 {
		out.Addresses = make(map[string]MissingPolicy, len(p.Addresses))
		for k, v := range p.Addresses {
			out.Addresses[lowerDomain(k)] = v
		}
	}
	return out
}

// For returns the policy for addr.
func (p Policy) For(addr string) MissingPolicy {
	if pol, ok := p.Addresses[lowerDomain(addr)]; ok {
		return pol
	}
	if pol, ok := p.Domains[recipients.Domain(addr)]; ok {
		return pol
	}
	if p.Default == "" {
		return Tempfail
	}
	return p.Default
}

func lowerDomain(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr
	}
	return addr[:at+1] + strings.ToLower(addr[at+1:])
}

// action is what happens to one recipient's copy.
type action int

const (
	actEncrypt    action = iota // S/MIME, to the recipient's certificates
	actEncryptPGP               // PGP/MIME, to the recipient's OpenPGP keys
	actPlaintext                // no certificate or key, policy plaintext: marked, unencrypted
	actPass                     // already encrypted: delivered unchanged
	actReinject                 // not hosted here: handed back unchanged
	actRefused                  // refused at RCPT
	actEnroll                   // to the enrollment address: to the engine, never delivered (enroll.go)
)

func (a action) String() string {
	return [...]string{"encrypt", "encrypt-openpgp", "plaintext", "passthrough", "reinject", "refused", "enroll"}[a]
}

// encrypts: the copy is encrypted here, in one format or the other.
func (a action) encrypts() bool { return a == actEncrypt || a == actEncryptPGP }

// Prefer says which format a recipient with both a certificate and an
// OpenPGP key gets.
type Prefer string

const (
	PreferSMIME   Prefer = "smime"
	PreferOpenPGP Prefer = "openpgp"
)

// rcpt is the plan for one RCPT TO, decided when it arrives.
type rcpt struct {
	addr      string // as received: go-smtp's key for its status
	rewritten string
	action    action
	certs     []*certs.Cert // for actEncrypt
	keys      []*certs.Key  // for actEncryptPGP
}

// planner decides a recipient's plan from the configuration and one
// certificate store snapshot. It does no I/O, so every rule of the plan is
// table-tested on its own (plan_test.go); the one question it cannot answer
// (does the mail store know this user?) is left to the caller.
type planner struct {
	rewriter        *recipients.Rewriter
	lookupRewritten bool
	delimiter       string
	policy          Policy
	prefer          Prefer
	// hosted is nil when every domain is delivered here.
	hosted map[string]bool
}

// plan returns the recipient's plan. A recipient without a usable
// certificate whose policy is not plaintext gets missing: the policy's
// error (ErrNoCertificate or ErrPolicyReject), to be returned unless the
// mail store refuses the address outright. err is set when the address
// cannot be planned at all (a rewrite rule produced an invalid address).
func (p *planner) plan(to string, store *certs.Store) (r *rcpt, missing, err error) {
	r = &rcpt{addr: to}
	rw, err := p.rewriter.Rewrite(to)
	r.rewritten = rw
	if err != nil {
		// A rule produced an unusable address: the configuration is wrong,
		// not the mail, so the mail waits until it is fixed.
		return r, nil, fmt.Errorf("recipient %q: %w", to, err)
	}
	if p.hosted != nil && !p.hosted[recipients.Domain(rw)] {
		r.action = actReinject
		return r, nil, nil
	}
	key := to
	if p.lookupRewritten {
		key = rw
	}
	if store != nil {
		r.certs, r.keys = store.Lookup(key), store.LookupKeys(key)
		if len(r.certs) == 0 && len(r.keys) == 0 {
			if base, ok := stripDetail(key, p.delimiter); ok {
				// alice+lists@ is alice's mailbox and alice's key.
				r.certs, r.keys = store.Lookup(base), store.LookupKeys(base)
			}
		}
	}
	switch {
	case len(r.certs) > 0 && (len(r.keys) == 0 || p.prefer != PreferOpenPGP):
		r.action, r.keys = actEncrypt, nil
		return r, nil, nil
	case len(r.keys) > 0:
		r.action, r.certs = actEncryptPGP, nil
		return r, nil, nil
	}
	switch p.policy.For(key) {
	case Plaintext:
		r.action = actPlaintext
		return r, nil, nil
	case Reject:
		return r, fmt.Errorf("recipient %q: %w", key, ErrPolicyReject), nil
	}
	return r, fmt.Errorf("recipient %q: %w", key, ErrNoCertificate), nil
}

// stripDetail removes a subaddress ("+detail", with any of the delimiter
// characters, as Postfix's recipient_delimiter) from addr's local part.
func stripDetail(addr, delims string) (string, bool) {
	if delims == "" {
		return "", false
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "", false
	}
	i := strings.IndexAny(addr[:at], delims)
	if i <= 0 {
		return "", false
	}
	return addr[:i] + addr[at:], true
}

// copyKey names the copy a recipient gets: same key, same bytes. Encrypted
// copies are one per distinct certificate set, so that no envelope names a
// recipient of another copy (no Bcc leak).
func copyKey(act action, cs []*certs.Cert, ks []*certs.Key) string {
	if !act.encrypts() {
		return act.String()
	}
	fps := make([]string, 0, len(cs)+len(ks))
	for _, c := range cs {
		fps = append(fps, c.Fingerprint)
	}
	for _, k := range ks {
		fps = append(fps, k.Fingerprint)
	}
	slices.Sort(fps)
	return act.String() + "|" + strings.Join(fps, ",")
}
