// Package filter is smimefilter's LMTP side: a go-smtp backend that takes
// mail from Postfix (LMTP, RFC 2033; SMTP semantics from RFC 5321), decides a
// plan for every recipient (rewrite, certificate lookup, policy), has each
// copy transformed (S/MIME per RFC 8551 and RFC 5652, through package smime)
// and delivered (package deliver), and reports every recipient's outcome
// back, one reply each as RFC 2033 §4.2 requires.
//
// Promises kept here: a recipient gets 250 only after the next hop accepted
// that recipient's copy; every other outcome is a reply chosen by Status,
// temporary unless failure is certain; the body is streamed through, never
// spooled.
package filter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/smime"
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
	// Deliver receives every copy, except what goes to Reinject.
	Deliver deliver.Target
	// Reinject, when set, receives recipients whose (rewritten) domain is
	// not in HostedDomains, unchanged: the content_filter setup hands mail
	// for other destinations back to Postfix.
	Reinject      deliver.Target
	HostedDomains map[string]bool
	// MaxHeaderBytes bounds the header block read before deciding. Default 256 KiB.
	MaxHeaderBytes int
	// MaxCopies bounds the distinct copies (outbound transactions) of one
	// message; keep it at most the outbound pool's size. Default 8.
	MaxCopies int
	Logger    *slog.Logger
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
	log   *slog.Logger
	Stats Counters

	boot     string
	connSeq  atomic.Uint64
	stopping atomic.Bool

	mu     sync.Mutex
	active int           // transactions between MAIL and their end
	idle   chan struct{} // closed when active drops to 0 while stopping
}

// NewBackend returns a Backend for cfg.
func NewBackend(cfg Config) *Backend {
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = 256 << 10
	}
	if cfg.MaxCopies <= 0 {
		cfg.MaxCopies = 8
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Policy = cfg.Policy.folded()
	var b [3]byte
	rand.Read(b[:])
	return &Backend{cfg: cfg, log: cfg.Logger, boot: hex.EncodeToString(b[:]), idle: make(chan struct{})}
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

// StartShutdown makes new transactions fail with 421; transactions under way
// go on. Idle returns a channel closed once none is left.
func (b *Backend) StartShutdown() <-chan struct{} {
	b.stopping.Store(true)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.active == 0 {
		b.closeIdleLocked()
	}
	return b.idle
}

func (b *Backend) closeIdleLocked() {
	select {
	case <-b.idle:
	default:
		close(b.idle)
	}
}

func (b *Backend) beginTx() bool {
	if b.stopping.Load() {
		return false
	}
	b.mu.Lock()
	b.active++
	b.mu.Unlock()
	return true
}

func (b *Backend) endTx() {
	b.mu.Lock()
	b.active--
	if b.active == 0 && b.stopping.Load() {
		b.closeIdleLocked()
	}
	b.mu.Unlock()
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

// hosted reports whether domain is delivered here rather than re-injected.
func (b *Backend) hosted(domain string) bool {
	return b.cfg.Reinject == nil || b.cfg.HostedDomains[domain]
}

var _ smtp.LMTPSession = (*session)(nil)

// since returns the time since t rounded for logs.
func since(t time.Time) time.Duration { return time.Since(t).Round(time.Microsecond) }
