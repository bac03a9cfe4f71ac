package smtp_test

// smimefilter patch: the size limit at its exact value, BDAT chunks cut short
// and DATA framing, tested over real sockets with a backend that records
// what it stored.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// openTransaction starts a server, sends EHLO (LHLO with LMTP), MAIL and one
// RCPT, and returns with the client ready to send the message. A deadline on
// the client makes a server that waits for more input fail the test instead
// of hanging it.
func openTransaction(t *testing.T, configure serverConfigureFunc) (*backend, net.Conn, *bufio.Scanner) {
	t.Helper()
	be, s, c, scanner := testServer(t, configure)
	t.Cleanup(func() { s.Close() })
	t.Cleanup(func() { c.Close() })
	be.dataErrors = make(chan error, 1)
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	hello := "EHLO"
	if s.LMTP {
		hello = "LHLO"
	}
	steps := []struct{ send, want string }{
		{"", "220 "},
		{hello + " localhost\r\n", "250 "},
		{"MAIL FROM:<root@nsa.gov>\r\n", "250 "},
		{"RCPT TO:<root@gchq.gov.uk>\r\n", "250 "},
	}
	for _, step := range steps {
		io.WriteString(c, step.send)
		var reply string
		for {
			reply = readReply(t, scanner)
			if !strings.HasPrefix(reply, "250-") {
				break
			}
		}
		if !strings.HasPrefix(reply, step.want) {
			t.Fatalf("reply to %q: got %q, want %q...", step.send, reply, step.want)
		}
	}
	return be, c, scanner
}

// sizedMessage returns a message of exactly n bytes (n >= 40) with a line
// that starts with a dot, so that the data counted against the limit (after
// dot-unstuffing) is one byte shorter than DATA's bytes on the wire.
func sizedMessage(n int) string {
	head := "Subject: size\r\n\r\n.dot line\r\n"
	return head + strings.Repeat("x", n-len(head)-2) + "\r\n"
}

// dotStuff applies RFC 5321 section 4.5.2's transparency to msg, which ends
// with CRLF, and appends the end-of-data line.
func dotStuff(msg string) string {
	return strings.ReplaceAll("\r\n"+msg, "\r\n.", "\r\n..")[2:] + ".\r\n"
}

// stored returns the data of every message the backend stored.
func stored(be *backend) []string {
	var data []string
	for _, msg := range append(append([]*message(nil), be.messages...), be.anonmsgs...) {
		data = append(data, string(msg.Data))
	}
	return data
}

// With MaxMessageBytes = N, N bytes of message are accepted and N+1 refused
// with 552 5.3.4, whichever command carries them.
func TestServer_sizeLimitExact(t *testing.T) {
	const limit = 100
	type sender func(t *testing.T, c net.Conn, scanner *bufio.Scanner, msg string) (reply string)
	data := func(t *testing.T, c net.Conn, scanner *bufio.Scanner, msg string) string {
		io.WriteString(c, "DATA\r\n")
		if reply := readReply(t, scanner); !strings.HasPrefix(reply, "354 ") {
			return reply
		}
		io.WriteString(c, dotStuff(msg))
		return readReply(t, scanner)
	}
	bdat := func(chunks int) sender {
		return func(t *testing.T, c net.Conn, scanner *bufio.Scanner, msg string) string {
			for i := 0; i < chunks-1; i++ {
				part := msg[:len(msg)/chunks]
				msg = msg[len(part):]
				fmt.Fprintf(c, "BDAT %d\r\n%s", len(part), part)
				if reply := readReply(t, scanner); !strings.HasPrefix(reply, "250 ") {
					return reply
				}
			}
			fmt.Fprintf(c, "BDAT %d LAST\r\n%s", len(msg), msg)
			return readReply(t, scanner)
		}
	}
	tests := []struct {
		name string
		lmtp bool
		send sender
		// whether the backend's Data runs when the message is too large
		dataRunsWhenRefused bool
	}{
		{"DATA", false, data, true},
		{"LMTP DATA", true, data, true},
		{"BDAT", false, bdat(1), false},
		{"BDAT in two chunks", false, bdat(2), true},
	}
	for _, tc := range tests {
		for _, size := range []int{limit - 1, limit, limit + 1} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, size), func(t *testing.T) {
				be, c, scanner := openTransaction(t, func(s *smtp.Server) {
					s.LMTP = tc.lmtp
					s.MaxMessageBytes = limit
				})
				msg := sizedMessage(size)
				reply := tc.send(t, c, scanner, msg)

				if size <= limit {
					if !strings.HasPrefix(reply, "250 ") {
						t.Fatalf("%d bytes with a limit of %d: got %q, want 250", size, limit, reply)
					}
					if err := <-be.dataErrors; err != nil {
						t.Fatalf("backend's reader: got %v, want the whole message", err)
					}
					if got := stored(be); len(got) != 1 || got[0] != msg {
						t.Fatalf("stored %q, want %q", got, msg)
					}
					return
				}
				if !strings.HasPrefix(reply, "552 5.3.4") {
					t.Fatalf("%d bytes with a limit of %d: got %q, want 552 5.3.4", size, limit, reply)
				}
				if tc.dataRunsWhenRefused {
					if err := <-be.dataErrors; err == nil {
						t.Fatal("backend's reader ended cleanly, want an error")
					}
				}
				// The server is back at the command loop, with nothing stored.
				io.WriteString(c, "NOOP\r\n")
				if reply := readReply(t, scanner); !strings.HasPrefix(reply, "250 ") {
					t.Fatalf("NOOP after the refusal: got %q, want 250", reply)
				}
				if got := stored(be); len(got) != 0 {
					t.Fatalf("stored %q, want nothing", got)
				}
			})
		}
	}
}

// A BDAT chunk that the connection ends before its announced size must not
// end the message cleanly: the backend would store the first bytes as the
// whole message.
func TestServer_Chunking_cutShort(t *testing.T) {
	for _, last := range []string{" LAST", ""} {
		t.Run("BDAT 1000"+last, func(t *testing.T) {
			be, c, scanner := openTransaction(t, func(*smtp.Server) {})
			body := "Subject: cut short\r\n\r\nThis is not all of it.\r\n"
			fmt.Fprintf(c, "BDAT 1000%s\r\n%s", last, body)
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}

			if err := <-be.dataErrors; !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("backend's reader ended with %v, want io.ErrUnexpectedEOF", err)
			}
			if got := stored(be); len(got) != 0 {
				t.Errorf("stored %q, want nothing", got)
			}
			// A 4xx reply or none, then the connection is closed.
			if scanner.Scan() {
				if reply := scanner.Text(); !strings.HasPrefix(reply, "4") {
					t.Errorf("reply: got %q, want 4xx or none", reply)
				}
			}
			if scanner.Scan() {
				t.Errorf("got %q after the reply, want the connection closed", scanner.Text())
			}
			if err := scanner.Err(); err != nil {
				t.Errorf("reading replies: %v", err)
			}
		})
	}
}

// A chunk that stops coming until the read deadline passes fails the
// message too, and the connection is closed: the rest of the chunk must not
// be read as commands.
func TestServer_Chunking_timeoutInChunk(t *testing.T) {
	be, c, scanner := openTransaction(t, func(s *smtp.Server) {
		s.ReadTimeout = 300 * time.Millisecond
	})
	io.WriteString(c, "BDAT 1000 LAST\r\nSubject: slow\r\n\r\n")

	var netErr net.Error
	if err := <-be.dataErrors; !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Errorf("backend's reader ended with %v, want the timeout", err)
	}
	if reply := readReply(t, scanner); !strings.HasPrefix(reply, "421 4.4.2") {
		t.Errorf("reply: got %q, want 421 4.4.2", reply)
	}
	io.WriteString(c, "NOOP\r\n")
	if scanner.Scan() {
		t.Errorf("got %q after the 421, want the connection closed", scanner.Text())
	}
	if got := stored(be); len(got) != 0 {
		t.Errorf("stored %q, want nothing", got)
	}
}

// A connection closed between two chunks still gives ErrDataReset, as
// upstream documents.
func TestServer_Chunking_closedBetweenChunks(t *testing.T) {
	be, c, scanner := openTransaction(t, func(*smtp.Server) {})
	io.WriteString(c, "BDAT 8\r\nHey <3\r\n")
	if reply := readReply(t, scanner); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("BDAT: got %q, want 250", reply)
	}
	c.Close()
	if err := <-be.dataErrors; err != smtp.ErrDataReset {
		t.Fatalf("backend's reader ended with %v, want ErrDataReset", err)
	}
}

// A bare CR before the CRLF of the last line does not hide the end-of-data
// line (RFC 5321 section 4.1.1.4), and the next command is read as one.
func TestServer_bareCRBeforeEndOfData(t *testing.T) {
	be, c, scanner := openTransaction(t, func(*smtp.Server) {})
	io.WriteString(c, "DATA\r\n")
	if reply := readReply(t, scanner); !strings.HasPrefix(reply, "354 ") {
		t.Fatalf("DATA: got %q, want 354", reply)
	}
	io.WriteString(c, "Subject: cr\r\n\r\nlast line\r\r\n..stuffed\r\n.\r\nNOOP\r\n")
	if reply := readReply(t, scanner); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("end of data: got %q, want 250", reply)
	}
	if err := <-be.dataErrors; err != nil {
		t.Fatalf("backend's reader: %v", err)
	}
	want := "Subject: cr\r\n\r\nlast line\r\r\n.stuffed\r\n"
	if got := stored(be); len(got) != 1 || got[0] != want {
		t.Fatalf("stored %q, want %q", got, []string{want})
	}
	if reply := readReply(t, scanner); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("NOOP: got %q, want 250", reply)
	}
}
