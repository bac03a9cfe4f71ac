package enroll

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
)

// A code is 160 random bits (above the 128 the issue asks for) in base32,
// 32 characters written in groups of four: letters and the digits 2 to 7
// only, so that it survives being read aloud, retyped in any case, and
// carried in a Subject without encoding.
const (
	codeBytes  = 20
	codeChars  = 32 // base32 of codeBytes, no padding
	codeGroup  = 4
	maxCodes   = 3  // live confirmation codes kept per request
	maxCancels = 4  // live cancel codes kept per request
	maxTokens  = 16 // code-shaped words looked at in one Subject
)

var codeEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newCode returns a fresh code as shown to the user, and its hash as
// stored. The code itself is never stored: the state directory, the log
// and file names see only the hash.
func newCode(r io.Reader) (shown, hash string, err error) {
	var b [codeBytes]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", "", fmt.Errorf("enroll: random code: %w", err)
	}
	c := codeEncoding.EncodeToString(b[:])
	var g []string
	for i := 0; i < len(c); i += codeGroup {
		g = append(g, c[i:i+codeGroup])
	}
	return strings.Join(g, "-"), hashCode(c), nil
}

// hashCode is the stored form of a canonical code. A plain SHA-256 is
// enough: 160 random bits cannot be found from their hash by guessing.
func hashCode(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return hex.EncodeToString(sum[:])
}

// codesIn returns the canonical form (upper case, no dashes) of every
// code-shaped word of a Subject: "Re: confirm abcd-efgh-..." works as well
// as the Subject the mailto: link sets.
func codesIn(subject string) []string {
	isWordChar := func(r rune) bool {
		return r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
	}
	var out []string
	for _, w := range strings.FieldsFunc(subject, func(r rune) bool { return !isWordChar(r) }) {
		c := strings.ToUpper(strings.ReplaceAll(w, "-", ""))
		if len(c) != codeChars || strings.Trim(c, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
			continue
		}
		out = append(out, c)
		if len(out) == maxTokens {
			break
		}
	}
	return out
}

// codeRecord is a stored code: its hash and until when it works (zero: as
// long as its request exists).
type codeRecord struct {
	Hash    string    `json:"hash"`
	Expires time.Time `json:"expires,omitzero"`
}

func (c codeRecord) live(now time.Time) bool { return c.Expires.IsZero() || now.Before(c.Expires) }

// matches compares a candidate hash with a stored one in constant time.
// Every stored hash is compared, hit or not, so that the time taken does
// not tell how many requests exist or which came close.
func matches(stored []codeRecord, candidates []string, now time.Time) bool {
	hit := 0
	for _, s := range stored {
		for _, c := range candidates {
			eq := subtle.ConstantTimeCompare([]byte(s.Hash), []byte(c))
			if s.live(now) {
				hit |= eq
			}
		}
	}
	return hit == 1
}

// without removes the used codes from stored.
func without(stored []codeRecord, candidates []string) []codeRecord {
	var out []codeRecord
	for _, s := range stored {
		used := false
		for _, c := range candidates {
			if subtle.ConstantTimeCompare([]byte(s.Hash), []byte(c)) == 1 {
				used = true
			}
		}
		if !used {
			out = append(out, s)
		}
	}
	return out
}
