package deliver

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// then is what a fake peer does after its reply.
type then int

const (
	carryOn  then = iota
	hangUp        // close the connection (without a reply if there is none)
	goSilent      // stop reading and answering, connection left open
)

// fakePeer is an LMTP (or SMTP) server on a real Unix socket. It logs every
// command line per connection and answers like Dovecot unless script says
// otherwise; a reply starting 421 closes the connection, as RFC 5321 §3.8
// has it.
type fakePeer struct {
	path string
	// ext are the LHLO keywords offered, such as "PIPELINING".
	ext []string
	// smtp gives one reply after the data instead of one per recipient.
	smtp bool
	// script may override the reply to a command line ("." for the end of
	// the data) on connection conn (0 for the first accepted); reply ""
	// keeps the default.
	script func(conn int, line string) (reply string, next then)

	mu    sync.Mutex
	log   [][]string // command lines per connection
	conns []net.Conn
	done  chan struct{}
}

func startPeer(t *testing.T, p *fakePeer) *fakePeer {
	t.Helper()
	p.path = filepath.Join(t.TempDir(), "peer.sock")
	p.done = make(chan struct{})
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(p.done)
		l.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			n := len(p.conns)
			p.conns = append(p.conns, c)
			p.log = append(p.log, nil)
			p.mu.Unlock()
			go p.serve(n, c)
		}
	}()
	return p
}

// pipelining is the extension list of a peer like Dovecot.
var pipelining = []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"}

func (p *fakePeer) serve(n int, c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	c.Write([]byte("220 fake ready\r\n"))
	accepted, inData, inMail := 0, false, false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if inData && line != ".\r\n" {
			continue
		}
		line = strings.TrimRight(line, "\r\n")
		p.mu.Lock()
		p.log[n] = append(p.log[n], line)
		p.mu.Unlock()
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		var rep string
		switch {
		case line == ".":
			inData = false
			rep = "250 2.0.0 ok\r\n"
			if !p.smtp {
				rep = strings.Repeat(rep, accepted)
			}
			accepted, inMail = 0, false
		case verb == "LHLO" || verb == "EHLO":
			rep = "250-fake\r\n"
			for _, e := range p.ext {
				rep += "250-" + e + "\r\n"
			}
			rep += "250 SIZE\r\n"
		case verb == "RSET":
			accepted, inMail = 0, false
			rep = "250 2.0.0 ok\r\n"
		case verb == "MAIL":
			rep = "250 2.1.0 ok\r\n"
		case verb == "RCPT" && inMail:
			rep = "250 2.1.5 ok\r\n"
		case verb == "RCPT":
			rep = "503 5.5.1 MAIL first\r\n"
		case verb == "DATA" && accepted > 0:
			rep = "354 go ahead\r\n"
		case verb == "DATA":
			rep = "503 5.5.1 no valid recipients\r\n"
		case verb == "QUIT":
			c.Write([]byte("221 2.0.0 bye\r\n"))
			return
		default:
			rep = "500 5.5.2 unknown command\r\n"
		}
		next := carryOn
		if p.script != nil {
			if r, nx := p.script(n, line); r != "" || nx != carryOn {
				rep, next = r, nx
			}
		}
		if verb == "MAIL" && strings.HasPrefix(rep, "250") {
			inMail = true
		}
		if verb == "RCPT" && strings.HasPrefix(rep, "25") {
			accepted++
		}
		if verb == "DATA" && strings.HasPrefix(rep, "354") {
			inData = true
		}
		c.Write([]byte(rep))
		switch {
		case next == hangUp || strings.HasPrefix(rep, "421"):
			return
		case next == goSilent:
			<-p.done
			return
		}
	}
}

// commands returns the command lines connection n received so far.
func (p *fakePeer) commands(n int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n >= len(p.log) {
		return nil
	}
	return append([]string(nil), p.log[n]...)
}

// dials returns the number of connections accepted so far.
func (p *fakePeer) dials() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// drop closes connection n from the peer's side after sending msg, as a
// server timing out an idle client does.
func (p *fakePeer) drop(n int, msg string) {
	p.mu.Lock()
	c := p.conns[n]
	p.mu.Unlock()
	c.Write([]byte(msg))
	c.Close()
}

// saw waits until connection n has received a line starting with prefix.
func (p *fakePeer) saw(t *testing.T, n int, prefix string) {
	t.Helper()
	waitFor(t, "the peer to receive "+prefix, func() bool {
		for _, l := range p.commands(n) {
			if strings.HasPrefix(l, prefix) {
				return true
			}
		}
		return false
	})
}

// waitFor polls cond; a condition that never holds fails the test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// verbs shortens command lines to their verbs ("." stays).
func verbs(lines []string) string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.ToUpper(strings.Fields(l + " x")[0])
	}
	return strings.Join(out, " ")
}
