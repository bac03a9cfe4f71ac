package certs

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// enrolledFile is what package enroll writes into its active directory:
// "Key: value" lines, then the certificate and its issuers as PEM.
func enrolledFile(addr string, pemData []byte) []byte {
	return append([]byte("Enrolled-Address: "+addr+"\nEnrolled-Kind: smime\nEnrolled-Fingerprint: x\n"+
		"Enrolled-At: 2026-01-01T00:00:00Z\nRequested-By: "+addr+"\nRequest: 00\n"), pemData...)
}

// TestEnrolledBoundToOneAddress: an enrolled certificate serves the
// address it was enrolled for and no other address it names, and the
// store says where it came from.
func TestEnrolledBoundToOneAddress(t *testing.T) {
	dir, enr := t.TempDir(), t.TempDir()
	both := selfSigned(t, leafTemplate("alice@example.org", "bob@example.org"))
	writeFile(t, enr, "alice.pem", enrolledFile("alice@Example.ORG", pemOf(both)))
	s := mustLoad(t, Options{Dir: dir, EnrolledDir: enr, Now: func() time.Time { return t0 }})

	got := s.Lookup("alice@example.org")
	if len(got) != 1 || got[0].Fingerprint != fpOf(both) {
		t.Fatalf("Lookup(alice) = %v, want the enrolled certificate", fingerprints(got))
	}
	if got[0].Source != SourceEnrollment || !slices.Equal(got[0].Addresses, []string{"alice@example.org"}) {
		t.Errorf("got source %q addresses %v, want %q [alice@example.org]", got[0].Source, got[0].Addresses, SourceEnrollment)
	}
	if got := s.Lookup("bob@example.org"); got != nil {
		t.Errorf("Lookup(bob) = %v, want nothing: the certificate was enrolled for alice only", fingerprints(got))
	}
}

// TestEnrolledBadFiles: a file without an Enrolled-Address, or bound to an
// address its certificate does not name, is skipped with ErrEnrolled.
func TestEnrolledBadFiles(t *testing.T) {
	enr := t.TempDir()
	c := selfSigned(t, leafTemplate("carol@example.org"))
	writeFile(t, enr, "none.pem", pemOf(c))
	writeFile(t, enr, "other.pem", enrolledFile("mallory@example.org", pemOf(c)))
	s := mustLoad(t, Options{EnrolledDir: enr, Now: func() time.Time { return t0 }})
	if n := len(s.Certs()); n != 0 {
		t.Errorf("loaded %d certificates, want 0", n)
	}
	sk := s.Skipped()
	if len(sk) != 2 {
		t.Fatalf("skipped %v, want 2 entries", sk)
	}
	for _, e := range sk {
		if !errors.Is(e.Err, ErrEnrolled) {
			t.Errorf("%s: got %v, want ErrEnrolled", e.File, e.Err)
		}
	}
	if s.Lookup("mallory@example.org") != nil || s.Lookup("carol@example.org") != nil {
		t.Error("a bad enrolled file was used")
	}
}

// TestEnrolledBesideDirectory: the same certificate in certs.dir and
// enrolled is encrypted to once; a missing enrolled directory is empty.
func TestEnrolledBesideDirectory(t *testing.T) {
	dir, enr := t.TempDir(), t.TempDir()
	c := selfSigned(t, leafTemplate("dave@example.org"))
	writeFile(t, dir, "dave.pem", pemOf(c))
	writeFile(t, enr, "dave.pem", enrolledFile("dave@example.org", pemOf(c)))
	s := mustLoad(t, Options{Dir: dir, EnrolledDir: enr, Now: func() time.Time { return t0 }})
	if got := s.Lookup("dave@example.org"); len(got) != 1 {
		t.Errorf("Lookup = %v, want one certificate", fingerprints(got))
	}
	if got := s.Certs(); len(got) != 2 || got[0].Source == got[1].Source {
		t.Errorf("Certs() lists %d, want 2 from the two sources", len(got))
	}

	s = mustLoad(t, Options{Dir: dir, EnrolledDir: filepath.Join(enr, "missing"), Now: func() time.Time { return t0 }})
	if got := s.Lookup("dave@example.org"); len(got) != 1 || got[0].Source != SourceDirectory {
		t.Errorf("with no enrolled directory: Lookup = %v, want the directory's certificate", fingerprints(got))
	}
}

// TestEnrolledChainWithRoots: the issuers stored after an enrolled
// certificate serve as its intermediates, and are no recipients.
func TestEnrolledChainWithRoots(t *testing.T) {
	p := newPKI(t)
	leaf := p.issue(t, leafTemplate("erin@example.org"))
	enr := t.TempDir()
	writeFile(t, enr, "erin.pem", enrolledFile("erin@example.org", pemOf(leaf, p.inter)))
	s := mustLoad(t, Options{EnrolledDir: enr, Roots: p.roots, Now: func() time.Time { return t0 }})
	if got := s.Lookup("erin@example.org"); len(got) != 1 || got[0].Fingerprint != fpOf(leaf) {
		t.Errorf("Lookup = %v, want the leaf, chained through its stored intermediate (skipped %v)", fingerprints(got), s.Skipped())
	}
	if n := len(s.Certs()); n != 1 {
		t.Errorf("loaded %d certificates, want 1", n)
	}
}

// TestWatchEnrolledDir: a certificate enrolled while the daemon runs is
// used without a SIGHUP, and one removed stops being used.
func TestWatchEnrolledDir(t *testing.T) {
	dir, enr := t.TempDir(), t.TempDir()
	rec := &logRecorder{t: t, counts: map[string]int{}}
	h, err := NewHolder(Options{Dir: dir, EnrolledDir: enr}, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	h.debounce, h.maxDelay, h.pollSafety, h.pollFallback = 20*time.Millisecond, 200*time.Millisecond, time.Hour, 50*time.Millisecond
	startWatch(t, h, rec)
	writeAtomic(t, enr, "f.pem", enrolledFile("f@example.org", validNow(t, "f@example.org")))
	waitFor(t, watchWait, "enrolled f.pem picked up", found(h, "f@example.org"))
	if err := os.Remove(filepath.Join(enr, "f.pem")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, watchWait, "removal of enrolled f.pem noticed", gone(h, "f@example.org"))
}
