package pgpmime

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/smime"
)

// framed is one packet taken apart by readFramed.
type framed struct {
	tag    byte
	body   []byte
	chunks []int // the body's pieces: partial ones, then the final definite one
}

// readFramed reads one new-format packet (RFC 9580 §4.2.1) from the start
// of b and returns it and what follows. It checks what §4.2.1.4 asks of
// partial body lengths (powers of two, the first at least 512 octets, the
// last length definite), and what this package promises beyond: every
// partial chunk is chunkSize, the final one is not empty and its length
// has the shortest encoding.
func readFramed(b []byte) (framed, []byte, error) {
	var f framed
	if len(b) == 0 {
		return f, nil, errors.New("no packet")
	}
	f.tag, b = b[0], b[1:]
	if f.tag&0xc0 != 0xc0 {
		return f, nil, fmt.Errorf("tag octet %#x: not a new-format header", f.tag)
	}
	for {
		if len(b) == 0 {
			return f, nil, errors.New("length header missing")
		}
		var n, hl int
		partial := false
		switch o := b[0]; {
		case o < 192:
			n, hl = int(o), 1
		case o < 224:
			if len(b) < 2 {
				return f, nil, errors.New("two-octet length cut")
			}
			n, hl = (int(o)-192)<<8+int(b[1])+192, 2
		case o < 255:
			n, hl, partial = 1<<(o&0x1f), 1, true
		default:
			if len(b) < 5 {
				return f, nil, errors.New("five-octet length cut")
			}
			n, hl = int(binary.BigEndian.Uint32(b[1:5])), 5
		}
		switch {
		case partial && len(f.chunks) == 0 && n < 512:
			return f, nil, fmt.Errorf("first partial chunk of %d octets, less than 512", n)
		case partial && n != chunkSize:
			return f, nil, fmt.Errorf("partial chunk of %d octets, want %d", n, chunkSize)
		case !partial && len(f.chunks) > 0 && n == 0:
			return f, nil, errors.New("empty final chunk")
		case !partial && hl != len(putLength(make([]byte, 5), n)):
			return f, nil, fmt.Errorf("length %d in %d octets: not the shortest encoding", n, hl)
		}
		b = b[hl:]
		if len(b) < n {
			return f, nil, fmt.Errorf("chunk of %d octets, %d left", n, len(b))
		}
		f.body = append(f.body, b[:n]...)
		f.chunks = append(f.chunks, n)
		b = b[n:]
		if !partial {
			return f, b, nil
		}
	}
}

// seipdBodyLen returns the length of the SEIPD packet's body in ct.
func seipdBodyLen(t *testing.T, ct []byte) int {
	t.Helper()
	f, _, err := readFramed(ct)
	if err != nil {
		t.Fatal(err)
	}
	return len(f.body)
}

// sealPieces seals body after h, written in pieces of varying sizes, some
// of them more than a chunk (taken straight from the caller's buffer).
func sealPieces(t *testing.T, h *smime.Header, body []byte) (*Seal, []byte) {
	t.Helper()
	var ct bytes.Buffer
	s, err := NewSeal(&ct, h, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Destroy)
	sizes := []int{1, 1000, chunkSize + 5, 7, 2 * chunkSize, 511}
	for i, p := 0, body; len(p) > 0; i++ {
		n := min(len(p), sizes[i%len(sizes)])
		if _, err := s.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if int64(ct.Len()) != s.Size() {
		t.Fatalf("Size() = %d, wrote %d", s.Size(), ct.Len())
	}
	return s, ct.Bytes()
}

// TestSEIPDFraming: for message bodies, Literal Data bodies and SEIPD
// bodies of lengths around the chunk boundaries, the framing is what RFC
// 9580 asks (§4.2.1.4 partial lengths, §5.13.1 SEIPD v1, §5.9 literal data,
// §5.14 the MDC over prefix, repeat, plaintext packets and its own header),
// go-crypto's packet reader parses it and checks the MDC, and GnuPG
// decrypts a copy to the entity.
func TestSEIPDFraming(t *testing.T) {
	gk := pgptest.ToolKey(t, pgptest.GPGCv25519)
	keys := []*packet.PublicKey{gk.EncryptionKey(t)}
	h, err := smime.ReadHeader(bufio.NewReader(bytes.NewReader([]byte("Subject: s\r\nContent-Type: application/octet-stream\r\n\r\n"))), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	prefix := h.EntityPrefix(false)
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 3*chunkSize+8)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}

	var sizes []int
	add := func(n int) {
		if n >= 0 && n <= len(data) && !slices.Contains(sizes, n) {
			sizes = append(sizes, n)
		}
	}
	for _, b := range []int{0, 1, 511, 512, 513, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 7} {
		add(b)                                    // the message body
		add(b - len(prefix) - len(literalHeader)) // the Literal Data body
		// The SEIPD body: the smallest message body that makes it at
		// least b, and the one before. Its length mostly grows with the
		// body's, but not always (where the literal packet takes a partial
		// chunk, its five-octet final length becomes two one-octet ones),
		// so the lengths reached are checked below.
		lo, hi := 0, b
		for lo < hi {
			mid := (lo + hi) / 2
			if _, ct := sealPieces(t, h, data[:mid]); seipdBodyLen(t, ct) >= b {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		add(lo)
		add(lo - 1)
	}
	slices.Sort(sizes)
	reached := map[int]bool{}
	for _, n := range sizes {
		_, ct := sealPieces(t, h, data[:n])
		reached[seipdBodyLen(t, ct)] = true
	}
	for _, b := range []int{511, 512, 513, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 7} {
		if !reached[b] {
			t.Errorf("no message body makes a SEIPD body of %d octets", b)
		}
	}

	for _, n := range sizes {
		s, ct := sealPieces(t, h, data[:n])
		want := append(bytes.Clone(prefix), data[:n]...)
		outer, rest, err := readFramed(ct)
		if err != nil {
			t.Fatalf("%d: SEIPD packet: %v", n, err)
		}
		t.Logf("body %d: SEIPD body %d in chunks %v", n, len(outer.body), outer.chunks)
		if len(rest) != 0 || outer.tag != tagSEIPD || outer.body[0] != seipdV1 || len(outer.body) < 1+aes.BlockSize+2 {
			t.Fatalf("%d: tag %#x, version %d, %d octets after the packet", n, outer.tag, outer.body[0], len(rest))
		}

		// Decrypted here: the plaintext packets' framing and the MDC.
		block, err := aes.NewCipher(s.key)
		if err != nil {
			t.Fatal(err)
		}
		pre := bytes.Clone(outer.body[1 : 1+aes.BlockSize+2])
		dec := packet.NewOCFBDecrypter(block, pre, packet.OCFBNoResync)
		if dec == nil || !bytes.Equal(pre[aes.BlockSize-2:aes.BlockSize], pre[aes.BlockSize:]) {
			t.Fatalf("%d: the prefix's last two octets are not repeated", n)
		}
		plain := bytes.Clone(outer.body[1+aes.BlockSize+2:])
		dec.XORKeyStream(plain, plain)
		lit, rest, err := readFramed(plain)
		if err != nil {
			t.Fatalf("%d: literal packet: %v", n, err)
		}
		if lit.tag != tagLiteral || !bytes.HasPrefix(lit.body, literalHeader[:]) || !bytes.Equal(lit.body[len(literalHeader):], want) {
			t.Fatalf("%d: literal packet tag %#x, body %q...", n, lit.tag, lit.body[:min(len(lit.body), 16)])
		}
		mdc, rest, err := readFramed(rest)
		if err != nil || len(rest) != 0 || mdc.tag != tagMDC || len(mdc.body) != sha1.Size || len(plain) < 2+sha1.Size || plain[len(plain)-sha1.Size-1] != sha1.Size {
			t.Fatalf("%d: MDC packet: tag %#x, %d octets, %d after, %v", n, mdc.tag, len(mdc.body), len(rest), err)
		}
		sum := sha1.New()
		sum.Write(pre)
		sum.Write(plain[:len(plain)-sha1.Size])
		if !bytes.Equal(sum.Sum(nil), mdc.body) {
			t.Fatalf("%d: MDC does not match", n)
		}

		// go-crypto's packet reader.
		r := bytes.NewReader(ct)
		p, err := packet.Read(r)
		if err != nil {
			t.Fatalf("%d: go-crypto: %v", n, err)
		}
		se, ok := p.(*packet.SymmetricallyEncrypted)
		if !ok || se.Version != 1 || !se.IntegrityProtected {
			t.Fatalf("%d: go-crypto reads a %T %+v", n, p, p)
		}
		rc, err := se.Decrypt(cipherFunc, s.key)
		if err != nil {
			t.Fatalf("%d: go-crypto: %v", n, err)
		}
		p, err = packet.Read(rc)
		if err != nil {
			t.Fatalf("%d: go-crypto, inside: %v", n, err)
		}
		ld, ok := p.(*packet.LiteralData)
		if !ok || !ld.IsBinary || ld.FileName != "" || ld.Time != 0 {
			t.Fatalf("%d: go-crypto reads a %T %+v inside", n, p, p)
		}
		got, err := io.ReadAll(ld.Body)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d: go-crypto's literal data: %d octets, %v", n, len(got), err)
		}
		if err := rc.Close(); err != nil {
			t.Fatalf("%d: go-crypto's MDC check: %v", n, err)
		}
		if _, err := packet.Read(r); err != io.EOF {
			t.Fatalf("%d: go-crypto after the packet: %v", n, err)
		}

		// A copy, in process and by GnuPG.
		var msg bytes.Buffer
		if err := s.WriteCopy(&msg, bytes.NewReader(ct), keys); err != nil {
			t.Fatal(err)
		}
		if got, _, err := pgptest.DecryptGo(msg.Bytes(), gk); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%d: go-crypto ReadMessage: %d octets, %v", n, len(got), err)
		}
		if got, err := gk.Decrypt(msg.Bytes()); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%d: gpg: %d octets, %v", n, len(got), err)
		}
	}
}
