package certs

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Sentinel errors of OpenPGP keys, beside the certificate ones (errors.go).
// A key also reports ErrParse, ErrPrivateKey, ErrDuplicate, ErrExpired,
// ErrNotYetValid and ErrNoAddress in the same sense as a certificate.
var (
	// ErrNoEncryptionKey: no primary key or subkey of the OpenPGP key can
	// be encrypted to now. The error says why (none is made for
	// encryption, or they expired or were revoked).
	ErrNoEncryptionKey = errors.New("no usable OpenPGP encryption key")
	// ErrRevoked: the OpenPGP key, or the subkey named, was revoked by its
	// owner.
	ErrRevoked = errors.New("revoked")
	// ErrKeyVersion: an OpenPGP key of a version other than 4.
	ErrKeyVersion = errors.New("unsupported OpenPGP key version")
	// ErrNotKey: OpenPGP armor of another kind than a key (a message, a
	// signature) in the directory; it is ignored.
	ErrNotKey = errors.New("not an OpenPGP key")
)

// Key is an OpenPGP transferable public key (RFC 9580 §10.1) from the
// certificate directory that can be encrypted to, now or later.
//
// Files are told apart by their content, not their names: ASCII armor
// "-----BEGIN PGP PUBLIC KEY BLOCK-----" (RFC 9580 §6.2), or a binary packet
// stream whose first packet is a public key (RFC 9580 §5.5.1.1). Both may
// hold several keys, and an armored file several blocks, as "gpg --export",
// "sq key extract-cert" and rnpkeys write them. Every signature the key
// relies on (User ID self-signatures, subkey binding signatures,
// revocations) is verified when the file is read (go-crypto's ReadEntity);
// a key with a signature that does not verify is refused whole.
//
// A key belongs to the addresses of its valid User IDs: those with a
// self-signature that is neither revoked nor expired, whose text is a
// mailbox ("Name <local@domain>", "<local@domain>" or "local@domain").
type Key struct {
	Entity *openpgp.Entity
	// Fingerprint is the primary key's fingerprint (RFC 9580 §5.5.4),
	// lowercase hex: what logs print to name a key, as "gpg --list-keys"
	// prints it.
	Fingerprint string
	// File is the path of the file it came from.
	File string
	// Addresses are the mailboxes of its valid User IDs, normalized as
	// certificates' are, sorted; for an enrolled key, only the address it
	// was enrolled for.
	Addresses []string
	// Source is SourceDirectory or SourceEnrollment, as for a Cert.
	Source string

	// validUntil is when the last encryption key stops being usable (see
	// ValidUntil); zero when none expires.
	validUntil time.Time
}

// UsableAt reports whether the key has an encryption key usable at t.
func (k *Key) UsableAt(t time.Time) bool { return len(k.EncryptionKeys(t)) > 0 }

// ValidUntil is when the key stops being usable as it stands: the latest
// expiry of its encryption subkeys (or primary key), bounded by the primary
// key's own expiry. The zero Time means it does not expire. It says nothing
// of revocations, which take effect at once: a revoked key is not loaded.
func (k *Key) ValidUntil() time.Time { return k.validUntil }

// EncryptionKeys returns the public keys to encrypt to at t: the newest
// encryption subkey valid at t, or the primary key when no subkey can be
// used and it is itself made for encryption; nil when the key is unusable
// at t. That is what GnuPG does (and go-crypto's Entity.EncryptionKey): one
// key, the newest, so that a subkey rolled over is no longer used once its
// successor is in place.
//
// Valid means: version 4 with a public-key algorithm that can encrypt, key
// flags for communications or storage encryption (RFC 9580 §5.2.3.29;
// without a key flags subpacket, the algorithm decides, as in GnuPG),
// created no later than t and not expired at t by its key expiration time
// (§5.2.3.13) or its binding signature's expiration (§5.2.3.18), not
// revoked; and the primary key itself neither expired nor revoked, with a
// valid User ID.
func (k *Key) EncryptionKeys(t time.Time) []*packet.PublicKey {
	if pk := encryptionKey(k.Entity, t); pk != nil {
		return []*packet.PublicKey{pk}
	}
	return nil
}

// primaryUsable reports whether e's primary key is valid at t, and returns
// its governing self-signature: the primary User ID's (RFC 9580 §5.2.3.27),
// which carries the key expiration time and key flags for a version 4 key.
func primaryUsable(e *openpgp.Entity, t time.Time) (*packet.Signature, bool) {
	sig, id := e.PrimarySelfSignature()
	if sig == nil || e.PrimaryKey.Version != 4 ||
		e.PrimaryKey.KeyExpired(sig, t) || sig.SigExpired(t) || e.Revoked(t) ||
		(id != nil && id.Revoked(t)) {
		return nil, false
	}
	return sig, true
}

// canEncrypt reports whether a key with this (binding or self-) signature is
// made for encryption.
func canEncrypt(pk *packet.PublicKey, sig *packet.Signature) bool {
	if !pk.PubKeyAlgo.CanEncrypt() || pk.Version != 4 {
		return false
	}
	if !sig.FlagsValid {
		// Keys from before key flags (RFC 4880 §5.2.3.21 made them
		// optional): GnuPG takes the algorithm's capabilities.
		return true
	}
	// Mail kept at rest is both communication and storage: GnuPG encrypts
	// to either flag, go-crypto's Entity.EncryptionKey only to the first.
	return sig.FlagEncryptCommunications || sig.FlagEncryptStorage
}

func encryptionKey(e *openpgp.Entity, t time.Time) *packet.PublicKey {
	self, ok := primaryUsable(e, t)
	if !ok {
		return nil
	}
	var best *openpgp.Subkey
	for i := range e.Subkeys {
		sk := &e.Subkeys[i]
		if !subkeyUsable(sk, t) {
			continue
		}
		// GnuPG takes the subkey created last; the binding signature
		// breaks ties (go-crypto looks only at the signature).
		if best == nil || sk.PublicKey.CreationTime.After(best.PublicKey.CreationTime) ||
			(sk.PublicKey.CreationTime.Equal(best.PublicKey.CreationTime) && sk.Sig.CreationTime.After(best.Sig.CreationTime)) {
			best = sk
		}
	}
	if best != nil {
		return best.PublicKey
	}
	if canEncrypt(e.PrimaryKey, self) {
		return e.PrimaryKey
	}
	return nil
}

func subkeyUsable(sk *openpgp.Subkey, t time.Time) bool {
	return sk.Sig != nil && canEncrypt(sk.PublicKey, sk.Sig) &&
		!sk.PublicKey.KeyExpired(sk.Sig, t) && !sk.Sig.SigExpired(t) && !sk.Revoked(t)
}

// keyExpiry is when a key with this signature expires: the earlier of its
// key expiration time and the signature's own; zero for never.
func keyExpiry(pk *packet.PublicKey, sig *packet.Signature) time.Time {
	var end time.Time
	if l := sig.KeyLifetimeSecs; l != nil && *l != 0 {
		end = pk.CreationTime.Add(time.Duration(*l) * time.Second)
	}
	if l := sig.SigLifetimeSecs; l != nil && *l != 0 {
		if s := sig.CreationTime.Add(time.Duration(*l) * time.Second); end.IsZero() || s.Before(end) {
			end = s
		}
	}
	return end
}

// laterEnd and earlierEnd compare expiries where zero means never.
func laterEnd(a, b time.Time) time.Time {
	if a.IsZero() || b.IsZero() {
		return time.Time{}
	}
	if b.After(a) {
		return b
	}
	return a
}

func earlierEnd(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case b.Before(a):
		return b
	}
	return a
}

// keyVerdict is checkKey's judgement, as verdict is check's.
type keyVerdict struct {
	keep       bool
	err        error
	addresses  []string
	validUntil time.Time
}

// checkKey judges an OpenPGP key at t. A key with no encryption key usable
// at t is kept when one becomes usable later (a key made on a machine whose
// clock is ahead, or a subkey dated ahead for a rollover), as certificates
// not valid yet are.
func checkKey(e *openpgp.Entity, t time.Time) keyVerdict {
	if v := e.PrimaryKey.Version; v != 4 {
		// SEIPD v1, which GnuPG 2.2 reads, goes with v3 PKESKs naming
		// v4 keys (RFC 9580 §5.1.1, §5.13.1); v6 keys are for v6 PKESKs
		// and SEIPD v2 (§5.1.2, §5.13.2), v5 ones for LibrePGP.
		return keyVerdict{err: fmt.Errorf("%w: version %d, want 4", ErrKeyVersion, v)}
	}
	var p problems
	addrs := keyAddresses(e, t)
	if len(addrs) == 0 {
		p = append(p, fmt.Errorf("%w: no valid User ID with an email address", ErrNoAddress))
	}
	usable := encryptionKey(e, t) != nil
	if !usable {
		if from := usableFrom(e, t); from.IsZero() {
			p = append(p, whyUnusable(e, t))
		} else if len(addrs) > 0 {
			p = append(p, notYetValid(from))
			usable = true // later
		}
	}
	v := keyVerdict{keep: usable && len(addrs) > 0, err: p.err()}
	if v.keep {
		v.addresses = addrs
		v.validUntil = keyValidUntil(e, t)
	}
	return v
}

// usableFrom is the first moment after t when e has an encryption key,
// or zero: keys and their signatures become valid at their creation times.
func usableFrom(e *openpgp.Entity, t time.Time) time.Time {
	var starts []time.Time
	add := func(ts ...time.Time) {
		for _, s := range ts {
			if s.After(t) {
				starts = append(starts, s)
			}
		}
	}
	if sig, _ := e.PrimarySelfSignature(); sig != nil {
		add(e.PrimaryKey.CreationTime, sig.CreationTime)
	}
	for _, sk := range e.Subkeys {
		if sk.Sig != nil {
			add(sk.PublicKey.CreationTime, sk.Sig.CreationTime)
		}
	}
	slices.SortFunc(starts, time.Time.Compare)
	for _, s := range starts {
		// Times are seconds in OpenPGP; the checks compare Unix seconds.
		if encryptionKey(e, s) != nil {
			return s
		}
	}
	return time.Time{}
}

// keyValidUntil is when e stops having an encryption key, as far as
// expiration times tell: the latest end among its encryption keys not
// expired at t, bounded by the primary key's end; zero for never.
func keyValidUntil(e *openpgp.Entity, t time.Time) time.Time {
	self, _ := e.PrimarySelfSignature()
	if self == nil {
		return time.Time{}
	}
	var end time.Time
	found := false
	consider := func(x time.Time) {
		if !x.IsZero() && x.Before(t) {
			return // expired already
		}
		if !found {
			end, found = x, true
			return
		}
		end = laterEnd(end, x)
	}
	for i := range e.Subkeys {
		sk := &e.Subkeys[i]
		if sk.Sig != nil && canEncrypt(sk.PublicKey, sk.Sig) && !sk.Revoked(t) {
			consider(keyExpiry(sk.PublicKey, sk.Sig))
		}
	}
	if canEncrypt(e.PrimaryKey, self) {
		// Used once no subkey is left.
		consider(time.Time{})
	}
	return earlierEnd(keyExpiry(e.PrimaryKey, self), end)
}

// whyUnusable explains why e has no encryption key at t, naming every
// reason, most fundamental first.
func whyUnusable(e *openpgp.Entity, t time.Time) error {
	fail := func(err error) error { return fmt.Errorf("%w: %w", ErrNoEncryptionKey, err) }
	if e.Revoked(t) {
		return fail(fmt.Errorf("primary key %w%s", ErrRevoked, revocationReason(e.Revocations)))
	}
	self, id := e.PrimarySelfSignature()
	if self == nil {
		return fail(errors.New("no valid self-signature"))
	}
	if id != nil && id.Revoked(t) {
		return fail(fmt.Errorf("every User ID %w", ErrRevoked))
	}
	if e.PrimaryKey.KeyExpired(self, t) || self.SigExpired(t) {
		return fail(fmt.Errorf("primary key %w %s", ErrExpired, keyExpiry(e.PrimaryKey, self).UTC().Format(time.RFC3339)))
	}
	var p problems
	n := 0
	for i := range e.Subkeys {
		sk := &e.Subkeys[i]
		if sk.Sig == nil || !canEncrypt(sk.PublicKey, sk.Sig) {
			continue
		}
		n++
		id := sk.PublicKey.KeyIdString()
		switch {
		case sk.Revoked(t):
			p = append(p, fmt.Errorf("encryption subkey %s %w%s", id, ErrRevoked, revocationReason(sk.Revocations)))
		case sk.PublicKey.KeyExpired(sk.Sig, t) || sk.Sig.SigExpired(t):
			p = append(p, fmt.Errorf("encryption subkey %s %w %s", id, ErrExpired, keyExpiry(sk.PublicKey, sk.Sig).UTC().Format(time.RFC3339)))
		}
	}
	if n == 0 {
		if unsupportedSubkeys(e) {
			return fail(fmt.Errorf("%w: encryption subkeys of another version or algorithm only", ErrKeyVersion))
		}
		return fail(errors.New("no key is made for encryption (signing or certification only)"))
	}
	return fail(p.err())
}

// unsupportedSubkeys reports subkeys flagged for encryption that canEncrypt
// still refuses.
func unsupportedSubkeys(e *openpgp.Entity) bool {
	for _, sk := range e.Subkeys {
		if sk.Sig != nil && sk.Sig.FlagsValid && (sk.Sig.FlagEncryptCommunications || sk.Sig.FlagEncryptStorage) {
			return true
		}
	}
	return false
}

func revocationReason(revs []*packet.Signature) string {
	for _, r := range revs {
		if r.RevocationReasonText != "" {
			return fmt.Sprintf(" (%q)", r.RevocationReasonText)
		}
	}
	return ""
}

// keyAddresses returns the normalized, sorted, distinct mailboxes of e's
// User IDs that are valid at t (or from their creation on, when that is
// later). go-crypto keeps only User IDs whose
// self-signatures (certifications or revocations) verify.
func keyAddresses(e *openpgp.Entity, t time.Time) []string {
	var out []string
	for _, id := range e.Identities {
		if id.SelfSignature == nil {
			continue // only revoked
		}
		// A self-signature made after t (a clock ahead of ours) counts
		// from its creation on, so that a key not valid yet keeps its
		// addresses.
		at := t
		if c := id.SelfSignature.CreationTime; c.After(at) {
			at = c
		}
		if id.Revoked(at) || id.SelfSignature.SigExpired(at) {
			continue
		}
		if a, ok := userIDAddress(id.UserId); ok {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// userIDAddress reads the mailbox of a User ID. RFC 9580 §5.11 only says by
// convention it is an RFC 2822 name-addr; GnuPG writes "Name <addr>",
// Sequoia often "<addr>", RNP the bare address.
func userIDAddress(uid *packet.UserId) (string, bool) {
	if uid == nil {
		return "", false
	}
	s := uid.Email
	if s == "" {
		a, err := mail.ParseAddress(uid.Id)
		if err != nil {
			return "", false
		}
		s = a.Address
	}
	return normalizeAddress(s)
}

// primaryUserID names a key in reports: its primary User ID's text.
func primaryUserID(e *openpgp.Entity) string {
	if id := e.PrimaryIdentity(); id != nil {
		return id.Name
	}
	return ""
}

// OpenPGP data in a file, by content.
var (
	pgpArmorBegin   = []byte("-----BEGIN PGP ")
	pgpArmorLine    = []byte("\n-----BEGIN PGP ")
	pgpArmorEnd     = []byte("-----END PGP ")
	pgpPublicBlock  = "PGP PUBLIC KEY BLOCK"
	pgpPrivateBlock = "PGP PRIVATE KEY BLOCK"
)

// Packet tags (RFC 9580 §5): what a transferable key starts with.
const (
	tagSecretKey = 5
	tagPublicKey = 6
)

// firstPacketTag returns the tag of the packet starting data (RFC 9580
// §4.2: new or legacy format), or -1 when data cannot start a packet. A DER
// certificate starts with 0x30, which has no packet tag bit.
func firstPacketTag(data []byte) int {
	if len(data) == 0 || data[0]&0x80 == 0 {
		return -1
	}
	if data[0]&0x40 != 0 {
		return int(data[0] & 0x3f)
	}
	return int(data[0]>>2) & 0x0f
}

// isOpenPGP reports whether a file of the directory holds OpenPGP data rather
// than X.509 certificates: armor at the start of a line, or a binary key.
func isOpenPGP(data []byte) bool {
	if bytes.HasPrefix(data, pgpArmorBegin) || bytes.Contains(data, pgpArmorLine) {
		return true
	}
	tag := firstPacketTag(data)
	return tag == tagPublicKey || tag == tagSecretKey
}

// pemBlocks counts the BEGIN lines of any PEM-like armor in data.
func pemBlocks(data []byte) int {
	n := 0
	for line := range bytes.Lines(data) {
		if bytes.HasPrefix(line, pemBegin) {
			n++
		}
	}
	return n
}

// parseKeyFile reads every OpenPGP key of a file that isOpenPGP. Like
// parseFile it never fails as a whole. No returned key aliases data, so the
// caller may zero it.
func parseKeyFile(name string, data []byte) (keys []*openpgp.Entity, skipped []Skipped) {
	skip := func(err error) { skipped = append(skipped, Skipped{File: name, Err: err}) }
	tag := firstPacketTag(data)
	if tag == tagSecretKey {
		skip(fmt.Errorf("binary OpenPGP file: %w: delete it from the directory, only public keys belong there", ErrPrivateKey))
		return nil, skipped
	}
	if tag == tagPublicKey {
		return readKeys(name, "binary OpenPGP file", bytes.NewReader(data))
	}

	// Text may surround the blocks, and a file may hold several (keys
	// exported one by one and concatenated): decode each BEGIN line.
	blocks := 0
	for off := 0; ; {
		i := bytes.Index(data[off:], pgpArmorBegin)
		if i < 0 {
			break
		}
		start := off + i
		off = start + len(pgpArmorBegin)
		if start > 0 && data[start-1] != '\n' {
			continue
		}
		blocks++
		where := fmt.Sprintf("armor block %d", blocks)
		end := bytes.Index(data[off:], pgpArmorEnd)
		if end < 0 {
			skip(fmt.Errorf("%s: %w: no END line", where, ErrParse))
			break
		}
		end += off
		off = end
		// The block's own lines only: armor.Decode must not run on into
		// the next block.
		if nl := bytes.IndexByte(data[end:], '\n'); nl >= 0 {
			end += nl + 1
		} else {
			end = len(data)
		}
		block, err := armor.Decode(bytes.NewReader(data[start:end]))
		if err != nil {
			skip(fmt.Errorf("%s: %w: %w", where, ErrParse, err))
			continue
		}
		switch block.Type {
		case pgpPublicBlock:
			ks, sk := readKeys(name, where, block.Body)
			keys = append(keys, ks...)
			skipped = append(skipped, sk...)
		case pgpPrivateBlock:
			skip(fmt.Errorf("%s (%s): %w: delete it from the directory, only public keys belong there", where, block.Type, ErrPrivateKey))
		default:
			skip(fmt.Errorf("%s (%s): %w", where, block.Type, ErrNotKey))
		}
	}
	if blocks == 0 {
		skip(fmt.Errorf("%w: no OpenPGP armor block", ErrParse))
	}
	if pemBlocks(data) > blocks {
		// parseFile is not run on a file with OpenPGP armor.
		skip(fmt.Errorf("%w: PEM blocks beside OpenPGP armor are not read; give certificates a file of their own", ErrNotKey))
	}
	return keys, skipped
}

// readKeys reads the transferable public keys of a packet stream. A key
// that cannot be read is reported and the next one is looked for, as
// go-crypto's ReadKeyRing does, but without passing over it in silence.
func readKeys(name, where string, r io.Reader) (keys []*openpgp.Entity, skipped []Skipped) {
	skip := func(err error) { skipped = append(skipped, Skipped{File: name, Err: err}) }
	packets := packet.NewReader(r)
	for n := 1; ; n++ {
		e, err := openpgp.ReadEntity(packets)
		if errors.Is(err, io.EOF) {
			if n == 1 {
				skip(fmt.Errorf("%s: %w: no OpenPGP key", where, ErrParse))
			}
			return keys, skipped
		}
		if err != nil {
			skip(fmt.Errorf("%s: OpenPGP key %d: %w: %w", where, n, ErrParse, err))
			if !recoverable(err) || !nextPrimaryKey(packets) {
				return keys, skipped
			}
			continue
		}
		if hasSecret(e) {
			// A secret key inside a public block: refuse it as a
			// private key file is refused.
			skip(fmt.Errorf("%s: OpenPGP key %d: %w", where, n, ErrPrivateKey))
			continue
		}
		keys = append(keys, e)
	}
}

// recoverable reports whether reading can go on with the next key after err:
// a key that is malformed or uses what go-crypto does not support, rather
// than a broken stream.
func recoverable(err error) bool {
	var se pgperrors.StructuralError
	var ue pgperrors.UnsupportedError
	return errors.As(err, &se) || errors.As(err, &ue)
}

// nextPrimaryKey skips to the next primary key packet, leaving it unread;
// false at the end of the stream or when it breaks.
func nextPrimaryKey(packets *packet.Reader) bool {
	for {
		p, err := packets.Next()
		if err != nil {
			var ue pgperrors.UnsupportedError
			if errors.As(err, &ue) {
				continue
			}
			return false
		}
		switch pk := p.(type) {
		case *packet.PublicKey:
			if !pk.IsSubkey {
				packets.Unread(p)
				return true
			}
		case *packet.PrivateKey:
			if !pk.IsSubkey {
				packets.Unread(p)
				return true
			}
		}
	}
}

func hasSecret(e *openpgp.Entity) bool {
	if e.PrivateKey != nil {
		return true
	}
	for _, sk := range e.Subkeys {
		if sk.PrivateKey != nil {
			return true
		}
	}
	return false
}

// keyCandidate is a parsed key with where it came from.
type keyCandidate struct {
	entity *openpgp.Entity
	file   string
	fp     string
	// bound is the address an enrolled key is for; "" for the keys of
	// Dir.
	bound string
}

func keyFingerprint(e *openpgp.Entity) string { return hex.EncodeToString(e.PrimaryKey.Fingerprint) }

// loadKeyFile adds the keys of one OpenPGP file to cands, reporting
// duplicates of keys seen before (seen: fingerprint → file).
// bound is the address of an enrolled key file, "" for Dir.
func (s *Store) loadKeyFile(path string, data []byte, cands []keyCandidate, seen map[string]string, bound string) []keyCandidate {
	parsed, skipped := parseKeyFile(path, data)
	s.skipped = append(s.skipped, skipped...)
	if bound != "" && len(parsed) > 1 {
		// The engine writes one key a file: more is not its file.
		s.skipped = append(s.skipped, Skipped{File: path,
			Err: fmt.Errorf("%w: %d OpenPGP keys in one enrolled file, want one", ErrEnrolled, len(parsed))})
		return cands
	}
	for _, e := range parsed {
		fp := keyFingerprint(e)
		key := fp
		if bound != "" {
			// One key may be enrolled for two of its addresses, in two
			// files: each binds one.
			key = fp + "\x00" + bound
		}
		if first, dup := seen[key]; dup {
			s.skipped = append(s.skipped, Skipped{File: path, Subject: primaryUserID(e),
				Err: fmt.Errorf("%w: same OpenPGP key as in %s (fingerprint %s)", ErrDuplicate, first, fp)})
			continue
		}
		seen[key] = path
		cands = append(cands, keyCandidate{entity: e, file: path, fp: fp, bound: bound})
	}
	return cands
}

// addKeys judges the candidates at t and indexes those kept.
func (s *Store) addKeys(cands []keyCandidate, t time.Time) {
	s.keyExact = make(map[string][]*Key)
	s.keyFolded = make(map[string][]*Key)
	for _, c := range cands {
		v := checkKey(c.entity, t)
		if v.err != nil {
			s.skipped = append(s.skipped, Skipped{File: c.file, Subject: primaryUserID(c.entity),
				Err: fmt.Errorf("openpgp %s: %w", c.fp, v.err), kept: v.keep})
		}
		if !v.keep {
			continue
		}
		addrs, source := v.addresses, SourceDirectory
		if c.bound != "" {
			// As for certificates: enrolling for alice@ must not make
			// the key serve bob@, which its other User IDs may name.
			source = SourceEnrollment
			if !slices.Contains(addrs, c.bound) {
				s.skipped = append(s.skipped, Skipped{File: c.file, Subject: primaryUserID(c.entity),
					Err: fmt.Errorf("openpgp %s: %w: enrolled for %s, which no valid User ID names", c.fp, ErrEnrolled, c.bound)})
				continue
			}
			addrs = []string{c.bound}
		}
		s.keys = append(s.keys, &Key{Entity: c.entity, Fingerprint: c.fp, File: c.file,
			Addresses: addrs, Source: source, validUntil: v.validUntil})
	}
	slices.SortFunc(s.keys, func(a, b *Key) int {
		return cmp.Or(strings.Compare(a.Addresses[0], b.Addresses[0]), keysByExpiry(a, b))
	})
	for _, k := range s.keys {
		for _, a := range k.Addresses {
			// One key once per bucket: a key both in Dir and enrolled
			// for one of its addresses is encrypted to once.
			if !slices.ContainsFunc(s.keyExact[a], k.sameKey) {
				s.keyExact[a] = append(s.keyExact[a], k)
			}
			f := foldKey(a)
			if !slices.ContainsFunc(s.keyFolded[f], k.sameKey) {
				s.keyFolded[f] = append(s.keyFolded[f], k)
			}
		}
	}
}

func (k *Key) sameKey(o *Key) bool { return k.Fingerprint == o.Fingerprint }

// keysByExpiry orders keys as certificates are ordered in a bucket: soonest
// expiry first (never last), then fingerprint.
func keysByExpiry(a, b *Key) int {
	return cmp.Or(compareEnd(a.validUntil, b.validUntil), strings.Compare(a.Fingerprint, b.Fingerprint))
}

func compareEnd(a, b time.Time) int {
	switch {
	case a.IsZero() && b.IsZero():
		return 0
	case a.IsZero():
		return 1
	case b.IsZero():
		return -1
	}
	return a.Compare(b)
}

// LookupKeys returns every OpenPGP key usable now for addr, or nil, matched
// as Lookup matches certificates (exact local part first, then
// case-insensitively). Several keys are all to be encrypted to.
func (s *Store) LookupKeys(addr string) []*Key {
	return lookup(s.now(), s.keyExact, s.keyFolded, addr)
}

// Keys returns every loaded OpenPGP key, sorted by first address, then
// expiry. Like Certs it includes keys not usable yet or no longer: only
// LookupKeys filters by time.
func (s *Store) Keys() []*Key { return slices.Clone(s.keys) }

// KeysExpiringWithin returns the loaded OpenPGP keys whose usability ends
// within d from now (a ValidUntil that is set and ≤ now+d), including those
// that expired since the load, soonest first.
func (s *Store) KeysExpiringWithin(d time.Duration) []*Key {
	limit := s.now().Add(d)
	var out []*Key
	for _, k := range s.keys {
		if !k.validUntil.IsZero() && !k.validUntil.After(limit) {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b *Key) int {
		return cmp.Or(a.validUntil.Compare(b.validUntil), strings.Compare(a.Addresses[0], b.Addresses[0]),
			strings.Compare(a.Fingerprint, b.Fingerprint))
	})
	return out
}

// ReadKey reads the one OpenPGP transferable public key (RFC 9580 §10.1) in
// data, ASCII-armored (§6.2) or binary, as a mail client attaches it or an
// Autocrypt header carries it. Every signature the key relies on is
// verified, as for the directory's files. It fails (wrapping ErrParse,
// ErrPrivateKey or ErrNotKey) unless data holds exactly one public key:
// enrollment asks for one key, and a secret key must never be taken in.
func ReadKey(data []byte) (*openpgp.Entity, error) {
	if !isOpenPGP(data) {
		return nil, fmt.Errorf("%w: not an OpenPGP key", ErrParse)
	}
	keys, skipped := parseKeyFile("", data)
	for _, s := range skipped {
		return nil, s.Err
	}
	if len(keys) != 1 {
		return nil, fmt.Errorf("%w: %d OpenPGP keys, want one", ErrParse, len(keys))
	}
	return keys[0], nil
}

// CheckKey applies to e exactly the checks a key must pass to be used from
// the directory (see Key): version 4, a valid User ID with an address, and
// an encryption key usable at now. Enrollment calls it so that it accepts
// exactly what the store would use, as CheckRecipient does for
// certificates. addresses are e's normalized mailboxes, also beside an
// error where they can be read; until is when it stops being usable (zero:
// it does not expire). A key usable only later ([ErrNotYetValid]) is an
// error here: it cannot be encrypted to now.
func CheckKey(e *openpgp.Entity, now time.Time) (addresses []string, until time.Time, err error) {
	v := checkKey(e, now)
	if v.err != nil {
		return keyAddresses(e, now), time.Time{}, v.err
	}
	return v.addresses, v.validUntil, nil
}

// NewKey makes a Key of e for use outside the store (a key a user asked to
// enroll): its fingerprint, and its addresses and end of use independent
// of any clock (each User ID as of its self-signature, the latest
// expiration of its encryption keys). CheckKey says whether it is usable.
func NewKey(e *openpgp.Entity) *Key {
	return &Key{Entity: e, Fingerprint: keyFingerprint(e), Addresses: keyAddresses(e, time.Time{}),
		validUntil: keyValidUntil(e, time.Time{})}
}
