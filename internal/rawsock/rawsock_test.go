package rawsock

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// pair returns two connected sockets of the given network, the first
// wrapped.
func pair(t *testing.T, network string) (*Conn, net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	c, err := net.Dial(network, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.FailNow()
	}
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) did not wrap it", c)
	}
	t.Cleanup(func() { w.Close(); peer.Close() })
	return w, peer
}

// A write far larger than the socket buffer fills it, gets EAGAIN, waits for
// the peer and goes on; reads come back in whatever pieces the kernel gives.
// Both directions carry the same bytes as an ordinary connection would.
func TestLargeTransferBothWays(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			c, peer := pair(t, network)
			data := make([]byte, 8<<20)
			rand.Read(data)

			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(peer)
				got <- b
			}()
			n, err := c.Write(data)
			if n != len(data) || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
			}
			c.Conn.(interface{ CloseWrite() error }).CloseWrite()
			if b := <-got; !bytes.Equal(b, data) {
				t.Fatalf("peer received %d bytes, not the %d written", len(b), len(data))
			}

			go func() {
				// Small writes with pauses: the wrapped side must wait in
				// the netpoller, not spin or return short of EOF.
				for off := 0; off < len(data); off += 100 << 10 {
					peer.Write(data[off:min(off+100<<10, len(data))])
					if off%(1<<20) == 0 {
						time.Sleep(time.Millisecond)
					}
				}
				peer.Close()
			}()
			b, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(b, data) {
				t.Fatalf("read %d bytes, err %v; want %d bytes, nil", len(b), err, len(data))
			}
		})
	}
}

func TestEOFAndEmptyRead(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			c, peer := pair(t, network)
			if n, err := c.Read(nil); n != 0 || err != nil {
				t.Fatalf("Read(nil) = %d, %v; want 0, nil", n, err)
			}
			if n, err := c.Write(nil); n != 0 || err != nil {
				t.Fatalf("Write(nil) = %d, %v; want 0, nil", n, err)
			}
			peer.Write([]byte("last"))
			peer.Close()
			b := make([]byte, 16)
			if n, err := io.ReadAtLeast(c, b, 4); n != 4 || err != nil {
				t.Fatalf("Read = %d, %v; want 4, nil", n, err)
			}
			// go-smtp compares with ==, so io.EOF must come back bare.
			if n, err := c.Read(b); n != 0 || err != io.EOF {
				t.Fatalf("Read after the peer closed = %d, %v; want 0, io.EOF", n, err)
			}
			// Empty calls still see a closed connection, as net.Conn's do.
			c.Close()
			if _, err := c.Read(nil); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read(nil) after Close: %v; want net.ErrClosed", err)
			}
			if _, err := c.Write(nil); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Write(nil) after Close: %v; want net.ErrClosed", err)
			}
		})
	}
}

// Deadlines set on the connection still apply, and the error is the one
// go-smtp and the pool test for: a net.Error whose Timeout is true.
func TestDeadlines(t *testing.T) {
	c, _ := pair(t, "unix")
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v; want a timeout", err)
	}
	if oe, ok := err.(*net.OpError); !ok || oe.Op != "read" {
		t.Fatalf("Read error is %#v; want a *net.OpError for read, as net.Conn gives (go-smtp asserts net.Error directly)", err)
	}

	// Nobody reads the peer: the write fills the buffer and must stop at
	// its deadline with what it wrote so far.
	big := make([]byte, 64<<20)
	c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond)) // long enough to start writing on a loaded machine
	n, err := c.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 64<<20 {
		t.Fatalf("Write past its deadline = %d, %v; want a partial count and a timeout", n, err)
	}
}

func TestClosed(t *testing.T) {
	c, peer := pair(t, "unix")
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	c.Close() // Shutdown closes connections a goroutine is reading
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read interrupted by Close: %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not interrupt a blocked Read")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v; want net.ErrClosed", err)
	}

	// A peer that went away: write(2) fails with EPIPE (Go ignores
	// SIGPIPE on sockets), reported the way the net package reports it.
	c2, peer2 := pair(t, "unix")
	peer2.Close()
	var err error
	for range 100 {
		if _, err = c2.Write([]byte("x")); err != nil {
			break
		}
	}
	var se *os.SyscallError
	if !errors.Is(err, syscall.EPIPE) || !errors.As(err, &se) || se.Syscall != "write" {
		t.Fatalf("Write to a closed peer: %v; want write: broken pipe", err)
	}
	_ = peer
}

// Anything that is not a non-blocking kernel socket the runtime polls is
// left alone.
func TestWrapLeavesOthers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Fatal("Wrap changed a net.Pipe")
	}

	// A socket put in blocking mode (what File and Fd do): a raw read
	// would sleep holding the scheduler's processor.
	w, _ := pair(t, "unix")
	c := w.Conn
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		if err := syscall.SetNonblock(int(fd), false); err != nil {
			t.Fatal(err)
		}
	})
	if Wrap(c) != c {
		t.Fatal("Wrap took a blocking socket")
	}
}

// Listener wraps what it accepts, and the result carries a conversation.
func TestListener(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	rl := Listener(l)
	defer rl.Close()
	go func() {
		c, err := net.Dial("unix", l.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("LHLO x\r\n"))
		io.Copy(io.Discard, c)
	}()
	c, err := rl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*Conn); !ok {
		t.Fatalf("Accept returned %T; want *rawsock.Conn", c)
	}
	b := make([]byte, 8)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "LHLO x\r\n" {
		t.Fatalf("read %q, %v", b, err)
	}
}

// Read and Write allocate nothing: they run for every reply and every
// chunk of every message.
func TestNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's syscall annotations allocate")
	}
	c, peer := pair(t, "unix")
	msg := []byte("250 2.0.0 OK\r\n")
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		peer.Write(msg)
		if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	// The peer is an ordinary net.Conn; it allocates nothing either, so
	// anything counted here is ours.
	if allocs != 0 {
		t.Fatalf("%v allocations per Write and Read; want 0", allocs)
	}
}

// net.Conn allows concurrent calls: reads racing each other and a write
// get every byte exactly once.
func TestConcurrentCalls(t *testing.T) {
	c, peer := pair(t, "unix")
	const total = 1 << 20
	go func() {
		chunk := make([]byte, 1000)
		for sent := 0; sent < total; sent += len(chunk) {
			peer.Write(chunk[:min(len(chunk), total-sent)])
		}
		peer.(*net.UnixConn).CloseWrite() // both readers end on EOF
	}()
	go io.Copy(io.Discard, peer)
	got := make(chan int, 2)
	for range 2 {
		go func() {
			n := 0
			b := make([]byte, 300)
			for {
				k, err := c.Read(b)
				n += k
				if err != nil {
					got <- n
					return
				}
			}
		}()
	}
	for range 100 {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if n := <-got + <-got; n != total {
		t.Fatalf("two concurrent readers got %d bytes together; want %d", n, total)
	}
}
