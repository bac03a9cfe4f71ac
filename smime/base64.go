package smime

import (
	"encoding/base64"
	"fmt"
	"io"
	"sync"
)

const (
	lineBytes     = 57 // 76 base64 characters: RFC 2045 §6.8's maximum line
	lineLen       = 76 + 2
	linesPerFlush = 512
)

// base64Lines encodes to base64 in lines of 76 characters ending in CRLF,
// writing to dst in batches of whole lines.
type base64Lines struct {
	dst io.Writer
	in  []byte // pending input, less than one batch
	out []byte
	err error
}

func newBase64Lines(dst io.Writer) *base64Lines {
	b := base64Bufs.Get().(*base64Lines)
	b.dst, b.err, b.in = dst, nil, b.in[:0]
	return b
}

// base64Bufs keeps the 70 KiB of line buffers between messages.
var base64Bufs = sync.Pool{New: func() any {
	return &base64Lines{
		in:  make([]byte, 0, lineBytes*linesPerFlush),
		out: make([]byte, lineLen*linesPerFlush),
	}
}}

func (w *base64Lines) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	written := 0
	for len(p) > 0 {
		if len(w.in) == 0 && len(p) >= cap(w.in) {
			// A whole batch at hand (the envelope writes 64 KiB
			// segments): encode it in place instead of copying it first.
			if err := w.encode(p[:cap(w.in)]); err != nil {
				return written, err
			}
			p = p[cap(w.in):]
			written += cap(w.in)
			continue
		}
		n := copy(w.in[len(w.in):cap(w.in)], p)
		w.in = w.in[:len(w.in)+n]
		p = p[n:]
		written += n
		if len(w.in) == cap(w.in) {
			if err := w.flush(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flush writes the pending input: whole lines, then a last short line.
func (w *base64Lines) flush() error {
	err := w.encode(w.in)
	w.in = w.in[:0]
	return err
}

// encode writes in as base64 lines; in is at most one batch.
func (w *base64Lines) encode(in []byte) error {
	o := 0
	for len(in) > 0 {
		n := min(len(in), lineBytes)
		enc := base64.StdEncoding.EncodedLen(n)
		base64.StdEncoding.Encode(w.out[o:o+enc], in[:n])
		o += enc
		w.out[o], w.out[o+1] = '\r', '\n'
		o += 2
		in = in[n:]
	}
	if o == 0 {
		return nil
	}
	if _, err := w.dst.Write(w.out[:o]); err != nil {
		w.err = fmt.Errorf("smime: writing base64: %w", err)
		return w.err
	}
	return nil
}

// Close writes what is pending; dst stays open.
func (w *base64Lines) Close() error {
	if w.err != nil {
		return w.err
	}
	if err := w.flush(); err != nil {
		return err
	}
	// Hand the buffers on to the next message; this writer keeps none.
	fresh := &base64Lines{in: w.in[:0], out: w.out}
	w.in, w.out, w.dst = nil, nil, nil
	base64Bufs.Put(fresh)
	w.err = ErrClosed
	return nil
}
