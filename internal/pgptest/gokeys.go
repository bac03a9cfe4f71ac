package pgptest

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// A GoKind is the type of key GoKey makes.
type GoKind int

const (
	// Curve25519 is an Ed25519 primary key with an X25519 (ECDH)
	// encryption subkey (RFC 9580 §9.1, the legacy v4 encoding GnuPG 2.2
	// reads): milliseconds to make.
	Curve25519 GoKind = iota
	// RSA2048 is an RSA 2048 primary key with an RSA 2048 encryption
	// subkey: up to a second to make under -race.
	RSA2048
)

func (k GoKind) String() string {
	switch k {
	case Curve25519:
		return "curve25519"
	case RSA2048:
		return "rsa2048"
	}
	return fmt.Sprintf("GoKind(%d)", int(k))
}

func (k GoKind) config() *packet.Config {
	if k == RSA2048 {
		return &packet.Config{Algorithm: packet.PubKeyAlgoRSA, RSABits: 2048}
	}
	return &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519}
}

// goKeys holds one key per name and kind for the whole test binary. Tests
// asking for the same name share the key; different names get different
// keys, so "the other key cannot decrypt" stays a meaningful test.
var goKeys sync.Map // string -> func() (*Key, error)

// GoKey returns a key made in process by go-crypto's openpgp.NewEntity for
// name@example.test, made once per name and kind: for unit tests that need
// no external tool. It decrypts with go-crypto (DecryptGo).
func GoKey(t testing.TB, name string, kind GoKind) *Key {
	t.Helper()
	f, _ := goKeys.LoadOrStore(name+"/"+kind.String(), sync.OnceValues(func() (*Key, error) { return newGoKey(name, kind) }))
	k, err := f.(func() (*Key, error))()
	if err != nil {
		t.Fatalf("making Go key %s (%v): %v", name, kind, err)
	}
	return k
}

func newGoKey(name string, kind GoKind) (*Key, error) {
	addr := name + "@example.test"
	e, err := openpgp.NewEntity(name, "", addr, kind.config())
	if err != nil {
		return nil, fmt.Errorf("pgptest: NewEntity: %w", err)
	}
	k := &Key{Name: name, Tool: "go", Addr: addr, FPR: fmt.Sprintf("%x", e.PrimaryKey.Fingerprint)}
	for _, sk := range e.Subkeys {
		k.Subkeys = append(k.Subkeys, fmt.Sprintf("%x", sk.PublicKey.Fingerprint))
	}
	var bin bytes.Buffer
	if err := e.Serialize(&bin); err != nil {
		return nil, fmt.Errorf("pgptest: serializing the public key: %w", err)
	}
	k.Binary = bin.Bytes()
	if k.Armored, err = armored(openpgp.PublicKeyType, k.Binary); err != nil {
		return nil, err
	}
	// NewEntity self-signed the User ID and the subkey binding already.
	var sec bytes.Buffer
	if err := e.SerializePrivateWithoutSigning(&sec, nil); err != nil {
		return nil, fmt.Errorf("pgptest: serializing the secret key: %w", err)
	}
	if k.Secret, err = armored(openpgp.PrivateKeyType, sec.Bytes()); err != nil {
		return nil, err
	}
	k.decrypt = func(msg []byte) ([]byte, error) {
		body, _, err := DecryptGo(msg, k)
		return body, err
	}
	return k, nil
}

func armored(blockType string, data []byte) ([]byte, error) {
	var b bytes.Buffer
	w, err := armor.Encode(&b, blockType, nil)
	if err != nil {
		return nil, fmt.Errorf("pgptest: armor: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return nil, fmt.Errorf("pgptest: armor: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("pgptest: armor: %w", err)
	}
	return b.Bytes(), nil
}
