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
