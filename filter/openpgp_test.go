package filter

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// pgpUser is a recipient with an OpenPGP key made in Go (the interop with
// GnuPG, Sequoia and RNP is pgpmime's and the end-to-end tests' to show).
type pgpUser struct {
	addr   string
	entity *openpgp.Entity
	public []byte // armored transferable public key, as a client exports it
}

func newPGPUser(t testing.TB, addr string) *pgpUser {
	t.Helper()
	e, err := openpgp.NewEntity("", "", addr, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
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
	return &pgpUser{addr: addr, entity: e, public: b.Bytes()}
}

// keyDir writes S/MIME certificates and OpenPGP public keys side by side,
// as an administrator would.
func keyDir(t testing.TB, rs []*smimetest.Recipient, us []*pgpUser) string {
	t.Helper()
	dir := certDir(t, rs...)
	for i, u := range us {
		if err := os.WriteFile(filepath.Join(dir, "key"+string(rune('a'+i))+".asc"), u.public, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// pgpOpen decrypts a stored PGP/MIME copy for u and returns the literal
// data (the MIME entity) and the key IDs of its key packets.
func pgpOpen(t testing.TB, stored []byte, u *pgpUser) (entity []byte, keyIDs []uint64) {
	t.Helper()
	if !bytes.Contains(stored, []byte(`multipart/encrypted; protocol="application/pgp-encrypted"`)) {
		t.Fatalf("%s: not a PGP/MIME copy:\n%.300s", u.addr, stored)
	}
	start := bytes.Index(stored, []byte("-----BEGIN PGP MESSAGE-----"))
	end := bytes.Index(stored, []byte("-----END PGP MESSAGE-----"))
	if start < 0 || end < start {
		t.Fatalf("%s: no armored message in the copy", u.addr)
	}
	block, err := armor.Decode(bytes.NewReader(stored[start : end+len("-----END PGP MESSAGE-----")]))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(block.Body)
	if err != nil {
		t.Fatal(err)
	}
	pr := packet.NewReader(bytes.NewReader(raw))
	for {
		p, err := pr.Next()
		if err != nil {
			t.Fatalf("%s: reading packets: %v", u.addr, err)
		}
		ek, ok := p.(*packet.EncryptedKey)
		if !ok {
			break
		}
		keyIDs = append(keyIDs, ek.KeyId)
	}
	md, err := openpgp.ReadMessage(bytes.NewReader(raw), openpgp.EntityList{u.entity}, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v", u.addr, err)
	}
	entity, err = io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatalf("%s: %v (the MDC must verify)", u.addr, err)
	}
	return entity, keyIDs
}

// TestOpenPGPAndSMIMEInOneTransaction: recipients with certificates,
// recipients with OpenPGP keys, one with both and one with neither, in one
// transaction: each gets 250 and the format its keys call for, the
// message is encrypted once per format (every PGP/MIME copy carries the
// same encrypted data), each copy names only its own recipient, and the
// plaintext copy is decrypted back from a seal.
func TestOpenPGPAndSMIMEInOneTransaction(t *testing.T) {
	alice := smimetest.NewRecipient(t, "alice@example.org")
	carolCert := smimetest.NewRecipient(t, "carol@example.org")
	bob, dave := newPGPUser(t, "bob@example.org"), newPGPUser(t, "dave@example.org")
	carolKey := newPGPUser(t, "carol@example.org")
	dir := keyDir(t, []*smimetest.Recipient{alice, carolCert}, []*pgpUser{bob, dave, carolKey})
	body := strings.Repeat("one message, two formats, each encrypted once\r\n", 3000)
	all := []string{"alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org", "plain@example.org"}

	for _, prefer := range []Prefer{"", PreferOpenPGP} {
		t.Run("prefer="+string(prefer), func(t *testing.T) {
			f := startFakeLMTP(t)
			rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, dir), Prefer: prefer, SpoolMemory: 4096, SpoolDir: t.TempDir()}})
			got := send(t, lmtpClient(t, rf.path), "s@example.net", all, msg("formats", body))
			for _, a := range all {
				if got[a].code != 250 {
					t.Errorf("%s: got %v, want 250", a, got[a])
				}
			}
			plain, err := smimetest.DecryptMessage(t, copyFor(t, f, "alice@example.org"), alice)
			if err != nil || !bytes.HasSuffix(plain, []byte(body)) {
				t.Errorf("alice (S/MIME): %v", err)
			}
			pgpCopies := []*pgpUser{bob, dave}
			if prefer == PreferOpenPGP {
				pgpCopies = append(pgpCopies, carolKey)
			} else if plain, err := smimetest.DecryptMessage(t, copyFor(t, f, "carol@example.org"), carolCert); err != nil || !bytes.HasSuffix(plain, []byte(body)) {
				t.Errorf("carol, who has both, by default gets S/MIME: %v", err)
			}
			var data []byte
			for _, u := range pgpCopies {
				stored := copyFor(t, f, u.addr)
				entity, ids := pgpOpen(t, stored, u)
				if !bytes.HasSuffix(entity, []byte(body)) || !bytes.HasPrefix(entity, []byte("Content-Type: text/plain")) {
					t.Errorf("%s: decrypted entity %.100q...", u.addr, entity)
				}
				if bytes.Contains(entity, []byte("Subject:")) {
					t.Errorf("%s: an RFC 5322 field inside the entity", u.addr)
				}
				sub, _ := u.entity.EncryptionKey(u.entity.PrimaryKey.CreationTime)
				if len(ids) != 1 || ids[0] != sub.PublicKey.KeyId {
					t.Errorf("%s: key packets for %x, want one, for its own key %x", u.addr, ids, sub.PublicKey.KeyId)
				}
				// The encrypted data, after the key packet, is the same in
				// every copy: the message was encrypted once.
				i := bytes.Index(stored, []byte("-----BEGIN PGP MESSAGE-----"))
				d := stored[i+600:]
				if data != nil && !bytes.Equal(d[:1000], data[:1000]) {
					t.Errorf("%s: encrypted data differs from the first copy's", u.addr)
				}
				data = d
			}
			if p := copyFor(t, f, "plain@example.org"); !bytes.HasSuffix(p, []byte(body)) || !bytes.HasPrefix(p, []byte(PlaintextHeader+": plaintext")) {
				t.Errorf("plaintext copy: %.200q", p)
			}
			if logs := rf.logs.String(); !strings.Contains(logs, "rcpt=bob@example.org rewritten=bob@example.org action=encrypt-openpgp code=250") {
				t.Errorf("no log line for bob's PGP/MIME copy:\n%s", logs)
			}
		})
	}
}

// TestOpenPGPOnly: with no S/MIME recipient the message is encrypted once,
// as OpenPGP only, and the plaintext and re-delivered copies are decrypted
// back from that seal; a single recipient's copy streams while the message
// arrives.
func TestOpenPGPOnly(t *testing.T) {
	bob := newPGPUser(t, "bob@example.org")
	dir := keyDir(t, nil, []*pgpUser{bob})
	body := strings.Repeat("no certificate here, only an OpenPGP key\r\n", 20000)
	for _, rcpts := range [][]string{{"bob@example.org"}, {"bob@example.org", "plain@example.org"}} {
		t.Run(strings.Join(rcpts, ","), func(t *testing.T) {
			f := startFakeLMTP(t)
			rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, dir), SpoolMemory: 4096, SpoolDir: t.TempDir()}})
			got := send(t, lmtpClient(t, rf.path), "s@example.net", rcpts, msg("pgp only", body))
			for _, a := range rcpts {
				if got[a].code != 250 {
					t.Errorf("%s: got %v, want 250", a, got[a])
				}
			}
			if entity, _ := pgpOpen(t, copyFor(t, f, "bob@example.org"), bob); !bytes.HasSuffix(entity, []byte(body)) {
				t.Errorf("bob: the decrypted entity lost its body")
			}
			if len(rcpts) > 1 {
				if p := copyFor(t, f, "plain@example.org"); !bytes.HasSuffix(p, []byte(body)) {
					t.Errorf("the plaintext copy made from the OpenPGP seal lost its body")
				}
			}
		})
	}
}

// TestOpenPGPPassThrough: a PGP/MIME message that is encrypted as a whole
// (here, a copy the filter made) is stored as it came, for a recipient with
// an OpenPGP key, with a certificate, or with neither; one that only
// claims to be is encrypted.
func TestOpenPGPPassThrough(t *testing.T) {
	bob := newPGPUser(t, "bob@example.org")
	alice := smimetest.NewRecipient(t, "alice@example.org")
	dir := keyDir(t, []*smimetest.Recipient{alice}, []*pgpUser{bob})
	f := startFakeLMTP(t)
	rf := startFilter(t, f.path, filterOpts{cfg: Config{Certs: holder(t, dir)}})
	cl := lmtpClient(t, rf.path)
	if got := send(t, cl, "s@example.net", []string{"bob@example.org"}, msg("first", "secret\r\n")); got["bob@example.org"].code != 250 {
		t.Fatal(got)
	}
	encrypted := copyFor(t, f, "bob@example.org")
	all := []string{"bob@example.org", "alice@example.org", "plain@example.org"}
	f2 := startFakeLMTP(t)
	rf2 := startFilter(t, f2.path, filterOpts{cfg: Config{Certs: holder(t, dir)}})
	got := send(t, lmtpClient(t, rf2.path), "s@example.net", all, encrypted)
	for _, a := range all {
		if got[a].code != 250 {
			t.Errorf("%s: got %v", a, got[a])
		}
		if c := copyFor(t, f2, a); !bytes.Equal(c, encrypted) {
			t.Errorf("%s: an encrypted message was changed on the way:\n%.300s", a, c)
		}
	}
	// The same header with a body that is not an OpenPGP message.
	i := bytes.Index(encrypted, []byte("-----BEGIN PGP MESSAGE-----"))
	fake := append(append([]byte{}, encrypted[:i]...), "-----BEGIN PGP MESSAGE-----\r\n\r\nplain text, no packets\r\n-----END PGP MESSAGE-----\r\n"...)
	f3 := startFakeLMTP(t)
	rf3 := startFilter(t, f3.path, filterOpts{cfg: Config{Certs: holder(t, dir)}})
	if got := send(t, lmtpClient(t, rf3.path), "s@example.net", []string{"bob@example.org"}, fake); got["bob@example.org"].code != 250 {
		t.Fatal(got)
	}
	if entity, _ := pgpOpen(t, copyFor(t, f3, "bob@example.org"), bob); !bytes.Contains(entity, []byte("plain text, no packets")) {
		t.Errorf("a message that only claims to be encrypted was not encrypted")
	}
}
