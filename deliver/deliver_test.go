package deliver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// pipeClient returns a client writing into out and reading from in.
func pipeClient(t testing.TB, in string) (*client, *bytes.Buffer) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	out := &bytes.Buffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Write([]byte(in))
	}()
	c := newClient(a, true, time.Second)
	c.bw = bufio.NewWriter(out)
	return c, out
}

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code int
		enh  smtp.EnhancedCode
		msg  string
	}{
		{"250 2.1.5 OK\r\n", 250, smtp.EnhancedCode{2, 1, 5}, "OK"},
		{"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n", 250, smtp.EnhancedCode{2, 0, 0}, "mx.example PIPELINING 8BITMIME"},
		{"550 5.1.1 <x@example.org> User doesn't exist: x@example.org\r\n", 550, smtp.EnhancedCode{5, 1, 1}, "<x@example.org> User doesn't exist: x@example.org"},
		{"452 4.2.2 Quota exceeded\r\n", 452, smtp.EnhancedCode{4, 2, 2}, "Quota exceeded"},
		{"451 Try later\r\n", 451, smtp.EnhancedCode{4, 0, 0}, "Try later"},
		{"354\r\n", 354, smtp.EnhancedCode{3, 0, 0}, ""},
		// An enhanced code of the wrong class is text, not a code.
		{"550 2.0.0 odd\r\n", 550, smtp.EnhancedCode{5, 0, 0}, "2.0.0 odd"},
	} {
		c, _ := pipeClient(t, tc.in)
		r, err := c.readReply(time.Second)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		se := r.err()
		if r.code != tc.code || r.enh != tc.enh || se.Message != tc.msg {
			t.Errorf("%q: got %d %v %q, want %d %v %q", tc.in, r.code, r.enh, se.Message, tc.code, tc.enh, tc.msg)
		}
	}
	for _, bad := range []string{"25\r\n", "abc def\r\n", "250-a\r\n251 b\r\n", "999 x\r\n", "100 x\r\n"} {
		c, _ := pipeClient(t, bad)
		if _, err := c.readReply(time.Second); !errors.Is(err, errProtocol) {
			t.Errorf("%q: got %v, want a protocol error", bad, err)
		}
	}
}

// unstuff reverses the transparency procedure of RFC 5321 §4.5.2, as a
// receiving server does, and checks the terminator is only at the end.
func unstuff(t testing.TB, wire string) string {
	t.Helper()
	if !strings.HasSuffix(wire, "\r\n.\r\n") && wire != ".\r\n" {
		t.Fatalf("no CRLF.CRLF terminator at the end: %q", wire)
	}
	body := strings.TrimSuffix(wire, ".\r\n")
	lines := strings.SplitAfter(body, "\n")
	for i, l := range lines {
		if l == ".\r\n" {
			t.Fatalf("terminator line inside the data: %q", wire)
		}
		if strings.HasPrefix(l, ".") {
			if !strings.HasPrefix(l, "..") {
				t.Fatalf("unstuffed leading dot in line %d: %q", i, l)
			}
			lines[i] = l[1:]
		}
	}
	return strings.Join(lines, "")
}

func writeDots(t testing.TB, chunks []string) string {
	c, out := pipeClient(t, "")
	w := &dotWriter{c: c, timeout: time.Second, bol: true}
	for _, ch := range chunks {
		if n, err := w.Write([]byte(ch)); err != nil || n != len(ch) {
			t.Fatalf("Write(%q) = %d, %v", ch, n, err)
		}
	}
	if err := w.end(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		wire   string
	}{
		{nil, ".\r\n"},
		{[]string{"a\r\n"}, "a\r\n.\r\n"},
		{[]string{"a"}, "a\r\n.\r\n"},
		{[]string{".a\r\n"}, "..a\r\n.\r\n"},
		{[]string{"a\r\n.\r\nb\r\n"}, "a\r\n..\r\nb\r\n.\r\n"},
		{[]string{"a\r\n", ".b\r\n"}, "a\r\n..b\r\n.\r\n"},
		{[]string{"a\r", "\n", "."}, "a\r\n..\r\n.\r\n"},
		{[]string{"x\n.y"}, "x\n..y\r\n.\r\n"}, // bare LF: stuffed too, so a lenient peer cannot be fooled
		{[]string{"a\r\n", ""}, "a\r\n.\r\n"},
		{[]string{"a\n"}, "a\n\r\n.\r\n"},
	} {
		if got := writeDots(t, tc.chunks); got != tc.wire {
			t.Errorf("%q: got %q, want %q", tc.chunks, got, tc.wire)
		}
	}
}

func FuzzDotWriter(f *testing.F) {
	f.Add("a\r\n.\r\nb", 3)
	f.Add(".\r\n.\r\n", 1)
	f.Add("x\n.\n.", 2)
	f.Fuzz(func(t *testing.T, data string, cut int) {
		var chunks []string
		if cut > 0 {
			for s := data; len(s) > 0; {
				n := min(cut, len(s))
				chunks = append(chunks, s[:n])
				s = s[n:]
			}
		} else {
			chunks = []string{data}
		}
		got := unstuff(t, writeDots(t, chunks))
		want := data
		if data != "" && !strings.HasSuffix(data, "\r\n") {
			want += "\r\n"
		}
		if got != want {
			t.Fatalf("round trip of %q in chunks of %d: got %q", data, cut, got)
		}
	})
}

func TestExpandTemplate(t *testing.T) {
	for _, tc := range []struct{ tmpl, addr, want string }{
		{"/var/mail/%d/%n", "Alice@Example.ORG", "/var/mail/example.org/alice"},
		{"/srv/%u/Maildir", "a.b@x.test", "/srv/a.b@x.test/Maildir"},
		{"/m/100%%/%n", "a@x.test", "/m/100%/a"},
	} {
		got, err := ExpandTemplate(tc.tmpl, tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("ExpandTemplate(%q, %q) = %q, %v; want %q", tc.tmpl, tc.addr, got, err, tc.want)
		}
	}
	for _, addr := range []string{"../x@example.org", "a/b@example.org", "a@..", ".hidden@example.org", "noat", "a@b/c", "a@"} {
		if _, err := ExpandTemplate("/var/mail/%d/%n", addr); !errors.Is(err, ErrBadMailbox) {
			t.Errorf("ExpandTemplate(%q): %v, want ErrBadMailbox", addr, err)
		}
	}
	for _, bad := range []string{"relative/%n", "/x/%q", "/x/%"} {
		if err := CheckTemplate(bad); err == nil {
			t.Errorf("CheckTemplate(%q) accepted", bad)
		}
	}
}

// scripted is a peer without PIPELINING that answers from a script.
func scripted(t *testing.T, replies map[string]string) string {
	path := filepath.Join(t.TempDir(), "peer.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				c.Write([]byte("220 peer ready\r\n"))
				inData := false
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if inData {
						if line == ".\r\n" {
							inData = false
							c.Write([]byte(replies["."]))
						}
						continue
					}
					verb := strings.ToUpper(strings.Fields(line + " x")[0])
					if strings.HasPrefix(line, "RCPT TO:<") {
						verb = line[len("RCPT TO:<"):strings.IndexByte(line, '>')]
					}
					rep, ok := replies[verb]
					if !ok {
						rep = "250 2.0.0 ok\r\n"
					}
					c.Write([]byte(rep))
					if verb == "DATA" && strings.HasPrefix(rep, "354") {
						inData = true
					}
					if verb == "QUIT" {
						return
					}
				}
			}()
		}
	}()
	return path
}

func TestLockstepPeer(t *testing.T) {
	path := scripted(t, map[string]string{
		"LHLO":             "250-peer\r\n250 8BITMIME\r\n",
		"bad@example.org":  "550 5.1.1 no such user\r\n",
		"DATA":             "354 go\r\n",
		".":                "250 2.0.0 ok 1\r\n452 4.2.2 full\r\n",
		"full@example.org": "250 2.1.5 ok\r\n",
	})
	p := NewPool(PoolOptions{Network: "unix", Addr: path, LMTP: true})
	defer p.Close()
	tx, err := p.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{"ok@example.org", "bad@example.org", "full@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	tx.Write([]byte("Subject: x\r\n\r\nbody\r\n"))
	res := tx.Commit()
	codes := []int{}
	for _, e := range res {
		var se *smtp.SMTPError
		switch {
		case e == nil:
			codes = append(codes, 250)
		case errors.As(e, &se):
			codes = append(codes, se.Code)
		default:
			codes = append(codes, -1)
		}
	}
	if len(codes) != 3 || codes[0] != 250 || codes[1] != 550 || codes[2] != 452 {
		t.Errorf("results %v (%v), want [250 550 452]", codes, res)
	}
	if st := p.Stats(); st.Idle != 1 {
		t.Errorf("after a clean transaction: %+v, want the connection idle", st)
	}
}

func TestRepliesLostAfterData(t *testing.T) {
	// The peer answers the first recipient and hangs up: the second one's
	// fate is unknown, which must be a connection error (4xx), never 250.
	path := scripted(t, map[string]string{
		"LHLO": "250-peer\r\n250 PIPELINING\r\n",
		"DATA": "354 go\r\n",
		".":    "250 2.0.0 first ok\r\n",
	})
	p := NewPool(PoolOptions{Network: "unix", Addr: path, LMTP: true, DataTimeout: 300 * time.Millisecond})
	defer p.Close()
	tx, err := p.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{"a@example.org", "b@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	tx.Write([]byte("x\r\n"))
	res := tx.Commit()
	if res[0] != nil || !errors.Is(res[1], ErrConnection) {
		t.Errorf("got %v, want [nil, ErrConnection]", res)
	}
	if st := p.Stats(); st.Open != 0 {
		t.Errorf("connection with lost replies kept: %+v", st)
	}
}

func TestAbortMidDataDropsConnection(t *testing.T) {
	path := scripted(t, map[string]string{"LHLO": "250-peer\r\n250 PIPELINING\r\n", "DATA": "354 go\r\n"})
	p := NewPool(PoolOptions{Network: "unix", Addr: path, LMTP: true})
	defer p.Close()
	tx, err := p.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	tx.Write([]byte("partial"))
	tx.Abort()
	if st := p.Stats(); st.Open != 0 || st.Idle != 0 {
		t.Errorf("aborted mid-DATA, pool %+v: the connection must be closed, never reused", st)
	}
}

func TestEnvelopeInjectionRefused(t *testing.T) {
	p := NewPool(PoolOptions{Network: "unix", Addr: "/nonexistent"})
	defer p.Close()
	if _, err := p.Begin(context.Background(), Envelope{From: "a@b", Rcpts: []string{"x@y>\r\nRCPT TO:<z@w"}}); !errors.Is(err, errProtocol) {
		t.Errorf("got %v, want a refusal", err)
	}
}

func TestMaildirStoresLF(t *testing.T) {
	root := t.TempDir()
	m, err := NewMaildir(filepath.Join(root, "%d", "%n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"a\r\nb\r\n"}, "a\nb\n"},
		{[]string{"a\r", "\nb\r", "\n"}, "a\nb\n"},
		{[]string{"lone\rcr\r", "x"}, "lone\rcr\rx"},
		{[]string{"end\r"}, "end\r"},
		{[]string{"bare\nlf\r\n"}, "bare\nlf\n"},
	} {
		tx, _ := m.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
		for _, c := range tc.chunks {
			tx.Write([]byte(c))
		}
		if res := tx.Commit(); res[0] != nil {
			t.Fatal(res[0])
		}
		files, _ := filepath.Glob(filepath.Join(root, "example.org", "a", "new", "*"))
		if len(files) != 1 {
			t.Fatalf("%d files", len(files))
		}
		data, _ := os.ReadFile(files[0])
		os.Remove(files[0])
		if string(data) != tc.want {
			t.Errorf("%q: stored %q, want %q", tc.chunks, data, tc.want)
		}
		if !strings.HasSuffix(files[0], fmt.Sprintf(",S=%d", len(tc.want))) {
			t.Errorf("%s: S= does not match %d bytes", files[0], len(tc.want))
		}
	}
}

func FuzzReadReply(f *testing.F) {
	f.Add("250 2.0.0 ok\r\n")
	f.Add("250-a\r\n250-b\r\n250 c\r\n")
	f.Add("452 4.2.2 x\r\n")
	f.Add("5")
	f.Fuzz(func(t *testing.T, in string) {
		c, _ := pipeClient(t, in)
		r, err := c.readReply(50 * time.Millisecond)
		if err != nil {
			return
		}
		// Whatever the peer sends, an accepted reply is well-formed.
		if r.code < 200 || r.code > 599 || r.enh[0] != r.code/100 || len(r.lines) == 0 {
			t.Fatalf("%q gave %+v", in, r)
		}
	})
}

func TestPeerClosesDuringData(t *testing.T) {
	// The peer takes DATA, then hangs up while the message streams: the
	// transaction fails as a connection error (a 4xx for the filter),
	// never as delivered.
	path := filepath.Join(t.TempDir(), "peer.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		br := bufio.NewReader(c)
		c.Write([]byte("220 peer\r\n"))
		br.ReadString('\n') // LHLO
		c.Write([]byte("250-peer\r\n250 PIPELINING\r\n"))
		for range 3 { // MAIL, RCPT, DATA
			br.ReadString('\n')
		}
		c.Write([]byte("250 ok\r\n250 ok\r\n354 go\r\n"))
		br.ReadString('\n')
		c.Close()
	}()
	p := NewPool(PoolOptions{Network: "unix", Addr: path, LMTP: true, CommandTimeout: time.Second})
	defer p.Close()
	tx, err := p.Begin(context.Background(), Envelope{From: "s@example.net", Rcpts: []string{"a@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n"), 1024)
	for range 64 { // 4 MiB: more than the socket buffers hold
		if _, err := tx.Write(chunk); err != nil {
			break
		}
	}
	res := tx.Commit()
	if !errors.Is(res[0], ErrConnection) {
		t.Errorf("got %v, want a connection error", res[0])
	}
	if st := p.Stats(); st.Open != 0 {
		t.Errorf("broken connection kept: %+v", st)
	}
}
