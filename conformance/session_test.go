package conformance

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// mode is how a client groups its commands (RFC 2920).
type mode int

const (
	// lockstep writes one command and reads its reply before the next.
	lockstep mode = iota
	// pipelined writes MAIL, every RCPT and DATA (or every BDAT chunk) in
	// one write, as Postfix's lmtp client does, then reads the replies.
	pipelined
)

// chunk is one BDAT command (RFC 3030) and the bytes that follow it. size is
// what the command announces; when it is larger than len(data), the client
// stops there and closes its side: a transfer cut short.
type chunk struct {
	size int
	data string
	last bool
}

func (c chunk) command() string {
	if c.last {
		return fmt.Sprintf("BDAT %d LAST\r\n", c.size)
	}
	return fmt.Sprintf("BDAT %d\r\n", c.size)
}

func (c chunk) cut() bool { return c.size > len(c.data) }

// session is what a client sends after LHLO, the same bytes to both sides
// but for the domain of the recipients, and MAIL parameters of extensions
// the server did not announce, which a client leaves out.
type session struct {
	mode       mode
	mailParams string // after MAIL FROM:<...>, e.g. " SIZE=100"
	// data is the wire after DATA's 354: dot-stuffed message and the
	// terminating ".\r\n", exactly as written; chunks replaces DATA with
	// BDAT when set.
	data   string
	chunks []chunk
	// eof closes the client's side after the data instead of sending QUIT.
	eof bool
}

// reply is one server reply; code 0 means none came (the connection
// closed, or replyTimeout passed).
type reply struct {
	code int
	text string
}

func (r reply) String() string {
	if r.code == 0 {
		return "no reply"
	}
	return r.text
}

// class is the reply class that decides what a client does: 2, 4 or 5, or
// 0 for no reply (the client must retry: a 4xx in effect).
func (r reply) class() int { return r.code / 100 }

// transcript is what one side answered.
type transcript struct {
	// outcome is each recipient's result: the first failing reply among
	// MAIL, its RCPT, DATA and the non-final BDAT chunks, else its
	// reply after the data (LMTP gives one per accepted recipient,
	// RFC 2033 §4.2), else "no reply".
	outcome []reply
	// log is every line sent (commands only) and received, for reports.
	log []string
	// stuck: a reply did not come within replyTimeout.
	stuck bool
}

// run plays s against the LMTP server at socket for rcpts.
func run(socket string, rcpts []string, s session) transcript {
	tr := transcript{outcome: make([]reply, len(rcpts))}
	done := make([]bool, len(rcpts))
	// settle records rep as the outcome of recipients idx (all when none
	// given) that have none yet, when it is a failure or the final reply,
	// and reports whether it was a success.
	settle := func(rep reply, final bool, idx ...int) bool {
		if len(idx) == 0 {
			for i := range rcpts {
				idx = append(idx, i)
			}
		}
		ok := rep.class() == 2 || rep.class() == 3
		for _, i := range idx {
			if !done[i] && (!ok || final) {
				tr.outcome[i], done[i] = rep, true
			}
		}
		return ok
	}
	c, err := net.Dial("unix", socket)
	if err != nil {
		tr.log = append(tr.log, "dial: "+err.Error())
		return tr
	}
	defer c.Close()
	r := bufio.NewReader(c)
	read := func() reply {
		c.SetReadDeadline(time.Now().Add(replyTimeout))
		rep, err := readReply(r)
		if err != nil {
			tr.log = append(tr.log, "S: ("+err.Error()+")")
			var ne net.Error
			tr.stuck = tr.stuck || errors.As(err, &ne) && ne.Timeout()
			return reply{}
		}
		tr.log = append(tr.log, "S: "+rep.text)
		return rep
	}
	write := func(b string) bool {
		for _, line := range strings.SplitAfter(b, "\r\n") {
			if isCommand(line) {
				tr.log = append(tr.log, "C: "+strings.TrimSuffix(line, "\r\n"))
			}
		}
		c.SetWriteDeadline(time.Now().Add(replyTimeout))
		if _, err := io.WriteString(c, b); err != nil {
			tr.log = append(tr.log, "C: (write: "+err.Error()+")")
			return false
		}
		return true
	}
	closeWrite := func() {
		tr.log = append(tr.log, "C: (closes its side)")
		c.(*net.UnixConn).CloseWrite()
	}

	if !settle(read(), false) || !write("LHLO client.localhost\r\n") {
		return tr
	}
	lhlo := read()
	if !settle(lhlo, false) {
		return tr
	}
	params := s.mailParams
	if !hasExtension(lhlo, "SIZE") {
		// As Postfix's client does: SIZE only to a server that announced
		// it (RFC 1870 §5). Dovecot's LMTP does not, and refuses it.
		params = withoutParam(params, "SIZE")
	}
	cmds := []string{"MAIL FROM:<" + senderAddr + ">" + params + "\r\n"}
	for _, rc := range rcpts {
		cmds = append(cmds, "RCPT TO:<"+rc+">\r\n")
	}
	if s.chunks == nil {
		cmds = append(cmds, "DATA\r\n")
	}
	if s.mode == pipelined {
		group := strings.Join(cmds, "")
		// RFC 3030 §4.2: BDAT may be pipelined with its data.
		for _, ch := range s.chunks {
			group += ch.command() + ch.data
		}
		if !write(group) {
			return tr
		}
	}
	next := func(cmd string) reply {
		if s.mode == lockstep && !write(cmd) {
			return reply{}
		}
		return read()
	}

	settle(next(cmds[0]), false)
	var accepted []int
	for i := range rcpts {
		if settle(next(cmds[1+i]), false, i) && !done[i] {
			accepted = append(accepted, i)
		}
	}
	// finals reads the replies after the data: one per accepted
	// recipient, or a single one when none was accepted.
	finals := func() {
		if len(accepted) == 0 {
			settle(read(), true)
			return
		}
		for _, i := range accepted {
			settle(read(), true, i)
		}
	}
	if s.chunks == nil {
		if rep := next(cmds[len(cmds)-1]); rep.code != 354 {
			settle(rep, true)
		} else if write(s.data) {
			if s.eof {
				closeWrite()
			}
			finals()
		}
	} else {
		for _, ch := range s.chunks {
			if s.mode == lockstep && !write(ch.command()+ch.data) {
				break
			}
			if ch.cut() {
				closeWrite()
			}
			if ch.last || ch.cut() {
				finals()
				break
			}
			settle(read(), false)
		}
	}
	tr.close(c, r, s.eof)
	return tr
}

// String is the transcript for a report, long lines shortened.
func (tr transcript) String() string {
	var b strings.Builder
	for _, l := range tr.log {
		if len(l) > 300 {
			l = l[:300] + "..."
		}
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// close ends the session: QUIT, or, after the client closed its side, the
// server's close. Either way the server has finished with the transaction
// when close returns, unless it was stuck: then the connection is closed
// under it.
func (tr *transcript) close(c net.Conn, r *bufio.Reader, eof bool) {
	if tr.stuck {
		return
	}
	c.SetDeadline(time.Now().Add(replyTimeout))
	if !eof {
		io.WriteString(c, "QUIT\r\n")
		tr.log = append(tr.log, "C: QUIT")
	}
	for {
		rep, err := readReply(r)
		if err != nil {
			return
		}
		tr.log = append(tr.log, "S: "+rep.text)
	}
}

// hasExtension reports whether an LHLO reply announces the extension.
func hasExtension(lhlo reply, ext string) bool {
	for _, line := range strings.Split(lhlo.text, " / ") {
		if len(line) < 4 {
			continue
		}
		kw, _, _ := strings.Cut(line[4:], " ")
		if strings.EqualFold(kw, ext) {
			return true
		}
	}
	return false
}

// withoutParam removes a MAIL parameter (" NAME=value") from params.
func withoutParam(params, name string) string {
	var kept []string
	for _, p := range strings.Fields(params) {
		k, _, _ := strings.Cut(p, "=")
		if !strings.EqualFold(k, name) {
			kept = append(kept, " "+p)
		}
	}
	return strings.Join(kept, "")
}

func isCommand(line string) bool {
	for _, p := range []string{"LHLO ", "MAIL ", "RCPT ", "DATA\r\n", "BDAT ", "QUIT"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// readReply reads one (possibly multi-line) reply, RFC 5321 §4.2.
func readReply(r *bufio.Reader) (reply, error) {
	var text []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err == io.EOF && line == "" && len(text) == 0 {
				return reply{}, io.EOF
			}
			return reply{}, fmt.Errorf("reading reply: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return reply{}, fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return reply{}, fmt.Errorf("reply line %q: %w", line, err)
		}
		text = append(text, line)
		if len(line) == 3 || line[3] == ' ' {
			return reply{code: code, text: strings.Join(text, " / ")}, nil
		}
		if line[3] != '-' {
			return reply{}, errors.New("reply line " + strconv.Quote(line) + ": neither ' ' nor '-' after the code")
		}
	}
}
