package mailbox

import "testing"

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"Postmaster", "Postmaster"},
		{"alice@example.org", "alice@example.org"},
		{"first.last+tag@example.org", "first.last+tag@example.org"},
		{"ü@example.de", "ü@example.de"},
		{"john doe@example.org", `"john doe"@example.org`},
		{`a"b\c@example.org`, `"a\"b\\c"@example.org`},
		{"odd@local@example.org", `"odd@local"@example.org`},
		{".dot@example.org", `".dot"@example.org`},
		{"a..b@example.org", `"a..b"@example.org`},
	} {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUnquoteLocal(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice", "alice"},
		{`"john doe"`, "john doe"},
		{`"a\"b\\c"`, `a"b\c`},
		{`"abc"`, "abc"},
		{`"`, `"`},
	} {
		if got := UnquoteLocal(tc.in); got != tc.want {
			t.Errorf("UnquoteLocal(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := UnquoteLocal(QuoteLocal(tc.want)); got != tc.want {
			t.Errorf("UnquoteLocal(QuoteLocal(%q)) = %q", tc.want, got)
		}
	}
}
