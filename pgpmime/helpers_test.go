package pgpmime_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
)

const maxHeader = 1 << 20

// The recipients' keys are made by the tools that decrypt with them (GnuPG,
// Sequoia, RNP), once per test binary, in one scratch directory; TestMain
// removes it and stops the gpg-agent GnuPG started there.
var scratch = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "pgpmime") })

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := scratch(); err == nil {
		home := filepath.Join(dir, "gnupg")
		if _, err := os.Stat(home); err == nil {
			cmd := exec.Command("gpgconf", "--kill", "all")
			cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
			_ = cmd.Run()
		}
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// recipient is one key pair a tool made, ready to encrypt to (through the
// certs store, as the daemon finds it) and to decrypt with that tool.
type recipient struct {
	name string // the tool and key type
	addr string
	key  *certs.Key
	// decrypt returns the literal data of an armored OpenPGP message,
	// decrypted by the tool that made the key. Safe for parallel use.
	decrypt func(msg []byte) ([]byte, error)
	// secret is the armored secret key, for go-crypto.
	secret []byte
}

// keys returns what a copy for r is encrypted to.
func (r *recipient) keys(t testing.TB) []*packet.PublicKey {
	t.Helper()
	ks := r.key.EncryptionKeys(time.Now())
	if len(ks) != 1 {
		t.Fatalf("%s: %d encryption keys", r.name, len(ks))
	}
	return ks
}

// run executes a tool with a timeout: a decryptor waiting for a passphrase
// fails the test instead of hanging it. stderr explains failures.
func run(env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// withFile writes data to a fresh file in dir for the duration of f.
func withFile(dir string, data []byte, f func(path string) ([]byte, error)) ([]byte, error) {
	file, err := os.CreateTemp(dir, "msg-*.asc")
	if err != nil {
		return nil, err
	}
	defer os.Remove(file.Name())
	_, err = file.Write(data)
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return f(file.Name())
}

type toolSet struct {
	dir  string
	byID map[string]*recipient
}

// loadKeys puts the public keys into a certificate directory and loads it:
// the recipients' keys come from certs as they do in the daemon.
func (ts *toolSet) loadKeys(pub map[string][]byte) error {
	dir := filepath.Join(ts.dir, "certs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, data := range pub {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	st, err := certs.Load(certs.Options{Dir: dir})
	if err != nil {
		return err
	}
	if sk := st.Skipped(); len(sk) > 0 {
		return fmt.Errorf("keys skipped: %v", sk)
	}
	for _, r := range ts.byID {
		ks := st.LookupKeys(r.addr)
		if len(ks) != 1 {
			return fmt.Errorf("%s: %d keys for %s", r.name, len(ks), r.addr)
		}
		r.key = ks[0]
	}
	return nil
}

var tools = sync.OnceValues(func() (*toolSet, error) {
	dir, err := scratch()
	if err != nil {
		return nil, err
	}
	ts := &toolSet{dir: dir, byID: map[string]*recipient{}}
	pub := map[string][]byte{}

	// GnuPG: its 2.2 default (RSA 3072) and Cv25519, in one home.
	if _, err := exec.LookPath("gpg"); err == nil {
		home := filepath.Join(dir, "gnupg")
		if err := os.Mkdir(home, 0o700); err != nil {
			return nil, err
		}
		env := []string{"GNUPGHOME=" + home}
		gpg := func(args ...string) ([]byte, error) {
			return run(env, "gpg", append([]string{"--batch", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		}
		for name, algo := range map[string]string{"gpg-rsa": "default", "gpg-cv25519": "future-default"} {
			addr := name + "@example.test"
			if _, err := gpg("--quick-gen-key", "GnuPG <"+addr+">", algo, "default", "never"); err != nil {
				return nil, err
			}
			p, err := gpg("--armor", "--export", "<"+addr+">")
			if err != nil {
				return nil, err
			}
			sec, err := gpg("--armor", "--export-secret-keys", "<"+addr+">")
			if err != nil {
				return nil, err
			}
			pub[name+".asc"] = p
			ts.byID[name] = &recipient{name: name, addr: addr, secret: sec, decrypt: func(msg []byte) ([]byte, error) {
				return withFile(dir, msg, func(path string) ([]byte, error) {
					return gpg("--decrypt", "--output", "-", path)
				})
			}}
		}
	}

	// Sequoia: its default, Cv25519.
	if _, err := exec.LookPath("sq"); err == nil {
		secret := filepath.Join(dir, "sq.key")
		addr := "sq@example.test"
		if _, err := run(nil, "sq", "key", "generate", "--userid", "<"+addr+">", "--export", secret); err != nil {
			return nil, err
		}
		p, err := run(nil, "sq", "key", "extract-cert", secret)
		if err != nil {
			return nil, err
		}
		sec, err := os.ReadFile(secret)
		if err != nil {
			return nil, err
		}
		pub["sq.pgp"] = p
		ts.byID["sq"] = &recipient{name: "sq", addr: addr, secret: sec, decrypt: func(msg []byte) ([]byte, error) {
			return withFile(dir, msg, func(path string) ([]byte, error) {
				return run(nil, "sq", "decrypt", "--recipient-key", secret, path)
			})
		}}
	}

	// RNP (Thunderbird's OpenPGP engine): its default (RSA 2048) and, in
	// expert mode, EdDSA + X25519 (choice 22), as Thunderbird makes them.
	if _, err := exec.LookPath("rnpkeys"); err == nil {
		for name, expert := range map[string]string{"rnp-rsa": "", "rnp-25519": "22\n"} {
			home := filepath.Join(dir, name)
			if err := os.Mkdir(home, 0o700); err != nil {
				return nil, err
			}
			addr := name + "@example.test"
			args := []string{"--homedir", home, "--generate-key", "--userid", addr, "--password", ""}
			cmd := exec.Command("rnpkeys", args...)
			if expert != "" {
				cmd = exec.Command("rnpkeys", append(args, "--expert")...)
				cmd.Stdin = strings.NewReader(expert)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("rnpkeys %v: %w: %s", args, err, out)
			}
			p, err := run(nil, "rnpkeys", "--homedir", home, "--export-key", addr)
			if err != nil {
				return nil, err
			}
			sec, err := run(nil, "rnpkeys", "--homedir", home, "--export-key", "--secret", addr)
			if err != nil {
				return nil, err
			}
			pub[name+".asc"] = p
			ts.byID[name] = &recipient{name: name, addr: addr, secret: sec, decrypt: func(msg []byte) ([]byte, error) {
				return withFile(dir, msg, func(path string) ([]byte, error) {
					return run(nil, "rnp", "--homedir", home, "--notty", "--decrypt", path, "--output", "-")
				})
			}}
		}
	}
	if err := ts.loadKeys(pub); err != nil {
		return nil, err
	}
	return ts, nil
})

// toolRecipient returns the recipient whose key the named tool made; the
// test skips without the tool (fails with CI=true).
func toolRecipient(t testing.TB, name string) *recipient {
	t.Helper()
	tool := map[string]string{"gpg": "gpg", "sq": "sq", "rnp": "rnp"}[strings.SplitN(name, "-", 2)[0]]
	smimetest.Require(t, tool)
	if tool == "gpg" {
		smimetest.Require(t, "gpg-agent")
	}
	if tool == "rnp" {
		smimetest.Require(t, "rnpkeys")
	}
	ts, err := tools()
	if err != nil {
		t.Fatalf("making keys: %v", err)
	}
	r := ts.byID[name]
	if r == nil {
		t.Fatalf("no key %s", name)
	}
	return r
}

// goDecrypt decrypts an armored message with go-crypto and r's secret key:
// the in-process second opinion. It returns the literal data and its packet.
func goDecrypt(msg []byte, rs ...*recipient) ([]byte, *packet.LiteralData, error) {
	var ring openpgp.EntityList
	for _, r := range rs {
		el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(r.secret))
		if err != nil {
			return nil, nil, err
		}
		ring = append(ring, el...)
	}
	block, err := armor.Decode(bytes.NewReader(msg))
	if err != nil {
		return nil, nil, err
	}
	md, err := openpgp.ReadMessage(block.Body, ring, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	if !md.IsEncrypted || md.LiteralData == nil {
		return nil, nil, fmt.Errorf("not an encrypted literal message: %+v", md)
	}
	body, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		// The MDC is checked at the end of the body.
		return nil, nil, err
	}
	return body, md.LiteralData, nil
}

// sealMessage reads raw as the daemon does and seals it; it returns the
// seal, the header and the ciphertext.
func sealMessage(t testing.TB, raw []byte, opts pgpmime.Options) (*pgpmime.Seal, *smime.Header, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := smime.ReadHeader(br, maxHeader)
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	var ct bytes.Buffer
	s, err := pgpmime.NewSeal(&ct, h, opts)
	if err != nil {
		t.Fatalf("NewSeal: %v", err)
	}
	t.Cleanup(s.Destroy)
	// Odd-sized writes: chunks straddle them.
	buf := make([]byte, 1000)
	for {
		n, err := br.Read(buf)
		if _, werr := s.Write(buf[:n]); werr != nil {
			t.Fatalf("Write: %v", werr)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if int64(ct.Len()) != s.Size() {
		t.Fatalf("Size() = %d, wrote %d", s.Size(), ct.Len())
	}
	return s, h, ct.Bytes()
}

func headerOf(t testing.TB, raw []byte) *smime.Header {
	t.Helper()
	h, err := smime.ReadHeader(bufio.NewReader(bytes.NewReader(raw)), maxHeader)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func copyFor(t testing.TB, s *pgpmime.Seal, ct []byte, keys ...*packet.PublicKey) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := s.WriteCopy(&out, bytes.NewReader(ct), keys); err != nil {
		t.Fatalf("WriteCopy: %v", err)
	}
	return out.Bytes()
}

// pgpMIME is a copy taken apart by the standard library's MIME reader.
type pgpMIME struct {
	header  mail.Header
	control []byte // the first part's body
	armored []byte // the second part's body: the armored message
}

// parsePGPMIME checks the RFC 3156 §4 structure of msg and returns its
// parts.
func parsePGPMIME(t testing.TB, msg []byte) *pgpMIME {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("reading the copy: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("Content-Type %q (%v): want multipart/encrypted with protocol application/pgp-encrypted", m.Header.Get("Content-Type"), err)
	}
	if v := m.Header.Get("MIME-Version"); v != "1.0" {
		t.Errorf("MIME-Version %q", v)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	out := &pgpMIME{header: m.Header}
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			if i != 2 {
				t.Fatalf("%d body parts, want 2", i)
			}
			break
		}
		if err != nil {
			t.Fatalf("body part %d: %v", i+1, err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("body part %d: %v", i+1, err)
		}
		switch i {
		case 0:
			if ct := p.Header.Get("Content-Type"); ct != "application/pgp-encrypted" {
				t.Errorf("part 1 Content-Type %q", ct)
			}
			out.control = body
		case 1:
			if mt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type")); mt != "application/octet-stream" {
				t.Errorf("part 2 Content-Type %q", p.Header.Get("Content-Type"))
			}
			out.armored = body
		default:
			t.Fatalf("more than two body parts")
		}
	}
	if !bytes.Equal(bytes.TrimSpace(out.control), []byte("Version: 1")) {
		t.Errorf("control part %q, want Version: 1", out.control)
	}
	return out
}

// packetsOf returns the key IDs of the PKESKs of an armored message and the
// bytes of its encrypted data packet (everything after the PKESKs).
func packetsOf(t testing.TB, armored []byte) (keyIDs []uint64, data []byte) {
	t.Helper()
	block, err := armor.Decode(bytes.NewReader(armored))
	if err != nil {
		t.Fatalf("armor: %v", err)
	}
	if block.Type != "PGP MESSAGE" {
		t.Fatalf("armor type %q", block.Type)
	}
	raw, err := io.ReadAll(block.Body)
	if err != nil {
		t.Fatalf("armor: %v", err)
	}
	r := bytes.NewReader(raw)
	for {
		rest := r.Len()
		p, err := packet.Read(r)
		if err != nil {
			t.Fatalf("packet: %v", err)
		}
		ek, ok := p.(*packet.EncryptedKey)
		if !ok {
			return keyIDs, raw[len(raw)-rest:]
		}
		keyIDs = append(keyIDs, ek.KeyId)
	}
}

// diffAt describes where two byte strings part, for messages that would
// otherwise print megabytes.
func diffAt(got, want []byte) string {
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	lo := max(0, i-40)
	return fmt.Sprintf("got %d bytes, want %d, first difference at byte %d:\n got: %q\nwant: %q",
		len(got), len(want), i, got[lo:min(len(got), i+40)], want[lo:min(len(want), i+40)])
}
