package pgpmime_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/certs"
	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
)

const maxHeader = 1 << 20

func TestMain(m *testing.M) {
	code := m.Run()
	pgptest.Cleanup()
	os.Exit(code)
}

// recipient is one key pair a tool made (pgptest's standard keys), ready to
// encrypt to through the certs store, as the daemon finds it, and to
// decrypt with that tool (Decrypt) or go-crypto (pgptest.DecryptGo).
type recipient struct {
	*pgptest.Key
	key *certs.Key
}

// keys returns what a copy for r is encrypted to.
func (r *recipient) keys(t testing.TB) []*packet.PublicKey {
	t.Helper()
	ks := r.key.EncryptionKeys(time.Now())
	if len(ks) != 1 {
		t.Fatalf("%s: %d encryption keys", r.Name, len(ks))
	}
	return ks
}

// storeKeys holds each standard key as the certificate store loaded it,
// once per test binary.
var storeKeys sync.Map // name -> func() (*certs.Key, error)

// toolRecipient returns the recipient whose key the named tool made (a
// pgptest standard key name); the test skips without the tool (fails with
// CI=true).
func toolRecipient(t testing.TB, name string) *recipient {
	t.Helper()
	k := pgptest.ToolKey(t, name)
	f, _ := storeKeys.LoadOrStore(name, sync.OnceValues(func() (*certs.Key, error) { return loadKey(k) }))
	ck, err := f.(func() (*certs.Key, error))()
	if err != nil {
		t.Fatalf("loading %s: %v", name, err)
	}
	return &recipient{Key: k, key: ck}
}

// loadKey puts the public key into a certificate directory of its own and
// loads it: the recipients' keys come from certs as they do in the daemon.
func loadKey(k *pgptest.Key) (*certs.Key, error) {
	scratch, err := pgptest.Dir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(scratch, "certs-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, k.Name+".asc"), k.Armored, 0o600); err != nil {
		return nil, err
	}
	st, err := certs.Load(certs.Options{Dir: dir})
	if err != nil {
		return nil, err
	}
	if sk := st.Skipped(); len(sk) > 0 {
		return nil, fmt.Errorf("keys skipped: %v", sk)
	}
	ks := st.LookupKeys(k.Addr)
	if len(ks) != 1 {
		return nil, fmt.Errorf("%s: %d keys for %s", k.Name, len(ks), k.Addr)
	}
	return ks[0], nil
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
