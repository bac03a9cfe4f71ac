package e2e

import (
	"io"
	"net"
	"os"
	"sync"
	"testing"
)

// holdProxy sits between Postfix's lmtp client and the daemon and forwards
// both ways, but stops forwarding what the client sends once a limit is
// reached. The daemon is then, for certain, in the middle of reading what
// Postfix sends (a DATA phase cut short), however fast it reads: the
// moment for a fault that a race against the daemon's reading could only
// hit with a message large enough to outrun it.
type holdProxy struct {
	l      *net.UnixListener
	target string

	mu        sync.Mutex
	limit     int64 // bytes from the client forwarded before holding; <0: none
	forwarded int64
	held      chan struct{} // closed when the limit is reached
}

// newHoldProxy listens on path (mode 0666, for Postfix's user) and forwards
// each connection to target, which is dialed when the client connects.
func newHoldProxy(t testing.TB, path, target string) *holdProxy {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{l: l, target: target, limit: -1, held: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.serve(c)
			}()
		}
	}()
	return p
}

// holdAfter makes the proxy stop forwarding the client's bytes once n more
// have passed (n < 0: never) and returns a channel closed when it does.
func (p *holdProxy) holdAfter(n int64) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forwarded = 0
	p.limit = n
	p.held = make(chan struct{})
	return p.held
}

// allow returns how many of want bytes may be forwarded now.
func (p *holdProxy) allow(want int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.limit < 0 {
		return want
	}
	n := int(min(int64(want), p.limit-p.forwarded))
	p.forwarded += int64(n)
	if p.forwarded == p.limit {
		select {
		case <-p.held:
		default:
			close(p.held)
		}
	}
	return n
}

// serve forwards one connection until either side closes. The client's
// bytes past the limit are read and dropped: the daemon never sees them,
// and the client, which is not stopped, sees a peer that only reads.
func (p *holdProxy) serve(client net.Conn) {
	defer client.Close()
	daemon, err := net.Dial("unix", p.target)
	if err != nil {
		return // the client sees the connection closed, as without a daemon
	}
	defer daemon.Close()
	up := make(chan struct{})
	go func() {
		defer close(up)
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				if k := p.allow(n); k > 0 {
					if _, werr := daemon.Write(buf[:k]); werr != nil {
						return
					}
				}
			}
			if err != nil {
				daemon.(*net.UnixConn).CloseWrite()
				return
			}
		}
	}()
	// The daemon's replies; its end (a kill: EOF or a reset) ends the
	// client's connection.
	io.Copy(client, daemon)
	client.Close()
	<-up
}
