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
	"sync"
	"syscall"
)

// Conn is a net.Conn whose Read and Write bypass the scheduler's
// system-call bookkeeping. Everything else is the wrapped connection's.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	// The callbacks handed to RawConn are bound once, in Wrap: a closure
	// per call would put it and every variable it captures on the heap,
	// three allocations per Read or Write. Their arguments and results
	// travel in these fields instead, each direction under its own lock
	// (net.Conn allows concurrent calls; a Read and a Write may overlap).
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wdone   int
	werrno  syscall.Errno
	writeFn func(uintptr) bool
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
	w := &Conn{Conn: c, rc: rc}
	w.readFn, w.writeFn = w.readFD, w.writeFD
	return w
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	c.rbuf = nil // not kept past the call
	if err == nil && c.rerrno != 0 {
		err = c.rerrno
	}
	if err != nil {
		return 0, c.opError("read", err)
	}
	if c.rn == 0 {
		return 0, io.EOF
	}
	return c.rn, nil
}

// readFD makes one read(2); returning false asks RawConn to wait until the
// socket is readable and call again.
func (c *Conn) readFD(fd uintptr) bool {
	for {
		n, e := read(fd, c.rbuf)
		if e == syscall.EINTR {
			continue
		}
		c.rn, c.rerrno = n, e
		return e != syscall.EAGAIN
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wdone, c.werrno = p, 0, 0
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	if err == nil && c.werrno != 0 {
		err = c.werrno
	}
	if err != nil {
		return c.wdone, c.opError("write", err)
	}
	return c.wdone, nil
}

// writeFD writes until all of wbuf is out; returning false asks RawConn to
// wait until the socket takes more and call again.
func (c *Conn) writeFD(fd uintptr) bool {
	for c.wdone < len(c.wbuf) {
		n, e := write(fd, c.wbuf[c.wdone:])
		switch e {
		case 0:
			c.wdone += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werrno = e
			return true
		}
	}
	return true
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
