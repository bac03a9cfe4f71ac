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
	"fmt"
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
	rc      syscall.RawConn
	network string

	// The callbacks handed to RawConn are bound once, in Wrap: a closure
	// per call would put it and every variable it captures on the heap,
	// three allocations per Read or Write. Their arguments and results
	// travel in these fields instead, each direction under its own lock
	// (net.Conn allows concurrent calls; a Read and a Write may overlap).
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wdone   int
	werr    error
	writeFn func(uintptr) bool
}

// Wrap returns c as a *Conn when it is a non-blocking socket the runtime
// polls, and c unchanged otherwise (a net.Pipe in tests, a TLS connection,
// a socket someone switched to blocking mode through File or Fd: a raw
// read(2) on that would sleep holding the scheduler's processor, and the
// next garbage collection would wait for it with every goroutine).
func Wrap(c net.Conn) net.Conn {
	var network string
	switch c.(type) {
	case *net.UnixConn:
		network = "unix"
	case *net.TCPConn:
		network = "tcp"
	default:
		return c
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	nonblocking := false
	if err := rc.Control(func(fd uintptr) {
		flags, err := fcntl(fd, syscall.F_GETFL, 0)
		nonblocking = err == nil && flags&syscall.O_NONBLOCK != 0
	}); err != nil || !nonblocking {
		return c
	}
	w := &Conn{Conn: c, rc: rc, network: network}
	w.readFn, w.writeFn = w.readFD, w.writeFD
	return w
}

func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.readFn)
	c.rbuf = nil // not kept past the call
	if err == nil {
		err = c.rerr
	}
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case len(p) == 0:
		// As net.Conn: nothing asked, nothing read, but only on an open
		// connection (RawConn.Read fails on a closed one).
		return 0, nil
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

// readFD makes one read(2); returning false asks RawConn to wait until the
// socket is readable and call again.
func (c *Conn) readFD(fd uintptr) bool {
	if len(c.rbuf) == 0 {
		return true // read(2) of nothing would return 0, which means EOF
	}
	for {
		n, e := read(fd, c.rbuf)
		switch e {
		case 0:
			c.rn = n
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wdone, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	if err == nil {
		err = c.werr
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
		rest := c.wbuf[c.wdone:]
		n, e := write(fd, rest)
		switch {
		case e == syscall.EINTR:
		case e == syscall.EAGAIN:
			return false
		case e != 0:
			c.werr = e
			return true
		case n <= 0 || n > len(rest):
			// A kernel that took nothing without saying why would make
			// this loop spin; one that claims more than it was given
			// would break io.Writer's contract. Neither is retried.
			c.werr = fmt.Errorf("write(2) returned %d for %d bytes: %w", n, len(rest), io.ErrUnexpectedEOF)
			return true
		default:
			c.wdone += n
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
	return &net.OpError{Op: op, Net: c.network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
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

// fcntl is fcntl(2) for F_GETFL, which never blocks.
func fcntl(fd uintptr, cmd, arg int) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, fd, uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
