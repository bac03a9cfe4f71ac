package conformance

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

// undot recovers the message from DATA's wire (the inverse of dot): the
// terminating line removed, each stuffed dot dropped.
func undot(wire string) string {
	wire = strings.TrimSuffix(wire, ".\r\n")
	var b strings.Builder
	for line := range strings.SplitAfterSeq(wire, "\r\n") {
		b.WriteString(strings.TrimPrefix(line, "."))
	}
	return b.String()
}

// messageOf is the message a corpus session carries.
func messageOf(s session) string {
	if s.chunks == nil {
		return undot(s.data)
	}
	var b strings.Builder
	for _, c := range s.chunks {
		b.WriteString(c.data)
	}
	return b.String()
}

// fuzzSession frames msg as the mode byte says: bit 0 pipelined, bit 1
// BDAT (in two chunks split at the middle) instead of DATA.
func fuzzSession(msg []byte, m uint8) session {
	md := lockstep
	if m&1 != 0 {
		md = pipelined
	}
	if m&2 != 0 {
		if len(msg) < 2 {
			return bdat(md, string(msg))
		}
		return bdat(md, string(msg[:len(msg)/2]), string(msg[len(msg)/2:]))
	}
	return session{mode: md, data: dot(string(msg))}
}

// policyFor lists the intended differences for an arbitrary message, as
// TestConformance's table does for its cases, and whether the input is one
// whose outcome the limits leave open (skipped).
func policyFor(msg []byte, s session) (w want, skip bool) {
	size := len(msg)
	if s.chunks == nil {
		size = len(undot(s.data))
	}
	// A line at the limit (within the CRLF that may or may not count) is
	// the daemon's own definition; judge only lines clearly over or under.
	for line := range bytes.SplitAfterSeq(msg, []byte("\n")) {
		switch n := len(line); {
		case n > maxLineLength+2:
			// Enforced on DATA (500 5.6.0); accepting such a line, as
			// the daemon does with BDAT, is as transparent.
			w.filterClass, w.policyMay, w.why = 5, true, "limits.max_line_length"
		case n >= maxLineLength-2:
			return w, true
		}
	}
	if size > maxMessageSize {
		w.filterClass, w.why = 5, "limits.max_message_size"
	}
	// Dovecot ends DATA at a dot line after a bare LF; the filter does
	// not (see the lf-dot-lf-is-data case).
	if s.chunks == nil && bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n.")) {
		w.otherContent = true
	}
	// A header line that is a lone CR becomes a blank line in Dovecot's
	// copy (see the lone-cr-line-in-header case).
	if loneCRLine(msg) {
		w.otherContent = true
	}
	return w, false
}

// loneCRLine reports whether a line of msg's header section (before its
// first empty line) ends in CR CR LF, or is a lone CR before the end.
func loneCRLine(msg []byte) bool {
	for line := range bytes.SplitAfterSeq(msg, []byte("\n")) {
		switch {
		case string(line) == "\r\n" || string(line) == "\n":
			return false
		case bytes.HasSuffix(line, []byte("\r\r\n")) || bytes.HasSuffix(line, []byte("\r")):
			return true
		}
	}
	return false
}

// FuzzConformance mutates the corpus messages and their framing and runs
// the same differential check as TestConformance for one recipient.
// Already encrypted mail may be stored unchanged only when
// reallyEncrypted says it is. Under plain go test it runs its seeds.
// For longer runs:
//
//	go test -run '^$' -fuzz FuzzConformance -fuzztime 10m ./conformance/
func FuzzConformance(f *testing.F) {
	for _, c := range cases(f) {
		if c.s.eof || c.s.mailParams != "" || c.want.filterClass != 0 || len(c.localsOf(0)) != 1 {
			continue
		}
		var m uint8
		if c.s.mode == pipelined {
			m |= 1
		}
		if c.s.chunks != nil {
			m |= 2
		}
		f.Add([]byte(messageOf(c.s)), m)
	}
	st := startStack(f, [][]string{{"fuzz"}})
	var mu sync.Mutex
	f.Fuzz(func(t *testing.T, msg []byte, m uint8) {
		s := fuzzSession(msg, m)
		w, skip := policyFor(msg, s)
		if skip {
			t.Skip("a line at max_line_length: the daemon's definition decides")
		}
		// One mailbox pair: one input at a time.
		mu.Lock()
		defer mu.Unlock()
		for _, d := range []string{directDomain, filterDomain} {
			st.clear(t, "fuzz@"+d)
		}
		// Stored unchanged is right only for really encrypted mail.
		w.mayPassThrough = reallyEncrypted(msg)
		r := st.play(t, []string{"fuzz"}, s, w)
		for _, p := range r.problems {
			t.Error(p)
		}
		if len(r.problems) > 0 {
			t.Logf("directly:\n%s\nthrough the filter:\n%s", r.direct, r.filtered)
		}
	})
}
