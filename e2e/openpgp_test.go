package e2e

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/smimefilter/smimefilter/internal/mailstacktest"
	"github.com/smimefilter/smimefilter/internal/pgptest"
)

// TestOpenPGPDelivery sends one message through Postfix (the transport
// snippet) to three recipients whose only keys are OpenPGP keys, each made
// by the tool that then decrypts the copy Dovecot stored: GnuPG, Sequoia,
// and RNP (Thunderbird's engine, with the key type Thunderbird makes), and
// to a fourth with an S/MIME certificate. All four are delivered in the one
// attempt; each PGP/MIME copy carries one key packet, for its own key, and
// decrypts to exactly the entity sent.
func TestOpenPGPDelivery(t *testing.T) {
	t.Parallel()
	pgptest.Require(t, "gpg", "gpg-agent", "sq", "rnp", "rnpkeys")
	users := pgpUsers
	ks, err := openPGPUsers()
	if err != nil {
		t.Fatal(err)
	}
	gk, sk, rk := ks.gpg, ks.sq, ks.rnp
	keys := map[string]*pgptest.Key{users[0]: gk, users[1]: sk, users[2]: rk}
	st := newStack(t, setup{users: users, certs: users[3:], pgpKeys: map[string][]byte{
		// As each exports them: GnuPG binary, Sequoia and RNP armored.
		users[0]: gk.Binary, users[1]: sk.Armored, users[2]: rk.Armored,
	}})
	raw, inner := testMessage(users[0], "openpgp", 64<<10)
	st.send(users, raw)
	st.postfix.WaitCount(defaultLongTimeout, func(c mailstacktest.Counts) bool { return c.Sent >= len(users) }, users...)
	if c := st.postfix.Count(users...); c != (mailstacktest.Counts{Sent: len(users)}) {
		t.Errorf("Postfix: %v, want sent=%d, nothing deferred", c, len(users))
	}
	for addr, k := range keys {
		msgs := st.waitMessages(addr, 1, defaultStatusTimeout)
		if len(msgs) != 1 {
			t.Fatalf("%s: %d messages", addr, len(msgs))
		}
		if got := header(msgs[0], "Content-Type"); !bytes.Contains([]byte(got), []byte(`multipart/encrypted`)) {
			t.Errorf("%s: Content-Type %q, want PGP/MIME", addr, got)
		}
		plain, err := k.Decrypt(msgs[0])
		if err != nil {
			t.Errorf("%s: %s cannot decrypt its copy: %v", addr, k.Tool, err)
			continue
		}
		if !bytes.Equal(plain, inner) {
			t.Errorf("%s: %s decrypted %d bytes, want the %d-byte entity sent", addr, k.Tool, len(plain), len(inner))
		}
		pk := pgptest.KeyPackets(t, msgs[0])
		if want := fmt.Sprintf("%016x", k.EncryptionKey(t).KeyId); len(pk) != 1 || pk[0].KeyID != want {
			t.Errorf("%s: key packets %+v, want one, for %s", addr, pk, want)
		}
	}
	if plain := decrypt(t, st.certs[users[3]], st.waitMessages(users[3], 1, defaultStatusTimeout)[0]); !bytes.Equal(plain, inner) {
		t.Errorf("%s: the S/MIME copy differs from the entity sent", users[3])
	}
}

var pgpUsers = []string{"gnupg@example.org", "sequoia@example.org", "rnp@example.org", "smime@example.org"}

// openPGPUsers makes the first three users' keys, once per test binary
// (go test -count reruns the test, not the key generation).
var openPGPUsers = sync.OnceValues(func() (*pgpKeys, error) {
	var ks pgpKeys
	g, err := pgptest.NewGnuPG("e2e-gnupg")
	if err != nil {
		return nil, err
	}
	if _, err := g.Run("--quick-gen-key", "GnuPG user <"+pgpUsers[0]+">", "default", "default", "never"); err != nil {
		return nil, err
	}
	if ks.gpg, err = g.Export("e2e-gnupg", pgpUsers[0]); err != nil {
		return nil, err
	}
	if ks.sq, err = pgptest.NewSqKey("e2e-sq", "Sequoia user <"+pgpUsers[1]+">"); err != nil {
		return nil, err
	}
	if ks.rnp, err = pgptest.NewRNPKey("e2e-rnp", pgpUsers[2], "22"); err != nil {
		return nil, err
	}
	return &ks, nil
})

type pgpKeys struct{ gpg, sq, rnp *pgptest.Key }
