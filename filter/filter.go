// Package filter is smimefilter's LMTP backend: a go-smtp Backend that takes
// mail from Postfix (LMTP, RFC 2033; SMTP semantics from RFC 5321, BDAT from
// RFC 3030), decides a plan for every recipient (rewrite, certificate
// lookup, policy: plan.go), encrypts each message once per format its copies
// need (S/MIME per RFC 8551 and RFC 5652 through package smime, PGP/MIME per
// RFC 3156 through package pgpmime, RFC 9788 header protection in both:
// seals.go), sends one copy per certificate or key set (copies.go; the first streams while the
// message arrives, live.go) through package deliver, and
// reports every recipient's outcome back, one reply each as RFC 2033 §4.2
// requires.
//
// Promises kept here: a recipient gets 250 only after the next hop accepted
// that recipient's copy; every other outcome is a reply chosen by Status,
// temporary unless failure is certain; no plaintext is ever written to disk
// (the spool holds ciphertext only); a panic defers the recipients it
// concerns and the daemon goes on.
package filter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/enroll"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/smime"
)

// PlaintextHeader marks a copy delivered unencrypted by policy, so that the
// owner of the mailbox (and any audit) can tell why.
const PlaintextHeader = "X-Smimefilter"

// CertSource gives the certificate store a transaction uses: one snapshot
// per transaction, so a reload never changes the plan halfway.
type CertSource interface {
	Current() *certs.Store
}

// Config is everything a Backend needs. Zero values take defaults.
type Config struct {
	Rewriter *recipients.Rewriter
	// Certs may be nil: then no recipient has a certificate and Policy
	// decides alone.
	Certs CertSource
	// LookupRewritten looks certificates up by the rewritten address
	// instead of the original one.
	LookupRewritten bool
	// RecipientDelimiter, when set, lets alice+detail@ use alice@'s
	// certificates when it has none of its own (characters as in Postfix's
	// recipient_delimiter).
	RecipientDelimiter string
	Policy             Policy
	SMIME              smime.Options
	// OpenPGP is how PGP/MIME copies (RFC 3156) are made, for recipients
	// whose usable keys are OpenPGP keys.
	OpenPGP pgpmime.Options
	// Prefer picks the format for a recipient with both a certificate and
	// an OpenPGP key; "" is PreferSMIME.
	Prefer Prefer
	// Deliver receives every copy, except what goes to Reinject.
	Deliver deliver.Target
	// Reinject, when set, receives recipients whose (rewritten) domain is
	// not in HostedDomains, unchanged: the content_filter setup hands mail
	// for other destinations back to Postfix.
	Reinject      deliver.Target
	HostedDomains map[string]bool
	// MaxHeaderBytes bounds the header block read before deciding. Default 256 KiB.
	MaxHeaderBytes int
	// SpoolDir is a private directory for the encrypted message while its
	// copies go out, when it is larger than SpoolMemory. Only ciphertext is
	// written there. Default os.TempDir().
	SpoolDir string
	// SpoolMemory is how much of each encrypted message is kept in memory
	// before the rest goes to SpoolDir. Default 256 KiB.
	SpoolMemory int64
	// Enroll, when set, makes mail to its address an enrollment request
	// (enroll.go) instead of a delivery.
	Enroll EnrollConfig
	Logger *slog.Logger
}

// Counters are running totals for sd_notify STATUS and logs.
type Counters struct {
	Connections atomic.Int64 // open now
	Delivered   atomic.Int64 // recipients answered 2xx
	Deferred    atomic.Int64 // recipients answered 4xx
	Rejected    atomic.Int64 // recipients answered 5xx
}

// Backend implements smtp.Backend.
type Backend struct {
	cfg   Config
	plan  planner
	log   *slog.Logger
	Stats Counters

	boot    string
	connSeq atomic.Uint64
	// enrollAddr is the normalized enrollment address, "" when off.
	enrollAddr string
	// owed are enrollment notices that could not be delivered while the
	// message that caused them was answered 250 (enroll.go).
	owedMu sync.Mutex
	owed   []enroll.Outgoing
}

// NewBackend returns a Backend for cfg.
func NewBackend(cfg Config) *Backend {
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 256 << 10
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if cfg.SpoolMemory <= 0 {
		cfg.SpoolMemory = 256 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Policy = cfg.Policy.folded()
	p := planner{
		rewriter:        cfg.Rewriter,
		lookupRewritten: cfg.LookupRewritten,
		delimiter:       cfg.RecipientDelimiter,
		policy:          cfg.Policy,
		prefer:          cfg.Prefer,
	}
	if cfg.Reinject != nil {
		p.hosted = cfg.HostedDomains
		if p.hosted == nil {
			p.hosted = map[string]bool{}
		}
	}
	var b [3]byte
	rand.Read(b[:])
	be := &Backend{cfg: cfg, plan: p, log: cfg.Logger, boot: hex.EncodeToString(b[:])}
	if cfg.Enroll.Engine != nil {
		be.enrollAddr, _ = certs.NormalizeAddress(cfg.Enroll.Address)
	}
	return be
}

// NewSession implements smtp.Backend.
func (b *Backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	id := b.boot + "-" + itoa(b.connSeq.Add(1))
	ctx, cancel := context.WithCancel(context.Background())
	b.Stats.Connections.Add(1)
	remote := "local"
	if a := c.Conn().RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		remote = a.String()
	}
	s := &session{b: b, id: id, ctx: ctx, cancel: cancel, log: b.log.With("conn", id)}
	s.log.Debug("connection opened", "remote", remote)
	return s, nil
}

func itoa(n uint64) string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	if n == 0 {
		return "0"
	}
	var b [16]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = digits[n%36]
		n /= 36
	}
	return string(b[i:])
}

var _ smtp.LMTPSession = (*session)(nil)

// since returns the time since t rounded for logs.
func since(t time.Time) time.Duration { return time.Since(t).Round(time.Microsecond) }
