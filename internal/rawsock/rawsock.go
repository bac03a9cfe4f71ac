// Package rawsock reads and writes sockets without telling the Go scheduler
// that a system call is under way.
//
// A net.Conn's Read and Write go through syscall.Syscall, which hands the
// goroutine's processor back to the scheduler for the duration of the call
// (entersyscall/exitsyscall) and wakes the runtime's monitor thread (sysmon)
// when it was asleep; sysmon then polls every 20 µs and may take the
// processor away from a thread it finds inside a call. That bookkeeping
// exists for calls that may block. Go's sockets are non-blocking: read(2)
// and write(2) on them return EAGAIN instead of sleeping, and the
// netpoller does the waiting. For a daemon relaying many small LMTP
// exchanges the bookkeeping was a large share of the cost: in perf,
// sysmon's sleeps and wake-ups alone were 12% of the daemon's samples,
// against 32% for the read and write calls themselves. Conn issues the same calls with syscall.RawSyscall
// inside syscall.RawConn's Read and Write, which keep the netpoller's
// waiting and the connection's deadlines exactly as they are. Measured
// effect in BENCHMARKS.md, section 1.
package rawsock

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Conn is a net.Conn whose Read and Write bypass the scheduler's
// system-call bookkeeping. Everything else is the wrapped connection's.
type Conn struct {
	net.Conn
	rc syscall.RawConn
}

// Wrap returns c as a *Conn when it is a socket the runtime polls, and c
// unchanged otherwise (a net.Pipe in tests, a TLS connection).
func Wrap(c net.Conn) net.Conn {
	switch c.(type) {
	case *net.UnixConn, *net.TCPConn:
	default:
		return c
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	return &Conn{Conn: c, rc: rc}
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, e := read(fd, p)
			if e == syscall.EINTR {
				continue
			}
			n, errno = r, e
			// Returning false waits for the socket to become readable.
			return e != syscall.EAGAIN
		}
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return 0, c.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c *Conn) Write(p []byte) (int, error) {
	var done int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			r, e := write(fd, p[done:])
			switch e {
			case 0:
				done += r
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false // wait until the socket takes more
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return done, c.opError("write", err)
	}
	return done, nil
}

// opError reports err as the net package does, so that callers' checks
// (net.Error's Timeout, errors.Is(err, net.ErrClosed), io.EOF compared
// with ==) see what they would see from the wrapped connection. Errors from
// RawConn come as "raw-read" or "raw-write" *net.OpErrors; they are renamed.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
		return oe
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Listener wraps every connection l accepts.
func Listener(l net.Listener) net.Listener { return listener{l} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}
