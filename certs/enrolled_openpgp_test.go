package certs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// twoAddressKey is a key with User IDs for ann@ and bob@, made in Go.
func twoAddressKey(t *testing.T) (*openpgp.Entity, []byte) {
	t.Helper()
	config := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	e, err := openpgp.NewEntity("Ann", "", "ann@example.test", config)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AddUserId("Bob", "", "bob@example.test", config); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return e, b.Bytes()
}

// TestEnrolledOpenPGPKeys: an enrolled key file (package enroll's
// "Key: value" lines, then armor) serves the one address it was enrolled
// for, never the key's other User IDs; one enrolled for an address the key
// does not name is skipped; a key also in Dir is encrypted to once.
func TestEnrolledOpenPGPKeys(t *testing.T) {
	e, armored := twoAddressKey(t)
	fp := keyFingerprint(e)
	dir, enrolled := t.TempDir(), t.TempDir()
	write := func(d, name, addr string) {
		data := append([]byte("Enrolled-Address: "+addr+"\nEnrolled-Kind: openpgp\nEnrolled-Fingerprint: "+fp+"\n"), armored...)
		if addr == "" {
			data = armored
		}
		if err := os.WriteFile(filepath.Join(d, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(enrolled, "ann.pem", "ann@example.test")
	write(enrolled, "carol.pem", "carol@example.test")

	s, err := Load(Options{Dir: dir, EnrolledDir: enrolled})
	if err != nil {
		t.Fatal(err)
	}
	if ks := s.LookupKeys("ann@example.test"); len(ks) != 1 || ks[0].Fingerprint != fp || ks[0].Source != SourceEnrollment ||
		len(ks[0].Addresses) != 1 || ks[0].Addresses[0] != "ann@example.test" {
		t.Fatalf("ann: %v, want the enrolled key bound to ann@ alone", ks)
	}
	if ks := s.LookupKeys("bob@example.test"); len(ks) != 0 {
		t.Fatalf("bob: %d keys, want none (the key was enrolled for ann@ only)", len(ks))
	}
	if ks := s.LookupKeys("carol@example.test"); len(ks) != 0 {
		t.Fatalf("carol: %d keys, want none", len(ks))
	}
	found := false
	for _, sk := range s.Skipped() {
		if filepath.Base(sk.File) == "carol.pem" && errors.Is(sk.Err, ErrEnrolled) {
			found = true
		}
	}
	if !found {
		t.Errorf("carol.pem not reported as a bad enrolled file: %v", s.Skipped())
	}

	write(dir, "ann.asc", "")
	s, err = Load(Options{Dir: dir, EnrolledDir: enrolled})
	if err != nil {
		t.Fatal(err)
	}
	if ks := s.LookupKeys("ann@example.test"); len(ks) != 1 {
		t.Fatalf("ann: %d keys with the key in both directories, want it once", len(ks))
	}
	if ks := s.LookupKeys("bob@example.test"); len(ks) != 1 || ks[0].Source != SourceDirectory {
		t.Fatalf("bob: %v, want the directory's key", ks)
	}
}

// TestReadAndCheckKey: the exported checks enrollment uses give the
// store's verdicts: one public key only, no secret key, and the reason a
// key cannot be used.
func TestReadAndCheckKey(t *testing.T) {
	e, armored := twoAddressKey(t)
	got, err := ReadKey(armored)
	if err != nil {
		t.Fatal(err)
	}
	addrs, until, err := CheckKey(got, time.Now())
	if err != nil || len(addrs) != 2 || !until.IsZero() {
		t.Fatalf("CheckKey: %v, %v, %v; want both addresses, no expiry", addrs, until, err)
	}
	if k := NewKey(got); k.Fingerprint != keyFingerprint(e) || len(k.Addresses) != 2 || !k.UsableAt(time.Now()) {
		t.Fatalf("NewKey: %+v", k)
	}
	if _, err := ReadKey(append(append(append([]byte{}, armored...), '\n'), armored...)); !errors.Is(err, ErrParse) {
		t.Errorf("two keys: %v, want ErrParse", err)
	}
	var sec bytes.Buffer
	w, _ := armor.Encode(&sec, openpgp.PrivateKeyType, nil)
	if err := e.SerializePrivate(w, nil); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := ReadKey(sec.Bytes()); !errors.Is(err, ErrPrivateKey) {
		t.Errorf("secret key: %v, want ErrPrivateKey", err)
	}
	if _, _, err := CheckKey(got, got.PrimaryKey.CreationTime.Add(-time.Hour)); !errors.Is(err, ErrNotYetValid) {
		t.Errorf("before its creation: %v, want ErrNotYetValid", err)
	}
}
