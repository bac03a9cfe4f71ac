package filter

import (
	"io"

	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
	"github.com/smimefilter/smimefilter/spool"
)

// A message is encrypted once per output format its copies need: S/MIME
// (RFC 8551) for recipients with certificates, PGP/MIME (RFC 3156) for
// recipients with OpenPGP keys. Each format's seal writes its ciphertext
// once, into its own spool; its copies differ only in the key packets
// (RecipientInfos, PKESKs) that name their own recipients. Copies that go
// out unencrypted are decrypted back from whichever seal runs.

// sealer is one format's seal of the message.
type sealer interface {
	io.Writer
	Close() error
	Destroy()
	// OpenBody decrypts the body back from the seal's ciphertext.
	OpenBody(ciphertext io.Reader) (io.Reader, error)
	// writeCopy writes c, encrypted for its recipients, from ciphertext.
	writeCopy(dst io.Writer, ciphertext io.Reader, c *outCopy) error
	// newLive starts c on dst while the message still arrives: every
	// piece of ciphertext the seal writes from then on is to be passed
	// to the returned writer's Write, and Close ends the copy.
	newLive(dst io.Writer, c *outCopy) (io.WriteCloser, error)
}

type smimeSeal struct{ *smime.Seal }

func (s smimeSeal) writeCopy(dst io.Writer, ciphertext io.Reader, c *outCopy) error {
	return s.WriteEnveloped(dst, ciphertext, c.certs)
}

func (s smimeSeal) newLive(dst io.Writer, c *outCopy) (io.WriteCloser, error) {
	return s.NewLiveCopy(dst, c.certs)
}

type pgpSeal struct{ *pgpmime.Seal }

func (s pgpSeal) writeCopy(dst io.Writer, ciphertext io.Reader, c *outCopy) error {
	return s.WriteCopy(dst, ciphertext, c.keys)
}

func (s pgpSeal) newLive(dst io.Writer, c *outCopy) (io.WriteCloser, error) {
	return s.NewLiveCopy(dst, c.keys)
}

// sealing is one running seal with the spool of its ciphertext.
type sealing struct {
	seal sealer
	// out is where the seal writes: the spool, and the live copy once
	// it runs (live.go).
	out *sealOut
	sp  *spool.Spool
}

func newSealing(dir string, memory int) *sealing {
	sp := spool.New(dir, memory)
	return &sealing{out: &sealOut{spool: sp}, sp: sp}
}

func (g *sealing) close() {
	if g == nil {
		return
	}
	if g.seal != nil {
		g.seal.Destroy()
	}
	g.sp.Close()
}
