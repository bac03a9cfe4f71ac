package certs

import (
	"slices"
	"testing"
	"time"
)

func TestLookupAddressMatching(t *testing.T) {
	dir := t.TempDir()
	mixed := selfSigned(t, leafTemplate("Alice@Example.ORG"))
	lower := selfSigned(t, leafTemplate("alice@example.org"))
	bob := selfSigned(t, leafTemplate("Bob@example.org"))
	writeFile(t, dir, "mixed.pem", pemOf(mixed))
	writeFile(t, dir, "lower.pem", pemOf(lower))
	writeFile(t, dir, "bob.pem", pemOf(bob))
	s := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})

	tests := []struct {
		addr string
		want []string
	}{
		// Domain: always case-insensitive.
		{"Alice@example.org", []string{fpOf(mixed)}},
		{"Alice@EXAMPLE.org", []string{fpOf(mixed)}},
		// Local part: the exact spelling wins when it exists...
		{"alice@example.org", []string{fpOf(lower)}},
		{"alice@Example.Org", []string{fpOf(lower)}},
		// ...otherwise every case-insensitive match.
		{"ALICE@example.org", sorted(fpOf(mixed), fpOf(lower))},
		{"bob@EXAMPLE.ORG", []string{fpOf(bob)}},
		{"Bob@example.org", []string{fpOf(bob)}},
		{"carol@example.org", nil},
		// Not a mailbox: nil, not an error, not a partial match.
		{"", nil},
		{"alice", nil},
		{"@example.org", nil},
		{"alice@", nil},
		{"<alice@example.org>", nil},
		{"alice@example.org ", nil},
		{"alice @example.org", nil},
		{"alice@exa mple.org", nil},
		{"alice@example.org\n", nil},
		{"alice@.example.org", nil},
		{"alice@example..org", nil},
		{"\xffalice@example.org", nil},
	}
	for _, tc := range tests {
		got := s.Lookup(tc.addr)
		if tc.want == nil && got != nil {
			t.Errorf("Lookup(%q) = %v, want nil", tc.addr, fingerprints(got))
			continue
		}
		if !slices.Equal(sorted(fingerprints(got)...), tc.want) {
			t.Errorf("Lookup(%q) = %v, want %v", tc.addr, fingerprints(got), tc.want)
		}
	}

	c := s.Lookup("Alice@example.org")
	if len(c) == 1 && !slices.Equal(c[0].Addresses, []string{"Alice@example.org"}) {
		t.Errorf("Addresses = %q, want the local part kept and the domain lowercased", c[0].Addresses)
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func TestLookupQuotedLocalPart(t *testing.T) {
	dir := t.TempDir()
	c := selfSigned(t, leafTemplate(`"john doe"@example.org`))
	writeFile(t, dir, "c.pem", pemOf(c))
	s := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})
	// As written, and as go-smtp hands it over (without the quotes).
	for _, addr := range []string{`"john doe"@Example.org`, `john doe@example.org`} {
		if got := s.Lookup(addr); len(got) != 1 {
			t.Errorf("Lookup(%q) = %v, want 1 certificate", addr, fingerprints(got))
		}
	}
}

// TestLookupRollover: two certificates for one address (old key still
// valid, new key issued) are both returned, and each stops being
// returned the moment it expires, without a reload.
func TestLookupRollover(t *testing.T) {
	dir := t.TempDir()
	oldT := leafTemplate("a@example.org")
	oldT.NotAfter = t0.Add(10 * day)
	newT := leafTemplate("a@example.org")
	newT.NotAfter = t0.Add(400 * day)
	// Issued ahead of time: valid only tomorrow.
	nextT := leafTemplate("a@example.org")
	nextT.NotBefore, nextT.NotAfter = t0.Add(day), t0.Add(800*day)
	oldC, newC, nextC := selfSigned(t, oldT), selfSigned(t, newT), selfSigned(t, nextT)
	writeFile(t, dir, "new.pem", pemOf(newC))
	writeFile(t, dir, "old-and-next.pem", pemOf(oldC, nextC))

	clk := newClock(t0)
	s := mustLoad(t, Options{Dir: dir, Now: clk.now})

	check := func(when string, want ...string) {
		t.Helper()
		if got := fingerprints(s.Lookup("a@example.org")); !slices.Equal(got, want) {
			t.Errorf("%s: Lookup = %v, want %v (oldest first)", when, got, want)
		}
	}
	check("now", fpOf(oldC), fpOf(newC))
	clk.set(t0.Add(2 * day))
	check("after the next one starts", fpOf(oldC), fpOf(newC), fpOf(nextC))
	clk.set(t0.Add(11 * day))
	check("after the old one expired", fpOf(newC), fpOf(nextC))
	clk.set(t0.Add(1000 * day))
	check("after all expired")
	if got := s.Lookup("a@example.org"); got != nil {
		t.Errorf("Lookup = %#v, want nil (not an empty slice)", got)
	}
}

func TestLookupResultIsACopy(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.pem", pemOf(selfSigned(t, leafTemplate("a@example.org"))))
	s := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})
	got := s.Lookup("a@example.org")
	got[0] = nil
	if s.Lookup("a@example.org")[0] == nil {
		t.Error("modifying Lookup's result changed the store")
	}
	all := s.Certs()
	all[0] = nil
	if s.Certs()[0] == nil {
		t.Error("modifying Certs' result changed the store")
	}
}

func TestCertsSorted(t *testing.T) {
	dir := t.TempDir()
	mk := func(addr string, notAfter time.Duration) string {
		tmpl := leafTemplate(addr)
		tmpl.NotAfter = t0.Add(notAfter)
		c := selfSigned(t, tmpl)
		// File names in the opposite order of the expected result, so
		// that directory order cannot pass for sorting.
		writeFile(t, dir, "z-"+addr+notAfter.String(), pemOf(c))
		return fpOf(c)
	}
	b2 := mk("b@example.org", 200*day)
	b1 := mk("b@example.org", 100*day)
	a := mk("a@example.org", 300*day)
	c := mk("c@example.org", 50*day)
	s := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})
	if got, want := fingerprints(s.Certs()), []string{a, b1, b2, c}; !slices.Equal(got, want) {
		t.Errorf("Certs = %v, want %v (by address, then NotAfter)", got, want)
	}
}

func TestExpiringWithin(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, notAfter time.Duration) string {
		tmpl := leafTemplate(name + "@example.org")
		tmpl.NotAfter = t0.Add(notAfter)
		c := selfSigned(t, tmpl)
		writeFile(t, dir, name+".pem", pemOf(c))
		return fpOf(c)
	}
	in10 := mk("a", 10*day)
	in40 := mk("b", 40*day)
	mk("c", 400*day)
	clk := newClock(t0)
	s := mustLoad(t, Options{Dir: dir, Now: clk.now})

	tests := []struct {
		d    time.Duration
		want []string
	}{
		{0, nil},
		{30 * day, []string{in10}},
		{60 * day, []string{in10, in40}},
	}
	for _, tc := range tests {
		if got := fingerprints(s.ExpiringWithin(tc.d)); !slices.Equal(got, tc.want) {
			t.Errorf("ExpiringWithin(%v) = %v, want %v (soonest first)", tc.d, got, tc.want)
		}
	}
	// Already expired since the load: still listed, so it can be warned
	// about.
	clk.set(t0.Add(20 * day))
	if got := fingerprints(s.ExpiringWithin(0)); !slices.Equal(got, []string{in10}) {
		t.Errorf("ExpiringWithin(0) after expiry = %v, want %v", got, []string{in10})
	}
}

func TestNowDefaultsToTimeNow(t *testing.T) {
	dir := t.TempDir()
	tmpl := leafTemplate("a@example.org")
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	writeFile(t, dir, "a.pem", pemOf(selfSigned(t, tmpl)))
	s := mustLoad(t, Options{Dir: dir})
	if len(s.Lookup("a@example.org")) != 1 {
		t.Error("certificate valid by the wall clock not found with Options.Now nil")
	}
}

func FuzzNormalizeAddress(f *testing.F) {
	for _, s := range []string{"a@b", "Alice@Example.ORG", `"a b"@c`, "a@@b", "@", "a@b.", "x@[1.2.3.4]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := normalizeAddress(s)
		if !ok {
			return
		}
		// Normalizing is idempotent: a certificate's normalized address
		// and a looked-up one meet.
		if n2, ok2 := normalizeAddress(n); !ok2 || n2 != n {
			t.Fatalf("normalize(%q) = %q, again = %q, %v", s, n, n2, ok2)
		}
	})
}
