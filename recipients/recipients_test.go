package recipients

import (
	"errors"
	"strings"
	"testing"
)

func TestRewrite(t *testing.T) {
	rules := []Rule{
		{Match: `^(.*)@old\.example$`, Replace: `$1@example.org`},
		{Match: `^postmaster@(.*)$`, Replace: `admin@$1`},
		{Match: `^(?P<user>[^+@]+)\+[^@]*@(example\.org)$`, Replace: `${user}@$2`},
	}
	rw, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{"alice@old.example", "alice@example.org"},
		{"alice@example.org", "alice@example.org"},
		// Rules chain: rule 1 then rule 2.
		{"postmaster@old.example", "admin@example.org"},
		// Rule 1 then rule 3 (subaddress stripped).
		{"bob+lists@old.example", "bob@example.org"},
		{"carol@elsewhere.test", "carol@elsewhere.test"},
		{"Alice@OLD.example", "Alice@OLD.example"}, // regexes are case-sensitive unless (?i)
	} {
		got, err := rw.Rewrite(tc.in)
		if err != nil {
			t.Errorf("Rewrite(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Rewrite(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRewriteInvalidResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule Rule
		in   string
	}{
		{"no at", Rule{`^(.*)@.*$`, `$1`}, "a@b.example"},
		{"CRLF", Rule{`^a@`, "a\r\nRCPT TO:<evil@x>\r\n@"}, "a@b.example"},
		{"NUL", Rule{`^a`, "a\x00"}, "a@b.example"},
		{"too long", Rule{`^a`, strings.Repeat("a", 60) + "." + strings.Repeat("b", 200)}, "a@b.example"},
		{"empty domain", Rule{`@.*$`, `@`}, "a@b.example"},
		{"empty", Rule{`^.*$`, ``}, "a@b.example"},
		{"tab", Rule{`^a`, "a\tb"}, "a@b.example"},
		{"empty quoted local part", Rule{`^a`, `""`}, "a@b.example"},
	} {
		rw, err := Compile([]Rule{tc.rule})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		_, err = rw.Rewrite(tc.in)
		if !errors.Is(err, ErrInvalidAddress) {
			t.Errorf("%s: Rewrite(%q) error = %v, want ErrInvalidAddress", tc.name, tc.in, err)
		}
	}
}

// TestRewriteQuotedLocalParts: go-smtp hands over "a b"@old.example as
// a b@old.example; a rule rewrites it like any other address, and a rule
// that writes the quoted form means the same mailbox.
func TestRewriteQuotedLocalParts(t *testing.T) {
	rw, err := Compile([]Rule{
		{Match: `^(.*)@old\.example$`, Replace: `$1@example.org`},
		{Match: `^support@`, Replace: `"help desk"@`},
	})
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"a b@old.example":     "a b@example.org",
		"support@example.org": "help desk@example.org",
	} {
		if got, err := rw.Rewrite(in); err != nil || got != want {
			t.Errorf("Rewrite(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestCompileReportsEveryBadRule(t *testing.T) {
	_, err := Compile([]Rule{{`(`, ``}, {`ok`, ``}, {`[`, ``}})
	if err == nil {
		t.Fatal("Compile accepted bad regexes")
	}
	for _, want := range []string{"rule 1", "rule 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestNoRules(t *testing.T) {
	var rw *Rewriter
	got, err := rw.Rewrite("a@b.example")
	if err != nil || got != "a@b.example" {
		t.Errorf("nil Rewriter: got %q, %v", got, err)
	}
}

// TestUnchangedAddressNotJudged: an address no rule changed goes on as the
// SMTP layer accepted it, so the next hop decides about it as it would
// without the filter (a quoted local part with a space, a local part over 64
// octets, even one Validate would refuse).
func TestUnchangedAddressNotJudged(t *testing.T) {
	rw, err := Compile([]Rule{{Match: `^(.*)@old\.example$`, Replace: `$1@example.org`}})
	if err != nil {
		t.Fatal(err)
	}
	// Forms Validate refuses, which an SMTP layer may still pass on (a
	// trailing dot in the domain, an address over 254 octets): only a rule
	// that made them would be the filter's mistake.
	refused := []string{"a@example.org.", strings.Repeat("l", 251) + "@b.c", "a@b..c"}
	for _, addr := range refused {
		if Validate(addr) == nil {
			t.Fatalf("Validate(%q) = nil: not a case that tests the shortcut", addr)
		}
	}
	for _, addr := range append([]string{`"a b"@example.org`, strings.Repeat("l", 70) + "@example.org", "a b@example.org"}, refused...) {
		for _, r := range []*Rewriter{nil, rw} {
			got, err := r.Rewrite(addr)
			if err != nil || got != addr {
				t.Errorf("Rewrite(%q) with %d rules = %q, %v; want it unchanged, no error", addr, r.Len(), got, err)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	good := []string{"a@b.example", "first.last@sub.example.org", `"odd@local"@example.org`, "ü@example.de",
		`"a b"@example.org`, strings.Repeat("x", 65) + "@b.c",
		"a b@c.d", "a@b@c.d"} // go-smtp's form of "a b"@c.d and "a@b"@c.d
	bad := []string{"", "a", "@b.example", "a@", "a@.b", "a@b..c", "a@b.", "a\tb@c.d", "<a@b.c>", "a@b c.d",
		strings.Repeat("x", 251) + "@b.c"}
	for _, a := range good {
		if err := Validate(a); err != nil {
			t.Errorf("Validate(%q) = %v, want nil", a, err)
		}
	}
	for _, a := range bad {
		if err := Validate(a); err == nil {
			t.Errorf("Validate(%q) = nil, want an error", a)
		}
	}
}

func FuzzRewrite(f *testing.F) {
	f.Add(`^(.*)@old\.example$`, `$1@example.org`, "alice@old.example")
	f.Add(`x*`, `y`, "a@b.c")
	f.Add(`^(?P<u>.*)@(.*)$`, "${u}\r\n@$2", "a@b.c")
	f.Fuzz(func(t *testing.T, match, replace, addr string) {
		rw, err := Compile([]Rule{{Match: match, Replace: replace}})
		if err != nil {
			return
		}
		out, err := rw.Rewrite(addr)
		if err != nil {
			if !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("error not wrapping ErrInvalidAddress: %v", err)
			}
			return
		}
		if out == addr {
			return // unchanged: not ours to judge
		}
		// Whatever the rule, an accepted result must be safe to put on an
		// RCPT TO line.
		if Validate(out) != nil || strings.ContainsAny(out, "\r\n\x00") || len(out) > MaxAddressLength {
			t.Fatalf("Rewrite(%q) with %q→%q gave unsafe %q", addr, match, replace, out)
		}
	})
}
