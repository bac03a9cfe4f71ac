package pgptest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

func TestMain(m *testing.M) {
	if os.Getenv(cleanupChild) != "" {
		cleanupHelper()
		return
	}
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// encryptTo encrypts plain to keys with go-crypto's defaults (v3 PKESKs,
// SEIPD v1), armored: what the tools must decrypt.
func encryptTo(t testing.TB, plain []byte, keys ...*Key) []byte {
	t.Helper()
	var to openpgp.EntityList
	for _, k := range keys {
		el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(k.Armored))
		if err != nil {
			t.Fatalf("%s: %v", k.Name, err)
		}
		to = append(to, el...)
	}
	var b bytes.Buffer
	aw, err := armor.Encode(&b, "PGP MESSAGE", nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := openpgp.Encrypt(aw, to, nil, &openpgp.FileHints{IsBinary: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// pgpMIME wraps an armored message as RFC 3156 §4 does.
func pgpMIME(armored []byte) []byte {
	return []byte("Subject: s\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"\r\n\r\n" +
		"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n" +
		"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + string(armored) + "\r\n--b--\r\n")
}

// TestToolKeys: every standard key is exported armored and binary as one
// key of the type it says with the listed fingerprint and the address, and
// decrypts what is encrypted to it, armored or as PGP/MIME, with its tool
// and with go-crypto.
func TestToolKeys(t *testing.T) {
	encAlgo := map[string]packet.PublicKeyAlgorithm{
		GPGRSA: packet.PubKeyAlgoRSA, GPGCv25519: packet.PubKeyAlgoECDH, Sq: packet.PubKeyAlgoECDH,
		RNPRSA: packet.PubKeyAlgoRSA, RNP25519: packet.PubKeyAlgoECDH,
	}
	for _, name := range StandardKeys {
		t.Run(name, func(t *testing.T) {
			k := ToolKey(t, name)
			if k.Name != name || k.Addr != name+"@example.test" || k.Tool != strings.SplitN(name, "-", 2)[0] {
				t.Errorf("name %q, tool %q, address %q", k.Name, k.Tool, k.Addr)
			}
			if !bytes.HasPrefix(k.Armored, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
				t.Errorf("armored public key starts %q", k.Armored[:min(len(k.Armored), 40)])
			}
			el, err := openpgp.ReadKeyRing(bytes.NewReader(k.Binary))
			if err != nil || len(el) != 1 {
				t.Fatalf("binary public key: %d entities, %v", len(el), err)
			}
			if got := fmt.Sprintf("%x", el[0].PrimaryKey.Fingerprint); got != k.FPR {
				t.Errorf("binary key's fingerprint %s, listed %s", got, k.FPR)
			}
			if len(k.Subkeys) != len(el[0].Subkeys) {
				t.Errorf("%d subkeys listed, %d in the key", len(k.Subkeys), len(el[0].Subkeys))
			}
			if el[0].PrivateKey != nil {
				t.Error("the public key holds a secret key")
			}
			if _, ok := el[0].Identities[""]; ok {
				t.Error("empty User ID")
			}
			found := false
			for id := range el[0].Identities {
				found = found || strings.Contains(id, k.Addr)
			}
			if !found {
				t.Errorf("no User ID for %s", k.Addr)
			}
			if a := k.EncryptionKey(t).PubKeyAlgo; a != encAlgo[name] {
				t.Errorf("encryption key algorithm %v, want %v", a, encAlgo[name])
			}

			plain := []byte("Content-Type: text/plain\r\n\r\nfor " + name + "\r\n")
			msg := encryptTo(t, plain, k)
			for form, m := range map[string][]byte{"armored": msg, "PGP/MIME": pgpMIME(msg)} {
				if got, err := k.Decrypt(m); err != nil || !bytes.Equal(got, plain) {
					t.Errorf("%s, %s: %q, %v", k.Tool, form, got, err)
				}
				if got, lit, err := DecryptGo(m, k); err != nil || !bytes.Equal(got, plain) || !lit.IsBinary {
					t.Errorf("go-crypto, %s: %q, %v", form, got, err)
				}
			}
		})
	}
}

// TestKeyPackets: gpg lists one v3 PKESK per recipient, naming its
// encryption subkey, in order.
func TestKeyPackets(t *testing.T) {
	a, b := GoKey(t, "a", Curve25519), GoKey(t, "b", RSA2048)
	msg := encryptTo(t, []byte("x"), a, b)
	for form, m := range map[string][]byte{"armored": msg, "PGP/MIME": pgpMIME(msg)} {
		got := KeyPackets(t, m)
		if len(got) != 2 {
			t.Fatalf("%s: key packets %v, want 2", form, got)
		}
		for i, k := range []*Key{a, b} {
			want := PKESK{Version: 3, Algo: k.EncryptionKey(t).PubKeyAlgo, KeyID: fmt.Sprintf("%016x", k.EncryptionKey(t).KeyId)}
			if got[i] != want {
				t.Errorf("%s: key packet %d is %+v, want %+v", form, i, got[i], want)
			}
		}
	}
}

// TestGoKey: one key per name and kind, cached; each decrypts only what is
// encrypted to it.
func TestGoKey(t *testing.T) {
	for _, kind := range []GoKind{Curve25519, RSA2048} {
		k := GoKey(t, "go", kind)
		if again := GoKey(t, "go", kind); again != k {
			t.Errorf("%v: a second key for the same name", kind)
		}
		other := GoKey(t, "other", kind)
		if other.FPR == k.FPR || len(k.FPR) != 40 || len(k.Subkeys) != 1 {
			t.Errorf("%v: the other name has the same key", kind)
		}
		el, err := openpgp.ReadKeyRing(bytes.NewReader(k.Binary))
		if err != nil || len(el) != 1 || len(el[0].Subkeys) != 1 || el[0].PrivateKey != nil {
			t.Fatalf("%v: public key: %v", kind, err)
		}
		if got := fmt.Sprintf("%x", el[0].Subkeys[0].PublicKey.Fingerprint); got != k.Subkeys[0] || k.EncryptionKey(t).KeyId != el[0].Subkeys[0].PublicKey.KeyId {
			t.Errorf("%v: subkey %s, listed %v", kind, got, k.Subkeys)
		}
		plain := []byte("secret")
		msg := encryptTo(t, plain, k)
		if got, err := k.Decrypt(msg); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("%v: Decrypt = %q, %v", kind, got, err)
		}
		if _, _, err := DecryptGo(msg, other); err == nil {
			t.Errorf("%v: the other key decrypts", kind)
		}
	}
}

// TestArmored: armor passes through; the second part of PGP/MIME is
// found; anything else is an error.
func TestArmored(t *testing.T) {
	arm := []byte(armorBegin + "\n\nwcBMA\n=abcd\n-----END PGP MESSAGE-----\n")
	if got, err := Armored(arm); err != nil || !bytes.Equal(got, arm) {
		t.Errorf("armor: %q, %v", got, err)
	}
	if got, err := Armored(pgpMIME(arm)); err != nil || !bytes.Equal(got, arm) {
		t.Errorf("PGP/MIME: %q, %v", got, err)
	}
	for _, bad := range []string{
		"Subject: s\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
		"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n--b\r\n\r\nVersion: 1\r\n--b--\r\n",
	} {
		if _, err := Armored([]byte(bad)); err == nil {
			t.Errorf("Armored(%q) succeeded", bad)
		}
	}
}

// fakeTB records Skip and Fatal instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper()                      {}
func (f *fakeTB) Skip(args ...any)             { f.skipped = true; f.msg = fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any)            { f.failed = true; f.msg = fmt.Sprint(args...) }
func (f *fakeTB) Skipf(s string, args ...any)  { f.Skip(fmt.Sprintf(s, args...)) }
func (f *fakeTB) Fatalf(s string, args ...any) { f.Fatal(fmt.Sprintf(s, args...)) }

// TestRequire: a missing tool skips on a laptop and fails in CI.
func TestRequire(t *testing.T) {
	const missing = "pgptest-no-such-tool"
	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	Require(f, "sh", missing)
	if !f.skipped || f.failed || !strings.Contains(f.msg, missing) {
		t.Errorf("laptop: skipped %v failed %v %q", f.skipped, f.failed, f.msg)
	}
	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	Require(f, missing)
	if f.skipped || !f.failed || !strings.Contains(f.msg, missing) {
		t.Errorf("CI: skipped %v failed %v %q", f.skipped, f.failed, f.msg)
	}
	f = &fakeTB{TB: t}
	Require(f, "sh")
	if f.skipped || f.failed {
		t.Error("a present tool was reported missing")
	}
}

// cleanupChild names the environment variable that makes the test binary
// run cleanupHelper instead of the tests.
const cleanupChild = "PGPTEST_CLEANUP_CHILD"

// cleanupHelper runs in a child process: it makes a home, starts its
// agent as gpg would (gpg-connect-agent starts it on demand), prints the
// home and the agent's process ID, and calls Cleanup.
func cleanupHelper() {
	g, err := NewGnuPG("agent")
	var pid []byte
	if err == nil {
		pid, err = run(g.Env(), nil, "gpg-connect-agent", "getinfo pid", "/bye")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s\n%s", g.Home, pid)
	Cleanup()
}

// TestCleanup: Cleanup stops the agent gpg started for a home of the kit
// (gpgconf --kill waits for it to exit) and removes the scratch directory.
// It runs in a child process, so as not to pull the homes from under the
// other tests.
func TestCleanup(t *testing.T) {
	Require(t, "gpg", "gpg-agent", "gpgconf", "gpg-connect-agent")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out, err := run([]string{cleanupChild + "=1"}, nil, exe)
	if err != nil {
		t.Fatal(err)
	}
	// "D <pid>" is the agent's data line; "OK" ends the answer.
	var home string
	var pid int
	if _, err := fmt.Sscanf(string(out), "%s\nD %d", &home, &pid); err != nil || pid <= 0 {
		t.Fatalf("child printed %q: %v", out, err)
	}
	if _, err := os.Stat(filepath.Dir(home)); !os.IsNotExist(err) {
		t.Errorf("scratch directory %s still there: %v", filepath.Dir(home), err)
	}
	// The agent may take a moment to exit after gpgconf --kill returns
	// (it was asked, not waited for, on a loaded machine): poll.
	deadline := time.Now().Add(10 * time.Second)
	for running(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if running(pid) {
		t.Errorf("gpg-agent %d still running 10 s after Cleanup", pid)
		syscall.Kill(pid, syscall.SIGTERM)
	}
}

// running reports whether process pid exists and has not exited: a zombie
// (state Z in /proc, proc(5)) waiting for a parent that does not reap it
// has exited.
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil && !os.IsNotExist(err)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}
