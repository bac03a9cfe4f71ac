package enroll

import (
	"cmp"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// Defaults of Options.
const (
	DefaultChangeDelay                 = 72 * time.Hour
	DefaultCodeLifetime                = 24 * time.Hour
	DefaultMaxMessageSize              = 1 << 20
	DefaultMaxPendingPerAddress        = 3
	DefaultMaxPendingTotal             = 1000
	DefaultMaxRequestsPerSenderPerDay  = 10
	DefaultMaxRequestsPerAddressPerDay = 5
)

// DefaultExpiryWarnings are the times before expiry when an address's last
// certificate gets a notice.
var DefaultExpiryWarnings = []time.Duration{30 * 24 * time.Hour, 7 * 24 * time.Hour}

// Options configure an Engine. Zero values take the defaults above.
type Options struct {
	// Dir holds all the state (enroll.dir); created 0700 if missing.
	Dir string
	// Address is the enrollment address (enroll.address): the sender of
	// every outgoing message and the target of the mailto: links.
	Address string
	// ChangeDelay is how long a confirmed change to an address that
	// already has a usable certificate waits (enroll.change_delay).
	ChangeDelay time.Duration
	// CodeLifetime is how long a confirmation code works.
	CodeLifetime time.Duration
	// ExpiryWarnings are how long before the last usable certificate of
	// an address expires a notice goes out, each once. nil means
	// DefaultExpiryWarnings; an empty non-nil slice sends none.
	ExpiryWarnings []time.Duration

	// Roots are the trust anchors (certs.trust_roots), nil for none. They
	// configure the default Kind.
	Roots *x509.CertPool
	// Delivers reports whether mail to an address is delivered here;
	// only such addresses can be enrolled. Required unless ReadOnly.
	Delivers func(addr string) bool
	// Current returns the usable certificates the certificate store
	// holds for an address (certs.dir and, once the store reads it, the
	// active/ directory), as a lookup for a recipient would. nil: only
	// the enrolled ones count. It decides whether a change must wait and
	// who is told about it.
	Current func(addr string) []*x509.Certificate
	// CurrentKeys is Current for OpenPGP keys: the usable keys the store
	// holds for an address (certs.Store.LookupKeys). nil: only the
	// enrolled ones count.
	CurrentKeys func(addr string) []*certs.Key
	// Addresses lists the addresses that have certificates outside
	// enrollment (certs.dir), so that their expiry is announced too. nil:
	// only enrolled addresses get expiry notices.
	Addresses func() []string
	// Kinds are the kinds of key accepted, tried in order; nil means
	// S/MIME with Roots, then OpenPGP.
	Kinds []Kind

	// Now is the clock of HandleMessage; nil means time.Now.
	Now func() time.Time
	// Rand is the source of codes; nil means crypto/rand.
	Rand io.Reader

	// Abuse limits. A request is a message to the enrollment address;
	// a day is the last 24 hours.
	MaxMessageSize              int64
	MaxPendingPerAddress        int
	MaxPendingTotal             int // bounds the disk taken by pending/
	MaxRequestsPerSenderPerDay  int // per envelope sender, any message
	MaxRequestsPerAddressPerDay int // challenges sent to one address

	// ReadOnly opens the state for List and Log only (the certs list and
	// certs log commands): nothing is created, recovered or written.
	ReadOnly bool
}

func (o *Options) setDefaults() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("enroll: no Dir"))
	}
	if !o.ReadOnly {
		a, ok := certs.NormalizeAddress(o.Address)
		if !ok {
			errs = append(errs, fmt.Errorf("enroll: invalid Address %q", o.Address))
		}
		o.Address = a
		if o.Delivers == nil {
			errs = append(errs, errors.New("enroll: no Delivers"))
		}
	}
	def := func(v *time.Duration, d time.Duration, name string) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			errs = append(errs, fmt.Errorf("enroll: negative %s", name))
		}
	}
	def(&o.ChangeDelay, DefaultChangeDelay, "ChangeDelay")
	def(&o.CodeLifetime, DefaultCodeLifetime, "CodeLifetime")
	if o.ExpiryWarnings == nil {
		o.ExpiryWarnings = DefaultExpiryWarnings
	}
	o.ExpiryWarnings = slices.Clone(o.ExpiryWarnings)
	for _, w := range o.ExpiryWarnings {
		if w <= 0 {
			errs = append(errs, fmt.Errorf("enroll: expiry warning %v is not positive", w))
		}
	}
	// Longest first: the order in which they come due.
	slices.SortFunc(o.ExpiryWarnings, func(a, b time.Duration) int { return cmp.Compare(b, a) })
	o.ExpiryWarnings = slices.Compact(o.ExpiryWarnings)
	pos := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	pos(&o.MaxPendingPerAddress, DefaultMaxPendingPerAddress)
	pos(&o.MaxPendingTotal, DefaultMaxPendingTotal)
	pos(&o.MaxRequestsPerSenderPerDay, DefaultMaxRequestsPerSenderPerDay)
	pos(&o.MaxRequestsPerAddressPerDay, DefaultMaxRequestsPerAddressPerDay)
	if o.Kinds == nil {
		o.Kinds = []Kind{SMIME{Roots: o.Roots}, OpenPGP{}}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	return errors.Join(errs...)
}
