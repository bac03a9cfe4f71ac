package certs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/internal/pgptest"
)

// OpenPGP keys are made by the tools users have (GnuPG, Sequoia, RNP), once
// per test binary, with pgptest: generating them takes seconds. TestMain
// has pgptest remove them and stop the gpg-agent that GnuPG started.

func TestMain(m *testing.M) {
	code := m.Run()
	pgptest.Cleanup()
	os.Exit(code)
}

// toolKey is one key as a tool made and exported it.
type toolKey = pgptest.Key

// gpgSet is what GnuPG made, all in one home: the creation times are faked
// into the past (--faked-system-time) so that the order of subkeys does not
// depend on how fast the machine is.
type gpgSet struct {
	*pgptest.GnuPG
	made time.Time // the generation started after this
	keys map[string]*toolKey
}

var gpgKeys = sync.OnceValues(func() (*gpgSet, error) {
	home, err := pgptest.NewGnuPG("gnupg-certs")
	if err != nil {
		return nil, err
	}
	g := &gpgSet{GnuPG: home, made: time.Now(), keys: map[string]*toolKey{}}
	ago := func(d time.Duration) time.Time { return g.made.Add(-d) }
	steps := [][]string{
		// Alice: GnuPG 2.2's defaults, RSA 3072 with an encryption subkey.
		{"--quick-gen-key", "Alice <alice@example.test>", "default", "default", "never"},
		// Erin: expires in five days (primary key; the subkey follows it).
		{"--quick-gen-key", "Erin <erin@example.test>", "future-default", "default", "5d"},
		// Sam: a signing key only.
		{"--quick-gen-key", "Sam <sam@example.test>", "ed25519", "sign", "never"},
		// Rita: revoked below.
		{"--quick-gen-key", "Rita <rita@example.test>", "future-default", "default", "never"},
	}
	for _, s := range steps {
		if _, err := g.At(ago(4*time.Hour), s...); err != nil {
			return nil, err
		}
	}
	// Bob rolled his encryption subkey over: an old one, a newer one that
	// expires a day after it was made, the newest revoked; and a User ID
	// he revoked.
	if _, err := g.At(ago(3*time.Hour), "--quick-gen-key", "Bob <bob@example.test>", "ed25519", "cert", "never"); err != nil {
		return nil, err
	}
	bob, _, err := g.Fingerprints("bob@example.test")
	if err != nil {
		return nil, err
	}
	for _, s := range []struct {
		ago  time.Duration
		args []string
	}{
		{2 * time.Hour, []string{"--quick-add-key", bob, "cv25519", "encr", "never"}},
		{time.Hour, []string{"--quick-add-key", bob, "cv25519", "encr", "1d"}},
		{50 * time.Minute, []string{"--quick-add-key", bob, "cv25519", "encr", "never"}},
		{40 * time.Minute, []string{"--quick-add-uid", bob, "Old Bob <old@example.test>"}},
		{30 * time.Minute, []string{"--quick-revoke-uid", bob, "Old Bob <old@example.test>"}},
	} {
		if _, err := g.At(ago(s.ago), s.args...); err != nil {
			return nil, err
		}
	}
	// "revkey" on the third subkey, reason 0 (none), empty description.
	edit := append(pgptest.FakedTime(ago(20*time.Minute)), "--command-fd", "0", "--edit-key", bob)
	if _, err := g.RunInput([]byte("key 3\nrevkey\ny\n0\n\ny\nsave\n"), edit...); err != nil {
		return nil, err
	}
	// Dave's only encryption subkey expires a day after it was made; his
	// primary key never does.
	if _, err := g.At(ago(4*time.Hour), "--quick-gen-key", "Dave <dave@example.test>", "ed25519", "cert", "never"); err != nil {
		return nil, err
	}
	dave, _, err := g.Fingerprints("dave@example.test")
	if err != nil {
		return nil, err
	}
	if _, err := g.At(ago(4*time.Hour), "--quick-add-key", dave, "cv25519", "encr", "1d"); err != nil {
		return nil, err
	}
	// Rita imports the revocation certificate GnuPG wrote for her key
	// (its BEGIN line is disarmed with a colon).
	rita, _, err := g.Fingerprints("rita@example.test")
	if err != nil {
		return nil, err
	}
	rev, err := os.ReadFile(filepath.Join(g.Home, "openpgp-revocs.d", strings.ToUpper(rita)+".rev"))
	if err != nil {
		return nil, err
	}
	rev = bytes.Replace(rev, []byte(":-----BEGIN"), []byte("-----BEGIN"), 1)
	revFile := filepath.Join(g.Home, "rita.rev")
	if err := os.WriteFile(revFile, rev, 0o600); err != nil {
		return nil, err
	}
	if _, err := g.Run("--import", revFile); err != nil {
		return nil, err
	}

	for name, addr := range map[string]string{"alice": "alice@example.test", "bob": "bob@example.test", "dave": "dave@example.test",
		"erin": "erin@example.test", "sam": "sam@example.test", "rita": "rita@example.test"} {
		if g.keys[name], err = g.Export(name, addr); err != nil {
			return nil, err
		}
	}
	return g, nil
})

// encryptsTo returns the key ID gpg encrypts to when asked to encrypt to
// fpr at time t: which subkey GnuPG itself chooses.
func (g *gpgSet) encryptsTo(t time.Time, fpr string) (uint64, error) {
	ct, err := g.At(t, "--trust-model", "always", "--encrypt", "--recipient", fpr, "--output", "-", "/dev/null")
	if err != nil {
		return 0, err
	}
	p, err := packet.Read(bytes.NewReader(ct))
	if err != nil {
		return 0, err
	}
	ek, ok := p.(*packet.EncryptedKey)
	if !ok {
		return 0, fmt.Errorf("first packet is %T", p)
	}
	return ek.KeyId, nil
}

// sqKeys are Sequoia's: its default (Cv25519), one whose subkey is for
// storage encryption only, and one created an hour ahead of now.
var sqKeys = sync.OnceValues(func() (map[string]*toolKey, error) {
	keys := map[string]*toolKey{}
	for name, args := range map[string][]string{
		"sq":     {"<sq@example.test>"},
		"store":  {"Storage Only <store@example.test>", "--can-encrypt", "storage"},
		"future": {"<future@example.test>", "--creation-time", time.Now().Add(time.Hour).UTC().Format("20060102T150405Z")},
	} {
		k, err := pgptest.NewSqKey("certs-"+name, args[0], args[1:]...)
		if err != nil {
			return nil, err
		}
		keys[name] = k
	}
	return keys, nil
})

// rnpKey is RNP's default key (RSA 2048, two years), with the bare address
// as its User ID, as rnpkeys writes it.
var rnpKey = sync.OnceValues(func() (*toolKey, error) {
	return pgptest.NewRNPKey("certs-rnp", "rnp@example.test", "")
})

func needGPG(t *testing.T) *gpgSet {
	t.Helper()
	pgptest.Require(t, "gpg", "gpg-agent")
	g, err := gpgKeys()
	if err != nil {
		t.Fatalf("making GnuPG keys: %v", err)
	}
	return g
}

func needSq(t *testing.T) map[string]*toolKey {
	t.Helper()
	pgptest.Require(t, "sq")
	k, err := sqKeys()
	if err != nil {
		t.Fatalf("making Sequoia keys: %v", err)
	}
	return k
}

func needRNP(t *testing.T) *toolKey {
	t.Helper()
	pgptest.Require(t, "rnpkeys")
	k, err := rnpKey()
	if err != nil {
		t.Fatalf("making an RNP key: %v", err)
	}
	return k
}

func keyFPs(ks []*Key) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Fingerprint
	}
	return out
}

func fpOfPub(pk *packet.PublicKey) string { return fmt.Sprintf("%x", pk.Fingerprint) }

// skippedWith returns the Skipped entries of file whose error wraps target.
func skippedWith(s *Store, file string, target error) []Skipped {
	var out []Skipped
	for _, sk := range s.Skipped() {
		if filepath.Base(sk.File) == file && errors.Is(sk.Err, target) {
			out = append(out, sk)
		}
	}
	return out
}

// TestOpenPGPKeysFromTools: keys made and exported by GnuPG, Sequoia and RNP,
// armored and binary, are found by their User IDs' addresses, under the
// fingerprints the tools list, with the encryption subkey the tool made.
func TestOpenPGPKeysFromTools(t *testing.T) {
	g, sq, rnp := needGPG(t), needSq(t), needRNP(t)
	dir := t.TempDir()
	writeFile(t, dir, "alice.asc", g.keys["alice"].Armored)
	writeFile(t, dir, "zz-alice-binary", g.keys["alice"].Binary) // any name
	writeFile(t, dir, "sq.pgp", sq["sq"].Armored)
	writeFile(t, dir, "store.pgp", sq["store"].Binary)
	writeFile(t, dir, "rnp.asc", rnp.Armored)
	s := mustLoad(t, Options{Dir: dir})

	for _, tc := range []struct {
		addr, file string
		key        *toolKey
		subkey     string // the encryption subkey
	}{
		{"alice@example.test", "alice.asc", g.keys["alice"], g.keys["alice"].Subkeys[0]},
		// Sequoia adds signing, authentication and encryption subkeys
		// in that order.
		{"sq@example.test", "sq.pgp", sq["sq"], sq["sq"].Subkeys[2]},
		{"store@example.test", "store.pgp", sq["store"], sq["store"].Subkeys[2]},
		{"rnp@example.test", "rnp.asc", rnp, rnp.Subkeys[0]},
	} {
		ks := s.LookupKeys(tc.addr)
		if len(ks) != 1 {
			t.Errorf("LookupKeys(%s) = %v, want one key", tc.addr, keyFPs(ks))
			continue
		}
		k := ks[0]
		if k.Fingerprint != tc.key.FPR || filepath.Base(k.File) != tc.file || !slices.Equal(k.Addresses, []string{tc.addr}) {
			t.Errorf("%s: got %s from %s for %v, want %s from %s", tc.addr, k.Fingerprint, k.File, k.Addresses, tc.key.FPR, tc.file)
		}
		enc := k.EncryptionKeys(time.Now())
		if len(enc) != 1 || fpOfPub(enc[0]) != tc.subkey {
			t.Errorf("%s: encryption keys %v, want subkey %s", tc.addr, enc, tc.subkey)
		}
	}
	// The binary copy of Alice's key is the same key.
	if d := skippedWith(s, "zz-alice-binary", ErrDuplicate); len(d) != 1 {
		t.Errorf("binary copy of alice's key: skipped %v, want one ErrDuplicate", s.Skipped())
	}
	if n := len(s.Keys()); n != 4 {
		t.Errorf("Keys() has %d keys, want 4", n)
	}
	if len(s.Certs()) != 0 {
		t.Errorf("Certs() = %v, want none", s.Certs())
	}
	// Case-insensitive fallback, as for certificates.
	if ks := s.LookupKeys("Alice@EXAMPLE.test"); len(ks) != 1 {
		t.Errorf("LookupKeys(Alice@EXAMPLE.test) = %v, want alice's key", keyFPs(ks))
	}
	if ks := s.LookupKeys("nobody@example.test"); ks != nil {
		t.Errorf("LookupKeys(nobody) = %v, want nil", keyFPs(ks))
	}
}

// TestOpenPGPSeveralPerFile: one armor block holding two keys (gpg --export
// of both), and one file of several blocks with text around them.
func TestOpenPGPSeveralPerFile(t *testing.T) {
	g, sq, rnp := needGPG(t), needSq(t), needRNP(t)
	dir := t.TempDir()
	both, err := g.Run("--armor", "--export", g.keys["alice"].FPR, g.keys["bob"].FPR)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "gpg-two.asc", both)
	var cat bytes.Buffer
	cat.WriteString("Keys of the team, as pasted from mail:\n\n")
	cat.Write(sq["sq"].Armored)
	cat.WriteString("\n-- \nsecond:\n")
	cat.Write(rnp.Armored)
	writeFile(t, dir, "team.txt", cat.Bytes())
	// Binary keys concatenated, as "cat *.gpg" makes them.
	writeFile(t, dir, "binaries", append(slices.Clone(sq["store"].Binary), g.keys["erin"].Binary...))
	s := mustLoad(t, Options{Dir: dir})
	for addr, file := range map[string]string{
		"alice@example.test": "gpg-two.asc", "bob@example.test": "gpg-two.asc",
		"sq@example.test": "team.txt", "rnp@example.test": "team.txt",
		"store@example.test": "binaries", "erin@example.test": "binaries",
	} {
		ks := s.LookupKeys(addr)
		if len(ks) != 1 || filepath.Base(ks[0].File) != file {
			t.Errorf("LookupKeys(%s) = %v, want one key from %s", addr, ks, file)
		}
	}
	if sk := s.Skipped(); len(sk) != 0 {
		t.Errorf("skipped %v, want nothing", sk)
	}
}

// TestOpenPGPRollover: GnuPG encrypts to the newest encryption subkey that
// is valid; so does Key.EncryptionKeys, before and after that subkey
// expires. A revoked subkey and a revoked User ID are never used.
func TestOpenPGPRollover(t *testing.T) {
	g := needGPG(t)
	bob := g.keys["bob"]
	if len(bob.Subkeys) != 3 {
		t.Fatalf("bob has subkeys %v, want 3", bob.Subkeys)
	}
	dir := t.TempDir()
	writeFile(t, dir, "bob.gpg", bob.Binary)
	clk := newClock(time.Now())
	s := mustLoad(t, Options{Dir: dir, Now: clk.now})
	ks := s.LookupKeys("bob@example.test")
	if len(ks) != 1 {
		t.Fatalf("LookupKeys(bob) = %v, want one key", keyFPs(ks))
	}
	k := ks[0]
	if !slices.Equal(k.Addresses, []string{"bob@example.test"}) {
		t.Errorf("addresses %v, want only bob@ (old@ was revoked)", k.Addresses)
	}
	if s.LookupKeys("old@example.test") != nil {
		t.Error("the revoked User ID's address finds the key")
	}
	if !k.ValidUntil().IsZero() {
		t.Errorf("ValidUntil = %v, want zero: the oldest subkey never expires", k.ValidUntil())
	}
	for _, tc := range []struct {
		name string
		at   time.Time
		want string
	}{
		{"now: the newest subkey not revoked", clk.now(), bob.Subkeys[1]},
		{"after it expired: the oldest", clk.now().Add(2 * day), bob.Subkeys[0]},
	} {
		enc := k.EncryptionKeys(tc.at)
		if len(enc) != 1 || fpOfPub(enc[0]) != tc.want {
			t.Errorf("%s: EncryptionKeys = %v, want %s", tc.name, enc, tc.want)
			continue
		}
		id, err := g.encryptsTo(tc.at, bob.FPR)
		if err != nil {
			t.Fatal(err)
		}
		if id != enc[0].KeyId {
			t.Errorf("%s: gpg encrypts to %016x, EncryptionKeys gives %016x", tc.name, id, enc[0].KeyId)
		}
	}
}

// TestOpenPGPUnusable: what cannot be encrypted to is skipped, with a reason
// that wraps the sentinel errors, as unusable certificates are.
func TestOpenPGPUnusable(t *testing.T) {
	g := needGPG(t)
	dir := t.TempDir()
	writeFile(t, dir, "rita.asc", g.keys["rita"].Armored)
	writeFile(t, dir, "sam.asc", g.keys["sam"].Armored)
	writeFile(t, dir, "alice-secret.asc", g.keys["alice"].Secret)
	secretBin, err := g.Run("--export-secret-keys", g.keys["alice"].FPR)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "alice-secret.gpg", secretBin)
	msg, err := g.Run("--armor", "--trust-model", "always", "--encrypt", "--recipient", g.keys["alice"].FPR, "--output", "-", "/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "message.asc", msg)
	broken := slices.Clone(g.keys["erin"].Armored)
	i := bytes.Index(broken, []byte("\n\n")) + 2
	broken[i+10] ^= 0x20 // a base64 letter changes case: bad packet data or CRC
	writeFile(t, dir, "broken.asc", broken)
	writeFile(t, dir, "truncated.gpg", g.keys["erin"].Binary[:len(g.keys["erin"].Binary)/2])
	s := mustLoad(t, Options{Dir: dir})

	for _, tc := range []struct {
		file string
		errs []error
	}{
		{"rita.asc", []error{ErrNoEncryptionKey, ErrRevoked}},
		{"sam.asc", []error{ErrNoEncryptionKey}},
		{"alice-secret.asc", []error{ErrPrivateKey}},
		{"alice-secret.gpg", []error{ErrPrivateKey}},
		{"message.asc", []error{ErrNotKey}},
		{"broken.asc", []error{ErrParse}},
		{"truncated.gpg", []error{ErrParse}},
	} {
		var sk []Skipped
		for _, e := range s.Skipped() {
			if filepath.Base(e.File) == tc.file {
				sk = append(sk, e)
			}
		}
		if len(sk) != 1 {
			t.Errorf("%s: skipped %v, want one entry", tc.file, sk)
			continue
		}
		for _, want := range tc.errs {
			if !errors.Is(sk[0].Err, want) {
				t.Errorf("%s: %v does not wrap %v", tc.file, sk[0].Err, want)
			}
		}
		t.Logf("%s", sk[0])
	}
	if sk := skippedWith(s, "rita.asc", ErrRevoked); len(sk) == 1 && sk[0].Subject != "Rita <rita@example.test>" {
		t.Errorf("rita: Subject %q, want her User ID", sk[0].Subject)
	}
	if ks := s.Keys(); len(ks) != 0 {
		t.Errorf("Keys() = %v, want none", keyFPs(ks))
	}
	for _, addr := range []string{"rita@example.test", "sam@example.test", "alice@example.test"} {
		if s.LookupKeys(addr) != nil {
			t.Errorf("LookupKeys(%s) found a key", addr)
		}
	}
}

// TestOpenPGPExpiry: a key that expires is reported ahead (KeysExpiringWithin)
// and stops being found when it expires; loaded after that, it is skipped
// as expired.
func TestOpenPGPExpiry(t *testing.T) {
	g := needGPG(t)
	dir := t.TempDir()
	writeFile(t, dir, "erin.asc", g.keys["erin"].Armored)
	writeFile(t, dir, "alice.asc", g.keys["alice"].Armored)
	clk := newClock(time.Now())
	s := mustLoad(t, Options{Dir: dir, Now: clk.now})
	ks := s.LookupKeys("erin@example.test")
	if len(ks) != 1 {
		t.Fatalf("LookupKeys(erin) = %v, want her key", keyFPs(ks))
	}
	erin := ks[0]
	// Made four hours before g.made (faked time), to expire five days later.
	want := g.made.Add(-4 * time.Hour).Add(5 * day)
	if d := erin.ValidUntil().Sub(want); d < -time.Minute || d > time.Minute {
		t.Errorf("erin: ValidUntil %v, want about %v", erin.ValidUntil(), want)
	}
	soon := s.KeysExpiringWithin(30 * day)
	if len(soon) != 1 || soon[0] != erin {
		t.Errorf("KeysExpiringWithin(30d) = %v, want erin's key only (alice's never expires)", keyFPs(soon))
	}
	if got := s.KeysExpiringWithin(day); len(got) != 0 {
		t.Errorf("KeysExpiringWithin(1d) = %v, want none", keyFPs(got))
	}

	clk.set(want.Add(time.Hour))
	if got := s.LookupKeys("erin@example.test"); got != nil {
		t.Errorf("after expiry: LookupKeys(erin) = %v, want nil", keyFPs(got))
	}
	if erin.UsableAt(clk.now()) {
		t.Error("erin usable after expiry")
	}
	if got := s.KeysExpiringWithin(0); len(got) != 1 {
		t.Errorf("after expiry: KeysExpiringWithin(0) = %v, want erin's key", keyFPs(got))
	}
	if len(s.LookupKeys("alice@example.test")) != 1 {
		t.Error("alice's key lost")
	}

	later := mustLoad(t, Options{Dir: dir, Now: clk.now})
	if sk := skippedWith(later, "erin.asc", ErrExpired); len(sk) != 1 || !errors.Is(sk[0].Err, ErrNoEncryptionKey) {
		t.Errorf("loaded after expiry: skipped %v, want erin as ErrNoEncryptionKey + ErrExpired", later.Skipped())
	}
}

// TestOpenPGPSubkeyExpired: a key whose only encryption subkey expires is
// usable until then (ValidUntil is the subkey's expiry, although the primary
// key does not expire), and skipped when loaded afterwards.
func TestOpenPGPSubkeyExpired(t *testing.T) {
	g := needGPG(t)
	dave := g.keys["dave"]
	dir := t.TempDir()
	writeFile(t, dir, "dave.asc", dave.Armored)
	clk := newClock(time.Now())
	s := mustLoad(t, Options{Dir: dir, Now: clk.now})
	ks := s.LookupKeys("dave@example.test")
	if len(ks) != 1 {
		t.Fatalf("LookupKeys(dave) = %v, want his key", keyFPs(ks))
	}
	want := g.made.Add(-4 * time.Hour).Add(day)
	if d := ks[0].ValidUntil().Sub(want); d < -time.Minute || d > time.Minute {
		t.Errorf("ValidUntil %v, want about %v (the subkey's expiry)", ks[0].ValidUntil(), want)
	}
	clk.set(want.Add(time.Minute))
	if s.LookupKeys("dave@example.test") != nil {
		t.Error("found after the subkey expired")
	}
	later := mustLoad(t, Options{Dir: dir, Now: clk.now})
	sk := skippedWith(later, "dave.asc", ErrNoEncryptionKey)
	if len(sk) != 1 || !errors.Is(sk[0].Err, ErrExpired) || !strings.Contains(sk[0].Err.Error(), "encryption subkey") {
		t.Errorf("loaded after expiry: skipped %v, want dave with ErrNoEncryptionKey for an expired subkey", later.Skipped())
	}
}

// TestOpenPGPNotYetValid: a key made on a machine whose clock is ahead is
// kept, reported, and used from its creation on.
func TestOpenPGPNotYetValid(t *testing.T) {
	sq := needSq(t)
	dir := t.TempDir()
	writeFile(t, dir, "future.pgp", sq["future"].Armored)
	clk := newClock(time.Now())
	s := mustLoad(t, Options{Dir: dir, Now: clk.now})
	sk := skippedWith(s, "future.pgp", ErrNotYetValid)
	if len(sk) != 1 || !sk[0].kept {
		t.Fatalf("skipped %v, want future.pgp kept with ErrNotYetValid", s.Skipped())
	}
	if s.LookupKeys("future@example.test") != nil {
		t.Error("found before its creation time")
	}
	clk.set(clk.now().Add(2 * time.Hour))
	if len(s.LookupKeys("future@example.test")) != 1 {
		t.Error("not found after its creation time")
	}
}

// TestOpenPGPBesideCertificates: a certificate and a key for one address live
// side by side; each lookup finds its own.
func TestOpenPGPBesideCertificates(t *testing.T) {
	g := needGPG(t)
	dir := t.TempDir()
	writeFile(t, dir, "alice.asc", g.keys["alice"].Armored)
	writeFile(t, dir, "alice.pem", validNow(t, "alice@example.test"))
	s := mustLoad(t, Options{Dir: dir})
	if len(s.Lookup("alice@example.test")) != 1 || len(s.LookupKeys("alice@example.test")) != 1 {
		t.Errorf("Lookup: %d certificates, LookupKeys: %d keys; want one each",
			len(s.Lookup("alice@example.test")), len(s.LookupKeys("alice@example.test")))
	}
	if sk := s.Skipped(); len(sk) != 0 {
		t.Errorf("skipped %v", sk)
	}
}

// TestOpenPGPWatch: the watch picks up key files as it picks up certificate
// files: added, replaced, removed.
func TestOpenPGPWatch(t *testing.T) {
	g, sq := needGPG(t), needSq(t)
	dir := t.TempDir()
	h, rec := newTestHolder(t, dir)
	h.pollSafety = time.Hour
	startWatch(t, h, rec)
	keyFound := func(addr string) func() bool {
		return func() bool { return len(h.Current().LookupKeys(addr)) == 1 }
	}
	writeFile(t, dir, "alice.gpg", g.keys["alice"].Binary)
	waitFor(t, watchWait, "alice.gpg picked up", keyFound("alice@example.test"))
	writeAtomic(t, dir, "friend.asc", sq["sq"].Armored)
	waitFor(t, watchWait, "friend.asc renamed into place", keyFound("sq@example.test"))
	writeAtomic(t, dir, "friend.asc", g.keys["bob"].Armored)
	waitFor(t, watchWait, "friend.asc replaced", func() bool {
		return keyFound("bob@example.test")() && h.Current().LookupKeys("sq@example.test") == nil
	})
	if err := os.Remove(filepath.Join(dir, "alice.gpg")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, watchWait, "alice.gpg removed", func() bool { return h.Current().LookupKeys("alice@example.test") == nil })
}

// TestIsOpenPGP: files are told apart by content.
func TestIsOpenPGP(t *testing.T) {
	cert := selfSigned(t, leafTemplate("a@example.test"))
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"PEM certificate", pemOf(cert), false},
		{"DER certificate", cert.Raw, false},
		{"PKCS #7", pkcs7Of(t, cert), false},
		{"armored key", []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjMEZ\n-----END PGP PUBLIC KEY BLOCK-----\n"), true},
		{"armor after text", []byte("my key:\r\n-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n"), true},
		{"armor quoted in text", []byte("> -----BEGIN PGP PUBLIC KEY BLOCK-----\n"), false},
		{"binary, new format tag 6", []byte{0xc6, 0x33, 0x04}, true},
		{"binary, legacy format tag 6", []byte{0x99, 0x01, 0x8d, 0x04}, true},
		{"binary secret key", []byte{0x95, 0x03, 0xc6}, true},
		{"binary signature", []byte{0xc2, 0x10}, false},
		{"empty", nil, false},
	} {
		if got := isOpenPGP(tc.data); got != tc.want {
			t.Errorf("%s: isOpenPGP = %v, want %v", tc.name, got, tc.want)
		}
	}
}
