package server

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestReadBufferClearedBeforeReuse: the read-ahead buffer held message text
// (plaintext from Postfix); it is cleared before it goes back to the pool,
// whether the connection read it all or hung up with part of it unread.
func TestReadBufferClearedBeforeReuse(t *testing.T) {
	for _, hangUp := range []bool{false, true} {
		client, srv := net.Pipe()
		defer client.Close()
		c := &batchConn{Conn: srv}
		secret := strings.Repeat("the secret is 42\r\n", 100)
		go func() {
			client.Write([]byte(secret))
			io.Copy(io.Discard, client) // the 421 on hang-up
		}()
		p := make([]byte, 100)
		if _, err := c.Read(p); err != nil {
			t.Fatal(err)
		}
		buf := c.rbuf
		if buf == nil {
			t.Fatal("nothing read ahead")
		}
		if hangUp {
			c.hangUp()
			if _, err := c.Read(p); err != io.EOF {
				t.Fatalf("Read after hangUp: %v, want EOF", err)
			}
		} else {
			for c.rbuf != nil {
				c.Read(p)
			}
		}
		if strings.Contains(string((*buf)[:cap(*buf)]), "secret") {
			t.Errorf("hang-up %v: the pooled read buffer still holds the message text", hangUp)
		}
	}
}

// TestHangUpEndsAWaitingRead: a connection waiting for the client's next
// command gets 421 4.3.2 and EOF at once, even if go-smtp set a later read
// deadline just before.
func TestHangUpEndsAWaitingRead(t *testing.T) {
	client, srv := net.Pipe()
	defer client.Close()
	c := &batchConn{Conn: srv}
	done := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Hour))
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- string(b)
	}()
	c.hangUp()
	c.SetReadDeadline(time.Now().Add(time.Hour)) // go-smtp's next command deadline: ignored
	select {
	case err := <-done:
		if err != io.EOF {
			t.Errorf("Read returned %v, want EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a hang-up did not end the waiting Read")
	}
	c.Close()
	if s := <-got; s != replyShutdown {
		t.Errorf("client got %q, want %q", s, replyShutdown)
	}
}
