// Package spool holds one message's ciphertext from its arrival until its
// last copy is out: in memory up to a limit, the rest in a file that has no
// name (O_TMPFILE, or created and unlinked at once) in a private directory,
// so nothing is left behind by a crash and nothing else can open it.
//
// Only ciphertext is ever written here (see smime.Seal): the key that opens
// it lives in the daemon's memory and dies with the message.
package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

const chunkSize = 64 << 10

// chunks are reused across messages: at thousands of small messages a
// second, fresh buffers for each were most of the daemon's garbage.
var chunks = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

// Spool is written once, then read from the start any number of times. It
// is not safe for concurrent use.
type Spool struct {
	dir      string
	memLimit int

	mem    []*[]byte // full chunks, then the one being filled
	memLen int
	file   *os.File
	size   int64
	err    error // sticky
}

// New returns an empty spool that keeps up to memLimit bytes in memory and
// puts the rest in an unnamed file in dir.
func New(dir string, memLimit int) *Spool {
	return &Spool{dir: dir, memLimit: memLimit}
}

// Write appends p.
func (s *Spool) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	written := 0
	for len(p) > 0 && s.file == nil && s.memLen < s.memLimit {
		if len(s.mem) == 0 || len(*s.mem[len(s.mem)-1]) == chunkSize {
			s.mem = append(s.mem, chunks.Get().(*[]byte))
		}
		c := s.mem[len(s.mem)-1]
		n := min(len(p), chunkSize-len(*c), s.memLimit-s.memLen)
		*c = append(*c, p[:n]...)
		s.memLen += n
		s.size += int64(n)
		p = p[n:]
		written += n
	}
	if len(p) == 0 {
		return written, nil
	}
	if s.file == nil {
		f, err := openUnnamed(s.dir)
		if err != nil {
			s.err = fmt.Errorf("spool: %w", err)
			return written, s.err
		}
		s.file = f
	}
	n, err := s.file.Write(p)
	s.size += int64(n)
	written += n
	if err != nil {
		s.err = fmt.Errorf("spool: writing: %w", err)
	}
	return written, s.err
}

// Len is the number of bytes written.
func (s *Spool) Len() int64 { return s.size }

// InFile reports whether part of the content went to a file.
func (s *Spool) InFile() bool { return s.file != nil }

// Reader returns a reader of everything written, from the start. Readers
// share the spool's file offset-free (pread), so each may be used after the
// last one, never while writing.
func (s *Spool) Reader() io.Reader {
	rs := make([]io.Reader, 0, len(s.mem)+1)
	for _, c := range s.mem {
		rs = append(rs, bytes.NewReader(*c))
	}
	if s.file != nil {
		rs = append(rs, io.NewSectionReader(s.file, 0, s.size-int64(s.memLen)))
	}
	return io.MultiReader(rs...)
}

// Close releases the memory and the file. The spool is unusable after it.
func (s *Spool) Close() error {
	for _, c := range s.mem {
		*c = (*c)[:0]
		chunks.Put(c)
	}
	s.mem, s.memLen = nil, 0
	var err error
	if s.file != nil {
		err = s.file.Close()
		s.file = nil
	}
	if s.err == nil {
		s.err = errors.New("spool: closed")
	}
	return err
}

// openUnnamed opens a file in dir that has no name from the start
// (O_TMPFILE, Linux 3.11 and most file systems) or, where that is not
// supported, one whose name is removed at once.
func openUnnamed(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDWR|unix.O_TMPFILE, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		// Files without names leave the directory's times alone, so a
		// cleaner of old temporary files (systemd-tmpfiles on /var/tmp)
		// may have taken it: make it again rather than fail every large
		// message until a restart.
		if merr := os.Mkdir(dir, 0o700); merr == nil || errors.Is(merr, fs.ErrExist) {
			f, err = os.OpenFile(dir, os.O_RDWR|unix.O_TMPFILE, 0o600)
		}
	}
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("creating a file in %s: %w", dir, err)
	}
	f, err = os.CreateTemp(dir, "msg-")
	if err != nil {
		return nil, fmt.Errorf("creating a file in %s: %w", dir, err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlinking %s: %w", f.Name(), err)
	}
	return f, nil
}

// PrivateDir makes a directory only this process's user can enter, inside
// base, for spool files; the caller removes it at exit. A directory left by
// a crash holds nothing: its files had no names.
func PrivateDir(base string) (string, error) {
	dir, err := os.MkdirTemp(base, "smimefilter-spool-")
	if err != nil {
		return "", fmt.Errorf("spool: making a private directory in %s: %w", base, err)
	}
	// MkdirTemp makes it 0700 already; say so against a lax umask-free
	// implementation.
	if err := os.Chmod(dir, 0o700); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("spool: %w", err)
	}
	return dir, nil
}
