package pgptest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// A Key is one OpenPGP key pair, made by a tool (or go-crypto, GoKey) and
// exported by it, with what decrypts messages encrypted to it.
type Key struct {
	Name string // e.g. GPGRSA, or what the caller named it
	Tool string // "gpg", "sq", "rnp" or "go"
	Addr string // the address of its User ID
	// Armored and Binary are the public key (RFC 9580 §10.1) as the tool
	// exports it, armored (§6.2) and not. RNP exports armor only: its
	// Binary is that armor decoded.
	Armored, Binary []byte
	Secret          []byte // the armored secret key, not protected
	// FPR and Subkeys are the fingerprints the tool lists, lower case: the
	// primary key's and the subkeys' in the tool's order.
	FPR     string
	Subkeys []string

	decrypt func(msg []byte) ([]byte, error)
}

// Decrypt returns the literal data of msg, an armored OpenPGP message or a
// PGP/MIME message, decrypted by the tool that made k. Safe for parallel
// use.
func (k *Key) Decrypt(msg []byte) ([]byte, error) {
	armored, err := Armored(msg)
	if err != nil {
		return nil, err
	}
	return k.decrypt(armored)
}

// Entities parses k's secret key with go-crypto, afresh each time: callers
// may use the entities concurrently.
func (k *Key) Entities() (openpgp.EntityList, error) {
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(k.Secret))
	if err != nil {
		return nil, fmt.Errorf("pgptest: %s's secret key: %w", k.Name, err)
	}
	return el, nil
}

// EncryptionKey returns the (sub)key go-crypto encrypts to for k now.
func (k *Key) EncryptionKey(t testing.TB) *packet.PublicKey {
	t.Helper()
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(k.Armored))
	if err != nil || len(el) != 1 {
		t.Fatalf("%s: public key: %d entities, %v", k.Name, len(el), err)
	}
	ek, ok := el[0].EncryptionKey(time.Now())
	if !ok {
		t.Fatalf("%s: no encryption key", k.Name)
	}
	return ek.PublicKey
}

// The standard keys, one per tool and key type, each made once per test
// binary on first use (ToolKey). Each is for Name@example.test.
const (
	GPGRSA     = "gpg-rsa"     // GnuPG 2.2's default: RSA 3072, RSA 3072 encryption subkey
	GPGCv25519 = "gpg-cv25519" // GnuPG's future-default: Ed25519, Cv25519 subkey
	Sq         = "sq"          // Sequoia's default: Ed25519 with a Cv25519 subkey
	RNPRSA     = "rnp-rsa"     // RNP's default: RSA 2048
	RNP25519   = "rnp-25519"   // EdDSA + X25519 (rnpkeys --expert, choice 22), as Thunderbird makes them
)

// StandardKeys lists the standard keys' names.
var StandardKeys = []string{GPGRSA, GPGCv25519, Sq, RNPRSA, RNP25519}

// standardTools are the tools each standard key needs, to make and to use.
var standardTools = map[string][]string{
	GPGRSA:     {"gpg", "gpg-agent"},
	GPGCv25519: {"gpg", "gpg-agent"},
	Sq:         {"sq"},
	RNPRSA:     {"rnp", "rnpkeys"},
	RNP25519:   {"rnp", "rnpkeys"},
}

// gpgStandard makes both GnuPG keys in one home, so that one agent serves
// them.
var gpgStandard = sync.OnceValues(func() (map[string]*Key, error) {
	g, err := NewGnuPG("gnupg")
	if err != nil {
		return nil, err
	}
	keys := map[string]*Key{}
	for _, k := range []struct{ name, algo string }{{GPGRSA, "default"}, {GPGCv25519, "future-default"}} {
		addr := k.name + "@example.test"
		if _, err := g.Run("--quick-gen-key", "GnuPG <"+addr+">", k.algo, "default", "never"); err != nil {
			return nil, err
		}
		if keys[k.name], err = g.Export(k.name, addr); err != nil {
			return nil, err
		}
	}
	return keys, nil
})

var standard = map[string]func() (*Key, error){
	GPGRSA:     func() (*Key, error) { return fromSet(gpgStandard, GPGRSA) },
	GPGCv25519: func() (*Key, error) { return fromSet(gpgStandard, GPGCv25519) },
	Sq:         sync.OnceValues(func() (*Key, error) { return NewSqKey(Sq, "<"+Sq+"@example.test>") }),
	RNPRSA:     sync.OnceValues(func() (*Key, error) { return NewRNPKey(RNPRSA, RNPRSA+"@example.test", "") }),
	RNP25519:   sync.OnceValues(func() (*Key, error) { return NewRNPKey(RNP25519, RNP25519+"@example.test", "22") }),
}

func fromSet(set func() (map[string]*Key, error), name string) (*Key, error) {
	keys, err := set()
	if err != nil {
		return nil, err
	}
	return keys[name], nil
}

// ToolKey returns the standard key name (GPGRSA, ...), made on first use.
// The test is skipped without the tool (fails with CI=true), and fails when
// the tool cannot make the key.
func ToolKey(t testing.TB, name string) *Key {
	t.Helper()
	gen, ok := standard[name]
	if !ok {
		t.Fatalf("pgptest: no standard key %q", name)
	}
	Require(t, standardTools[name]...)
	k, err := gen()
	if err != nil {
		t.Fatalf("making key %s: %v", name, err)
	}
	return k
}

// GnuPG is a throw-away GnuPG home in the scratch directory. Every command
// runs in batch mode with an empty passphrase through loopback pinentry,
// so that nothing waits for a prompt.
type GnuPG struct {
	Home string
}

// NewGnuPG makes the home name in the scratch directory; Cleanup stops its
// agent.
func NewGnuPG(name string) (*GnuPG, error) {
	home, err := subdir(name)
	if err != nil {
		return nil, err
	}
	addHome(home)
	return &GnuPG{Home: home}, nil
}

// Env is the environment that points gpg at the home.
func (g *GnuPG) Env() []string { return []string{"GNUPGHOME=" + g.Home} }

// Run runs gpg with args in the home and returns its stdout.
func (g *GnuPG) Run(args ...string) ([]byte, error) { return g.RunInput(nil, args...) }

// RunInput is Run with stdin, e.g. for --command-fd 0.
func (g *GnuPG) RunInput(stdin []byte, args ...string) ([]byte, error) {
	return run(g.Env(), stdin, "gpg", append([]string{"--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
}

// At runs gpg as if the time were t (--faked-system-time, the "!" freezing
// the clock), e.g. to date keys and signatures in the past.
func (g *GnuPG) At(t time.Time, args ...string) ([]byte, error) {
	return g.Run(append(FakedTime(t), args...)...)
}

// FakedTime is the option that has gpg run as if the time were t.
func FakedTime(t time.Time) []string {
	return []string{"--faked-system-time", strconv.FormatInt(t.Unix(), 10) + "!"}
}

// Fingerprints returns the fingerprints of the key whose User ID has the
// address addr, lower case, read from gpg's machine-readable listing
// (GnuPG's doc/DETAILS: an "fpr" record follows its "pub" or "sub"
// record).
func (g *GnuPG) Fingerprints(addr string) (fpr string, subkeys []string, err error) {
	out, err := g.Run("--with-colons", "--list-keys", "<"+addr+">")
	if err != nil {
		return "", nil, err
	}
	last := ""
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		switch {
		case f[0] == "pub" || f[0] == "sub":
			last = f[0]
		case f[0] == "fpr" && len(f) > 9 && last == "pub":
			fpr = strings.ToLower(f[9])
			last = ""
		case f[0] == "fpr" && len(f) > 9 && last == "sub":
			subkeys = append(subkeys, strings.ToLower(f[9]))
			last = ""
		}
	}
	if fpr == "" {
		return "", nil, fmt.Errorf("pgptest: no fingerprint for %s in %q", addr, out)
	}
	return fpr, subkeys, nil
}

// Export returns the key for addr as it is now in the home: its
// fingerprints, public key armored and binary, and secret key; it decrypts
// with gpg --batch -d in this home.
func (g *GnuPG) Export(name, addr string) (*Key, error) {
	fpr, subkeys, err := g.Fingerprints(addr)
	if err != nil {
		return nil, err
	}
	k := &Key{Name: name, Tool: "gpg", Addr: addr, FPR: fpr, Subkeys: subkeys}
	if k.Armored, err = g.Run("--armor", "--export", fpr); err != nil {
		return nil, err
	}
	if k.Binary, err = g.Run("--export", fpr); err != nil {
		return nil, err
	}
	if k.Secret, err = g.Run("--armor", "--export-secret-keys", fpr); err != nil {
		return nil, err
	}
	k.decrypt = func(msg []byte) ([]byte, error) {
		return withFile(msg, func(path string) ([]byte, error) {
			return g.Run("--decrypt", "--output", "-", path)
		})
	}
	return k, nil
}

// NewSqKey makes a key with sq key generate for userID (as sq takes it,
// e.g. "<a@example.test>" or "Name <a@example.test>"), with extra options
// (e.g. "--can-encrypt", "storage"), into a key file in the scratch
// directory; it decrypts with sq decrypt --recipient-key.
func NewSqKey(name, userID string, extra ...string) (*Key, error) {
	dir, err := subdir("sq-" + name)
	if err != nil {
		return nil, err
	}
	secret := filepath.Join(dir, "key.pgp")
	args := append([]string{"key", "generate", "--userid", userID, "--export", secret}, extra...)
	if _, err := run(nil, nil, "sq", args...); err != nil {
		return nil, err
	}
	k := &Key{Name: name, Tool: "sq", Addr: addrOf(userID)}
	if k.Armored, err = run(nil, nil, "sq", "key", "extract-cert", secret); err != nil {
		return nil, err
	}
	if k.Binary, err = run(nil, nil, "sq", "key", "extract-cert", "--binary", secret); err != nil {
		return nil, err
	}
	if k.Secret, err = os.ReadFile(secret); err != nil {
		return nil, fmt.Errorf("pgptest: %w", err)
	}
	out, err := run(nil, nil, "sq", "inspect", secret)
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(out)) {
		field, value, _ := strings.Cut(strings.TrimSpace(line), ": ")
		switch field {
		case "Fingerprint":
			k.FPR = strings.ToLower(value)
		case "Subkey":
			k.Subkeys = append(k.Subkeys, strings.ToLower(value))
		}
	}
	k.decrypt = func(msg []byte) ([]byte, error) {
		return withFile(msg, func(path string) ([]byte, error) {
			return run(nil, nil, "sq", "decrypt", "--recipient-key", secret, path)
		})
	}
	return k, nil
}

// NewRNPKey makes a key with rnpkeys for userID in its own home in the
// scratch directory: RNP's default (RSA 2048) when expert is empty,
// otherwise the answer to rnpkeys --expert's menu (e.g. "22": EdDSA +
// X25519). It decrypts with rnp --homedir -d.
func NewRNPKey(name, userID, expert string) (*Key, error) {
	home, err := subdir("rnp-" + name)
	if err != nil {
		return nil, err
	}
	rnpkeys := func(stdin []byte, args ...string) ([]byte, error) {
		return run(nil, stdin, "rnpkeys", append([]string{"--homedir", home, "--notty"}, args...)...)
	}
	args := []string{"--generate-key", "--userid", userID, "--password", ""}
	var answer []byte
	if expert != "" {
		args = append(args, "--expert")
		answer = []byte(expert + "\n")
	}
	if _, err := rnpkeys(answer, args...); err != nil {
		return nil, err
	}
	k := &Key{Name: name, Tool: "rnp", Addr: addrOf(userID)}
	if k.Armored, err = rnpkeys(nil, "--export-key", userID); err != nil {
		return nil, err
	}
	if k.Secret, err = rnpkeys(nil, "--export-key", "--secret", userID); err != nil {
		return nil, err
	}
	if k.Binary, err = dearmor(k.Armored); err != nil {
		return nil, err
	}
	out, err := rnpkeys(nil, "--list-keys", "--with-sigs")
	if err != nil {
		return nil, err
	}
	// A 40-digit line follows each "pub" and "sub" line; the home holds
	// this key only.
	for line := range strings.Lines(string(out)) {
		s := strings.TrimSpace(line)
		if len(s) == 40 && strings.Trim(s, "0123456789abcdef") == "" {
			if k.FPR == "" {
				k.FPR = s
			} else {
				k.Subkeys = append(k.Subkeys, s)
			}
		}
	}
	k.decrypt = func(msg []byte) ([]byte, error) {
		return withFile(msg, func(path string) ([]byte, error) {
			return run(nil, nil, "rnp", "--homedir", home, "--notty", "--decrypt", path, "--output", "-")
		})
	}
	return k, nil
}

// addrOf returns the address in a User ID: between angle brackets, or the
// whole of it (RNP's bare address).
func addrOf(userID string) string {
	if i := strings.LastIndexByte(userID, '<'); i >= 0 {
		if j := strings.IndexByte(userID[i:], '>'); j > 0 {
			return userID[i+1 : i+j]
		}
	}
	return userID
}

// dearmor returns the contents of the armor block in b.
func dearmor(b []byte) ([]byte, error) {
	block, err := armor.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("pgptest: armor: %w", err)
	}
	data, err := io.ReadAll(block.Body)
	if err != nil {
		return nil, fmt.Errorf("pgptest: armor: %w", err)
	}
	return data, nil
}
