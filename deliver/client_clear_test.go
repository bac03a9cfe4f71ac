package deliver

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestEndClearsWriteBuffer: a connection goes back to the pool after its
// transaction; its write buffer must not keep the end of the message.
func TestEndClearsWriteBuffer(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go io.Copy(io.Discard, b)
	c := newClient(a, true, time.Second)
	w := &dotWriter{c: c, timeout: time.Second, bol: true}
	if _, err := w.Write([]byte("the secret is 42\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.end(); err != nil {
		t.Fatal(err)
	}
	buf := c.bw.AvailableBuffer()
	if bytes.Contains(buf[:cap(buf)], []byte("secret")) {
		t.Error("the connection's write buffer still holds the message")
	}
}
