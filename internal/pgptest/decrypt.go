package pgptest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

const armorBegin = "-----BEGIN PGP MESSAGE-----" // RFC 9580 §6.2

// Armored returns the armored OpenPGP message in msg: msg itself when it
// starts with the armor header line, otherwise the second body part of the
// RFC 3156 §4 multipart/encrypted message msg.
func Armored(msg []byte) ([]byte, error) {
	if bytes.HasPrefix(bytes.TrimLeft(msg, " \t\r\n"), []byte(armorBegin)) {
		return msg, nil
	}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return nil, fmt.Errorf("pgptest: neither armor nor a message: %w", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		return nil, fmt.Errorf("pgptest: Content-Type %q (%v), want multipart/encrypted for application/pgp-encrypted", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err != nil {
			return nil, fmt.Errorf("pgptest: body part %d: %w", i+1, err)
		}
		if i == 1 {
			body, err := io.ReadAll(p)
			if err != nil {
				return nil, fmt.Errorf("pgptest: body part 2: %w", err)
			}
			return body, nil
		}
	}
}

// Keyring is what DecryptGo decrypts with: a *Key.
type Keyring interface {
	Entities() (openpgp.EntityList, error)
}

// DecryptGo decrypts msg (armored, or PGP/MIME) with go-crypto and the
// secret keys of keys: the in-process second opinion. It returns the
// literal data, read to its end so that the MDC (RFC 9580 §5.13.1) has been
// checked, and the literal packet.
func DecryptGo(msg []byte, keys ...Keyring) ([]byte, *packet.LiteralData, error) {
	var ring openpgp.EntityList
	for _, k := range keys {
		el, err := k.Entities()
		if err != nil {
			return nil, nil, err
		}
		ring = append(ring, el...)
	}
	armoredMsg, err := Armored(msg)
	if err != nil {
		return nil, nil, err
	}
	block, err := armor.Decode(bytes.NewReader(armoredMsg))
	if err != nil {
		return nil, nil, fmt.Errorf("pgptest: armor: %w", err)
	}
	md, err := openpgp.ReadMessage(block.Body, ring, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("pgptest: go-crypto: %w", err)
	}
	if !md.IsEncrypted || md.LiteralData == nil {
		return nil, nil, fmt.Errorf("pgptest: not an encrypted literal message: %+v", md)
	}
	body, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		// The MDC is checked at the end of the body.
		return nil, nil, fmt.Errorf("pgptest: go-crypto: %w", err)
	}
	return body, md.LiteralData, nil
}

// A PKESK is one Public-Key Encrypted Session Key packet (RFC 9580 §5.1) as
// gpg --list-packets prints it.
type PKESK struct {
	Version int
	Algo    packet.PublicKeyAlgorithm
	KeyID   string // 16 hex digits, lower case; all zero for a wildcard
}

// pubkeyEnc is gpg --list-packets' line for each PKESK.
var pubkeyEnc = regexp.MustCompile(`(?m)^:pubkey enc packet: version (\d+), algo (\d+), keyid ([0-9A-F]{16})`)

// listHome is an empty GnuPG home for listing packets: gpg needs one, and
// --list-only keeps it from looking for secret keys.
var listHome = sync.OnceValues(func() (*GnuPG, error) { return NewGnuPG("gnupg-list") })

// KeyPackets returns the key packets of msg (armored, or PGP/MIME) as GnuPG
// reads them (gpg --list-only --list-packets), in order. It needs gpg: the
// test is skipped without it (fails with CI=true), and fails when gpg
// cannot read msg.
func KeyPackets(t testing.TB, msg []byte) []PKESK {
	t.Helper()
	Require(t, "gpg")
	out, err := listPackets(msg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func listPackets(msg []byte) ([]PKESK, error) {
	armoredMsg, err := Armored(msg)
	if err != nil {
		return nil, err
	}
	g, err := listHome()
	if err != nil {
		return nil, err
	}
	out, err := withFile(armoredMsg, func(path string) ([]byte, error) {
		return g.Run("--list-only", "--list-packets", path)
	})
	if err != nil {
		return nil, err
	}
	var ps []PKESK
	for _, m := range pubkeyEnc.FindAllStringSubmatch(string(out), -1) {
		v, err1 := strconv.Atoi(m[1])
		a, err2 := strconv.Atoi(m[2])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("pgptest: gpg --list-packets: %w", err)
		}
		ps = append(ps, PKESK{Version: v, Algo: packet.PublicKeyAlgorithm(a), KeyID: strings.ToLower(m[3])})
	}
	return ps, nil
}
