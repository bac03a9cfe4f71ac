package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smimefilter/smimefilter/certs"
)

// fakeLMTP serves l as the daemon would, or in one of the broken ways a
// daemon can stop serving.
type fakeLMTP func(l net.Listener)

// greeting answers every connection with greet, then 221 to QUIT.
func greeting(greet string) fakeLMTP {
	return func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(greet + "\r\n"))
				if strings.HasPrefix(greet, "421") {
					return
				}
				if line, _ := bufio.NewReader(c).ReadString('\n'); line == "QUIT\r\n" {
					c.Write([]byte("221 2.0.0 Bye\r\n"))
				}
			}()
		}
	}
}

var (
	serving = greeting("220 test.example LMTP ready")
	// neverGreets accepts and then says nothing: a session stuck before
	// its greeting (a deadlock in the backend, say).
	neverGreets fakeLMTP = func(l net.Listener) {
		var held []net.Conn
		for {
			c, err := l.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}
	// acceptStuck never calls Accept: the accept loop is stuck elsewhere,
	// while the kernel still completes connections into the backlog.
	acceptStuck fakeLMTP = func(l net.Listener) {}
)

// blockingAccept is a listener whose Accept does not return until Close,
// although connections reach its socket.
type blockingAccept struct {
	net.Listener
	closed chan struct{}
}

func (l blockingAccept) Accept() (net.Conn, error) {
	<-l.closed
	return nil, net.ErrClosed
}

func (l blockingAccept) Close() error {
	close(l.closed)
	return l.Listener.Close()
}

// checkWait bounds every wait for the watchdog goroutine.
const checkWait = 20 * time.Second

func TestWatchdogPingsOnlyWhileServing(t *testing.T) {
	eacces := func(context.Context, string, string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}
	}
	tests := []struct {
		name      string
		network   string
		serve     fakeLMTP
		blocking  bool // Accept of the listener itself blocks for ever
		dial      func(context.Context, string, string) (net.Conn, error)
		noStore   bool // the certificate holder has no current store
		lookup    func(*certs.Store, string)
		wantPings bool
		wantLog   string
	}{
		{name: "serving, unix", network: "unix", serve: serving, wantPings: true},
		{name: "serving, tcp", network: "tcp", serve: serving, wantPings: true},
		{name: "at the connection limit", network: "unix", serve: greeting("421 4.3.2 Too many connections"), wantPings: true},
		{name: "never greets", network: "unix", serve: neverGreets, wantLog: "reading the greeting"},
		{name: "greets with an error", network: "tcp", serve: greeting("554 5.3.2 Not now"), wantLog: "want 220"},
		{name: "accept loop stuck", network: "unix", serve: acceptStuck, wantLog: "has not called Accept"},
		{name: "Accept blocks for ever", network: "tcp", serve: serving, blocking: true, wantLog: "reading the greeting"},
		{name: "no certificate store", network: "unix", serve: serving, noStore: true, wantLog: "certificate store"},
		{name: "certificate lookup panics", network: "unix", serve: serving, lookup: lookupPanics, wantLog: "lookup panicked"},
		{name: "certificate lookup hangs", network: "tcp", serve: serving, lookup: lookupHangs(t), wantLog: "certificate store: lookup: no answer"},
		// systemd's socket is root:postfix 0660: the daemon cannot connect
		// to it, and must neither be restarted for that nor go unchecked.
		{name: "own socket not connectable, serving", network: "unix", serve: serving, dial: eacces, wantPings: true, wantLog: "checks only that socket's accept loop"},
		{name: "own socket not connectable, accept loop stuck", network: "unix", serve: acceptStuck, dial: eacces, wantLog: "has not called Accept"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "wd") // short: sun_path holds 108 bytes
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			notify := listenNotify(t, filepath.Join(dir, "notify"))
			const interval = 400 * time.Millisecond
			t.Setenv("NOTIFY_SOCKET", notify.LocalAddr().String())
			t.Setenv("WATCHDOG_USEC", strconv.FormatInt(interval.Microseconds(), 10))
			t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

			addr := "127.0.0.1:0"
			if tt.network == "unix" {
				addr = filepath.Join(dir, "lmtp.sock")
			}
			inner, err := net.Listen(tt.network, addr)
			if err != nil {
				t.Fatal(err)
			}
			if tt.blocking {
				inner = blockingAccept{inner, make(chan struct{})}
			}
			wl := &watchedListener{Listener: inner}
			served := make(chan struct{})
			go func() { defer close(served); tt.serve(wl) }()
			t.Cleanup(func() { inner.Close(); <-served })

			var logBuf syncBuffer
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			holder := &certs.Holder{} // no store, as if it had been lost
			if !tt.noStore {
				var err error
				if holder, err = certs.NewHolder(certs.Options{Dir: t.TempDir()}, nil); err != nil {
					t.Fatal(err)
				}
			}
			sc := newSelfCheck(holder, log, wl)
			if tt.dial != nil {
				sc.dial = tt.dial
			}
			if tt.lookup != nil {
				sc.lookup = tt.lookup
			}
			results := make(chan error, 100)
			n := newNotifier(log)
			stop := n.watchdog(func(d time.Duration) error {
				err := sc.run(d)
				results <- err
				return err
			}, func() string { return "test" })
			defer stop()

			// Three ticks, and the start of a fourth: by then the pings of
			// the first three, if any, are in the socket.
			const ticks = 3
			var errs []error
			for len(errs) <= ticks {
				select {
				case err := <-results:
					errs = append(errs, err)
				case <-time.After(checkWait):
					t.Fatalf("watchdog checks: got %d, want %d within %v", len(errs), ticks+1, checkWait)
				}
			}
			pings := notify.count(t, "WATCHDOG=1")
			if tt.wantPings && pings < ticks {
				t.Errorf("pings: got %d, want at least %d (check errors %v)", pings, ticks, errs)
			}
			if !tt.wantPings && pings != 0 {
				t.Errorf("pings: got %d, want none (check errors %v)", pings, errs)
			}
			logged := logBuf.String()
			if tt.wantLog != "" && strings.Count(logged, tt.wantLog) != 1 {
				t.Errorf("log: got %q, want %q exactly once", logged, tt.wantLog)
			}
		})
	}
}

func lookupPanics(*certs.Store, string) { panic("injected") }

// lookupHangs returns a lookup that does not return before the test ends.
func lookupHangs(t *testing.T) func(*certs.Store, string) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	return func(*certs.Store, string) { <-release }
}

// TestWatchdogCertificateStore checks the store part of the self-check on
// its own: it passes on a loaded store, and fails, without ending the
// daemon or piling up goroutines, when the lookup panics or hangs; a hung
// lookup that returns at last lets the check pass again.
func TestWatchdogCertificateStore(t *testing.T) {
	holder, err := certs.NewHolder(certs.Options{Dir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	const timeout = 200 * time.Millisecond

	sc := newSelfCheck(holder, log)
	var asked []string
	probe := sc.lookup
	sc.lookup = func(s *certs.Store, addr string) { asked = append(asked, addr); probe(s, addr) }
	if err := sc.run(timeout); err != nil {
		t.Errorf("loaded store: got %v, want nil", err)
	}
	if len(asked) != 1 || asked[0] != storeProbe {
		t.Errorf("lookups: got %q, want [%q]", asked, storeProbe)
	}

	if err := newSelfCheck(&certs.Holder{}, log).run(timeout); err == nil || !strings.Contains(err.Error(), "no current set") {
		t.Errorf("holder without a store: got %v, want \"no current set\"", err)
	}

	sc = newSelfCheck(holder, log)
	sc.lookup = lookupPanics
	for range 2 { // the panic is recovered each time
		if err := sc.run(timeout); err == nil || !strings.Contains(err.Error(), "lookup panicked: injected") {
			t.Errorf("panicking lookup: got %v, want \"lookup panicked: injected\"", err)
		}
	}

	sc = newSelfCheck(holder, log)
	release := make(chan struct{})
	var calls atomic.Int32
	sc.lookup = func(*certs.Store, string) {
		if calls.Add(1) == 1 {
			<-release
		}
	}
	start := time.Now()
	if err := sc.run(timeout); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging lookup: got %v, want the deadline", err)
	}
	if d := time.Since(start); d > checkWait {
		t.Errorf("hanging lookup: the check took %v, want about %v", d, timeout)
	}
	if err := sc.run(timeout); err == nil || !strings.Contains(err.Error(), "an earlier lookup has not returned") {
		t.Errorf("while the first lookup hangs: got %v, want \"an earlier lookup has not returned\"", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("lookups started while the first hangs: got %d, want 1", n)
	}
	close(release)
	deadline := time.Now().Add(checkWait)
	for {
		err := sc.run(timeout)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the hung lookup returned: got %v, want nil within %v", err, checkWait)
		}
		runtime.Gosched()
	}
}

func TestWatchdogRecovers(t *testing.T) {
	dir, err := os.MkdirTemp("", "wd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	notify := listenNotify(t, filepath.Join(dir, "notify"))
	t.Setenv("NOTIFY_SOCKET", notify.LocalAddr().String())
	t.Setenv("WATCHDOG_USEC", "400000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	var logBuf syncBuffer
	n := newNotifier(slog.New(slog.NewTextHandler(&logBuf, nil)))
	entered := make(chan struct{}, 100)
	release := make(chan struct{})
	fail := []error{fmt.Errorf("first"), fmt.Errorf("second"), nil, nil}
	stop := n.watchdog(func(time.Duration) error {
		entered <- struct{}{}
		var err error
		if len(fail) > 0 {
			err, fail = fail[0], fail[1:]
		} else {
			<-release // until the test ends: no fifth ping
			return errors.New("released")
		}
		return err
	}, func() string { return "test" })
	defer stop()
	defer close(release)
	// The fifth check starts after the fourth tick's ping was sent.
	for range 5 {
		<-entered
	}
	if got := notify.count(t, "WATCHDOG=1"); got != 2 {
		t.Errorf("pings after two failed and two passed checks: got %d, want 2", got)
	}
	logged := logBuf.String()
	if strings.Count(logged, "self-check failed") != 1 || !strings.Contains(logged, "error=first") || !strings.Contains(logged, "passes again") {
		t.Errorf("log: got %q, want the first failure once and the recovery", logged)
	}
}

// notifyConn is systemd's end of NOTIFY_SOCKET.
type notifyConn struct{ *net.UnixConn }

func listenNotify(t *testing.T, path string) notifyConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return notifyConn{c}
}

// count reads what has arrived so far, without waiting, and counts the
// messages with a line equal to state.
func (c notifyConn) count(t *testing.T, state string) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	buf := make([]byte, 4096)
	for {
		var k int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			k, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rerr != nil {
			return n
		}
		for _, line := range strings.Split(string(buf[:k]), "\n") {
			if line == state {
				n++
			}
		}
	}
}

// syncBuffer is a bytes.Buffer the watchdog goroutine and the test may
// share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
