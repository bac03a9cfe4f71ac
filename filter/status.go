package filter

import (
	"errors"
	"syscall"

	"github.com/emersion/go-smtp"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/recipients"
	"github.com/smimefilter/smimefilter/smime"
)

// Policy and input errors the session raises; Status gives each its reply.
var (
	// ErrNoCertificate: no usable certificate and the policy says wait.
	ErrNoCertificate = errors.New("no usable certificate for recipient")
	// ErrPolicyReject: no usable certificate and the policy says refuse.
	ErrPolicyReject = errors.New("recipient refused by encryption policy")
	// ErrLineTooLong: a message line is longer than the configured limit.
	ErrLineTooLong = errors.New("line too long")
	// ErrClientGone: the client went away during DATA.
	ErrClientGone = errors.New("client connection lost during DATA")
	// ErrEncrypt: encryption failed for reasons of the daemon's own making.
	ErrEncrypt = errors.New("encryption failed")
	// ErrSpool: the encrypted message could not be held until its copies
	// were out (the spool directory is full or unwritable).
	ErrSpool = errors.New("spooling the encrypted message failed")
	// ErrPanic: a bug; the recipients concerned are deferred, the daemon
	// goes on.
	ErrPanic = errors.New("internal error")
)

// Reply codes, RFC 5321 §4.2 and enhanced codes, RFC 3463 / RFC 5248.
var (
	replyTempFail     = reply(451, 4, 3, 0, "Temporary local problem, try again later")
	replyConfig       = reply(451, 4, 3, 5, "Recipient rewriting misconfigured, try again later")
	replyUnreachable  = reply(451, 4, 4, 1, "Mail store unreachable, try again later")
	replyConnection   = reply(451, 4, 4, 2, "Connection to mail store lost, try again later")
	replyShutdown     = reply(421, 4, 3, 2, "Service shutting down, try again later")
	replyNoCert       = reply(451, 4, 7, 0, "No usable S/MIME certificate for recipient, try again later")
	replyPolicyReject = reply(550, 5, 7, 1, "Recipient requires encryption and has no usable certificate")
	replyTooBig       = reply(552, 5, 3, 4, "Message too big")
	replyLMTPOnly     = reply(502, 5, 5, 1, "This server speaks LMTP only")
	replyLineTooLong  = reply(500, 5, 6, 0, "Message line too long")
	replyBadMailbox   = reply(550, 5, 1, 3, "Bad destination mailbox address")
	replyMailboxFull  = reply(452, 4, 2, 2, "Mailbox full or no space left, try again later")
	// A challenge or notice of enrollment was not delivered: the request
	// waits and is tried again.
	replyEnrollDelivery = reply(451, 4, 3, 0, "Enrollment message could not be delivered, try again later")
)

func reply(code, class, subject, detail int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: msg}
}

// Status is the one place where an error becomes an SMTP reply. Every error
// the filter hands to go-smtp goes through here, because go-smtp answers a
// permanent 554 to anything that is not an *smtp.SMTPError and Postfix would
// bounce the mail. The rule: 5xx only where retrying cannot succeed; anything
// unknown is 451 4.3.0 so that the mail waits in Postfix's queue.
//
// Replies from the next hop (Dovecot's per-recipient answers) pass through
// with their codes intact. Reply texts stay generic; details go to the log.
func Status(err error) *smtp.SMTPError {
	if err == nil {
		return nil
	}
	if se, ok := enrollStatus(err); ok {
		// First: a failed notice wraps the mail store's own reply, which
		// must not become the request's.
		return se
	}
	var se *smtp.SMTPError
	switch {
	case errors.Is(err, deliver.ErrClosed):
		// The outbound side was closed: the daemon is stopping. A MAIL
		// arriving while it stops never reaches the backend: package
		// server refuses it with a 421 of its own, the listener's reply
		// rather than an error becoming a status.
		return replyShutdown
	case errors.Is(err, deliver.ErrUnreachable):
		return replyUnreachable
	case errors.Is(err, deliver.ErrConnection):
		return replyConnection
	case errors.As(err, &se):
		// A reply from the next hop or from go-smtp's own reader (size limit).
		if se.Code < 400 || se.Code > 599 {
			return replyTempFail
		}
		return se
	case errors.Is(err, recipients.ErrInvalidAddress):
		return replyConfig
	case errors.Is(err, ErrNoCertificate):
		return replyNoCert
	case errors.Is(err, ErrPolicyReject):
		return replyPolicyReject
	case errors.Is(err, ErrLineTooLong), errors.Is(err, smtp.ErrTooLongLine):
		return replyLineTooLong
	case errors.Is(err, smime.ErrHeaderTooLarge):
		return replyTooBig
	case errors.Is(err, deliver.ErrBadMailbox):
		return replyBadMailbox
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return replyMailboxFull
	}
	// Everything else, including a cancelled context, a client gone
	// mid-DATA (ErrClientGone) and timeouts: the mail waits in the queue.
	return replyTempFail
}
