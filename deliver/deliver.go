// Package deliver is the outbound side of smimefilter: it hands finished
// copies of a message to their final store, either Dovecot's LMTP service
// (RFC 2033) over a pool of reused connections, an SMTP relay (RFC 5321) used
// to hand recipients back to Postfix, or a Maildir.
//
// A Target never reports success for a recipient before the next hop has
// taken responsibility for it: an LMTP 250 for that recipient (one reply
// per accepted recipient after the final dot, RFC 2033 §4.2), an SMTP 250
// for the transaction, or a Maildir file that was fsynced and renamed into
// new/, in directories that were themselves made durable.
//
// The Pool's client sends MAIL, RCPT and DATA as one group when the peer
// offers PIPELINING (RFC 2920), one at a time otherwise, and the message
// with DATA and dot-stuffing (RFC 5321 §4.5.2). CHUNKING (RFC 3030, BDAT) is
// not used: it saves the dot-stuffing scan, which the bulk writer here
// makes cheap, and every LMTP and SMTP server takes DATA. A pooled
// connection serves again only after a clean transaction, and proves itself
// with RSET before it does.
//
// Errors for the filter are either the next hop's own reply (an
// *smtp.SMTPError, passed through) or wrap one of the sentinel errors below.
package deliver

import (
	"context"
	"errors"
	"io"
)

// Sentinel errors for trouble on the way to the next hop. They say nothing
// about the message, so the filter turns them into temporary failures.
var (
	// ErrUnreachable: the next hop could not be reached (dial failed, or a
	// greeting other than 220).
	ErrUnreachable = errors.New("next hop unreachable")
	// ErrConnection: the connection broke or timed out during a transaction.
	ErrConnection = errors.New("connection to next hop failed")
	// ErrBusy: every connection is in use and the caller asked not to wait
	// for one (WithoutWaiting). It also wraps ErrUnreachable.
	ErrBusy = errors.New("no free connection")
	// ErrClosed: the target was closed (the daemon is shutting down).
	ErrClosed = errors.New("delivery target closed")
	// ErrAborted: the transaction was abandoned before its end, so nothing
	// was delivered.
	ErrAborted = errors.New("transaction aborted")
)

type noWaitKey struct{}

// WithoutWaiting returns a context under which Begin fails at once with
// ErrBusy where it would otherwise wait for a connection to come free. The
// filter starts the copy that streams while a message arrives under it: a
// session waiting there would stop reading its client, and Postfix's
// lmtp_data_xfer_timeout would defer the mail; without a connection now,
// that copy is simply sent after the message, from the spool.
func WithoutWaiting(ctx context.Context) context.Context {
	return context.WithValue(ctx, noWaitKey{}, true)
}

func mayWait(ctx context.Context) bool {
	v, _ := ctx.Value(noWaitKey{}).(bool)
	return !v
}

// Envelope is what a transaction carries besides the message.
type Envelope struct {
	From string
	// Rcpts are the recipients of this copy, already rewritten.
	Rcpts []string
	// UTF8 asks for SMTPUTF8 (RFC 6531) where the next hop offers it.
	UTF8 bool
	// Size is the declared size, 0 when unknown.
	Size int64
}

// Target is a place copies are delivered to.
type Target interface {
	// Begin starts a transaction for env. An error means no recipient of
	// env can be delivered now; per-recipient refusals are in Tx.Rejected.
	Begin(ctx context.Context, env Envelope) (Tx, error)
	// Close releases the target's resources; transactions under way fail.
	Close() error
}

// Tx is one transaction: the message is written to it, then it is either
// committed or aborted. Write errors are sticky.
type Tx interface {
	io.Writer
	// Rejected returns, for each recipient of the envelope (same index), the
	// error it was refused with before the message was sent, or nil.
	Rejected() []error
	// Commit ends the message and returns each recipient's outcome (same
	// index as the envelope): nil only when the next hop took the message for
	// that recipient.
	Commit() []error
	// Abort abandons the transaction so that nothing is delivered.
	Abort()
}

// allErr is a per-recipient result where every recipient has err.
func allErr(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// Verifier is implemented by targets that can tell, before the message,
// whether the next hop would take a recipient at all (an LMTP server knows
// its users). The filter asks before applying a missing-certificate
// policy, so that an unknown user bounces at once instead of waiting in the
// queue for a certificate that will never come.
type Verifier interface {
	// Verify returns nil if rcpt would be accepted, the next hop's reply
	// (an *smtp.SMTPError) if not, or a connection error.
	Verify(ctx context.Context, from, rcpt string) error
}
