package filter

import (
	"fmt"
	"io"
	"slices"

	"github.com/smimefilter/smimefilter/deliver"
	"github.com/smimefilter/smimefilter/spool"
)

// The first encrypted copy of a message streams to its next hop while the
// message arrives, as a filter with one copy would: with a single
// recipient, as most mail has, nothing waits for the end of the message and
// nothing is spooled. It starts once the body is known not to be encrypted
// as a whole already (at once for most media types, after the first bytes
// for a text body); the other copies are made from the spool afterwards.

// sealOut is where the Seal writes its ciphertext: the spool, and the live
// copy once it runs. A failing live copy does not fail the message: it is
// made again from the spool, as the others are.
type sealOut struct {
	spool   *spool.Spool // nil once the live copy is the only copy
	live    io.Writer
	liveErr error
}

func (o *sealOut) Write(p []byte) (int, error) {
	if o.spool != nil {
		if _, err := o.spool.Write(p); err != nil {
			return 0, err
		}
	}
	if o.live != nil && o.liveErr == nil {
		_, o.liveErr = o.live.Write(p)
	}
	return len(p), nil
}

// liveCopy is the copy that streams while the message arrives.
type liveCopy struct {
	c  *outCopy
	tx deliver.Tx
	g  *sealing // the seal it takes its ciphertext from
	lc io.WriteCloser
}

// startLive begins c's transaction and the live copy, first replaying what
// the Seal wrote so far. It returns nil, leaving c to be sent from the spool
// later, when the next hop cannot be reached now or has no connection free:
// it never waits for one, since the client is not read meanwhile.
func (s *session) startLive(c *outCopy, msg *message, only bool) *liveCopy {
	g := msg.sealingFor(c)
	tx, err := c.target.Begin(deliver.WithoutWaiting(s.ctx), s.envelope(c))
	if err != nil {
		s.log.Debug("live copy not started, sending it after the message", "tx", s.txID(), "error", err)
		return nil
	}
	started := false
	defer func() {
		if !started {
			tx.Abort() // on a panic too: the connection goes back
		}
	}()
	if !slices.Contains(tx.Rejected(), nil) {
		// Every recipient refused at RCPT: send (after the message)
		// reports their refusals without holding a connection through
		// the whole DATA phase.
		return nil
	}
	lc, err := g.seal.newLive(tx, c)
	if err == nil {
		_, err = io.Copy(lc, g.sp.Reader())
	}
	if err != nil {
		return nil
	}
	started = true
	g.out.live = lc
	if only {
		// No other copy will read the spool: stop filling it.
		g.out.spool = nil
		msg.partial = true
	}
	return &liveCopy{c: c, tx: tx, g: g, lc: lc}
}

// finishLive ends the live copy and returns its recipients' outcomes; if
// it failed on the way, it is sent again from the spool when the spool
// holds the whole message.
func (s *session) finishLive(l *liveCopy, msg *message) []error {
	err := l.g.out.liveErr
	if err == nil {
		err = l.lc.Close()
	}
	if err == nil {
		return l.tx.Commit()
	}
	l.tx.Abort()
	if !msg.partial {
		return s.send(l.c, msg)
	}
	return deliverErrs(len(l.c.addrs), fmt.Errorf("writing copy: %w", err))
}

// envelope is the outbound envelope of c.
func (s *session) envelope(c *outCopy) deliver.Envelope {
	env := deliver.Envelope{From: s.from, Rcpts: c.addrs, UTF8: s.opts.UTF8}
	if c.action == actPass || c.action == actReinject {
		env.Size = s.opts.Size
	}
	return env
}
