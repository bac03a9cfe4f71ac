package enroll

import (
	"crypto/x509"
	"errors"
	"time"

	"github.com/smimefilter/smimefilter/certs"
)

// Why a message to the enrollment address was refused. Result.Err wraps one
// of them; its text says why in words fit for an SMTP reply (one line, no
// code). All but ErrOverLimit are permanent: the same message would fail
// again.
var (
	// ErrTooLarge: over Options.MaxMessageSize (SMTP 552 5.3.4).
	ErrTooLarge = errors.New("message too large for the enrollment address")
	// ErrMalformed: the header cannot be read.
	ErrMalformed = errors.New("cannot read the message")
	// ErrUnsigned: neither a signed request nor a confirmation.
	ErrUnsigned = errors.New("not signed")
	// ErrBadSignature: signed, but the signature does not verify.
	ErrBadSignature = errors.New("bad signature")
	// ErrUnusableCertificate: the certificate fails the checks of the
	// certificate store; the text names every reason.
	ErrUnusableCertificate = errors.New("unusable certificate")
	// ErrNotDelivered: the certificate is for no address delivered here.
	ErrNotDelivered = errors.New("address not delivered here")
	// ErrBadCode: the Subject carries a code that is unknown, used or
	// expired. Nothing changed.
	ErrBadCode = errors.New("unknown, used or expired code")
	// ErrOverLimit: a limit on requests or pending changes was reached;
	// it is temporary (SMTP 451 4.7.1).
	ErrOverLimit = errors.New("too many requests, try again later")

	// ErrNotFound: Remove or Cancel found nothing to act on.
	ErrNotFound = errors.New("no such enrollment")
	// ErrReadOnly: a change was asked of an Engine opened read-only.
	ErrReadOnly = errors.New("enrollment state opened read-only")
)

// Temporary reports whether err is a refusal that may succeed later (4xx
// rather than 5xx).
func Temporary(err error) bool { return errors.Is(err, ErrOverLimit) }

// Result is the verdict on one message to the enrollment address and the
// mail it causes.
type Result struct {
	// Err is nil when the message was taken (SMTP 250: it is consumed,
	// never delivered to a mailbox), else a refusal wrapping one of the
	// Err* sentinels above. Its text never holds a code.
	Err error
	// Text says what was done, for the 250 reply and the daemon's log.
	Text string
	// Outgoing is what the caller delivers now, each message encrypted to
	// exactly its EncryptTo and EncryptToKeys. Empty when Err is set.
	Outgoing []Outgoing
}

// Outgoing is one message the Engine asks the caller to deliver.
type Outgoing struct {
	// To is the mailbox it goes to, an address delivered here.
	To string
	// EncryptTo and EncryptToKeys are the exact certificates and OpenPGP
	// keys to encrypt it to, and no other: for a challenge the requested
	// certificate or key alone, never the address's current ones. The
	// caller encrypts as S/MIME to EncryptTo and as PGP/MIME (RFC 3156 §4)
	// to EncryptToKeys; a notice to a holder with both kinds names both,
	// and goes out once in each format, so that whichever key its owner
	// uses opens one.
	EncryptTo     []*x509.Certificate
	EncryptToKeys []*certs.Key
	// Entity is the complete RFC 5322 message in plaintext, CRLF line
	// ends: From the enrollment address, To, Subject, Date, Message-ID,
	// Auto-Submitted, MIME-Version and a text/plain body. It may hold a
	// code, so it must only ever be stored encrypted: the caller encrypts
	// it as it encrypts any message (the RFC 5322 fields stay outside,
	// the body goes inside) and then forgets it.
	Entity []byte
	// Purpose names the message for the daemon's log: "challenge",
	// "change-notice", "confirmed", "activated", "cancelled", "expiry",
	// "removed".
	Purpose string
}

// State of an enrolled certificate in List.
type State string

const (
	// StateActive: enrolled; the certificate store uses it.
	StateActive State = "active"
	// StateUnusable: enrolled, but not usable now (expired, or its chain
	// no longer verifies; Entry.Reason says why). The store skips it.
	StateUnusable State = "unusable"
	// StateAwaiting: requested, waiting for the confirmation code until
	// Entry.Until.
	StateAwaiting State = "awaiting-confirmation"
	// StateScheduled: confirmed, becomes active at Entry.Until.
	StateScheduled State = "pending"
)

// Entry is one line of List.
type Entry struct {
	Address     string
	Fingerprint string
	Kind        string
	NotAfter    time.Time
	// Source is "enrollment" for everything the Engine lists; the
	// certificate directory's own certificates are the store's to list.
	Source    string
	State     State
	Until     time.Time // StateAwaiting: code expiry; StateScheduled: activation
	Requester string    // envelope sender of the request
	Since     time.Time // when it was requested, or activated
	Reason    string    // StateUnusable: why it is not usable
}

// LogEntry is one line of the change log (log.jsonl), one JSON object a
// line.
type LogEntry struct {
	Time        time.Time `json:"time"`
	Address     string    `json:"address"`
	Action      string    `json:"action"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	// Requester is the envelope sender of the message that caused the
	// action, "admin" for Remove and Cancel, "" for the engine's own
	// timed actions.
	Requester string `json:"requester"`
	Outcome   string `json:"outcome"`
	Kind      string `json:"kind,omitempty"`
	// Request names the pending request (not secret: a hash of kind,
	// address and fingerprint) so that the lines of one change can be
	// followed.
	Request string `json:"request,omitempty"`
}

// Log actions.
const (
	ActionRequest      = "request"       // a challenge went out
	ActionConfirm      = "confirm"       // a code was used
	ActionActivate     = "activate"      // a certificate became active
	ActionCancel       = "cancel"        // a pending change was stopped
	ActionExpire       = "expire"        // a request's codes expired unused
	ActionDrop         = "drop"          // a scheduled change became impossible
	ActionRemove       = "remove"        // an administrator removed a certificate
	ActionExpiryNotice = "expiry-notice" // an expiry warning went out
)
