package pgpmime_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/smimefilter/smimefilter/encrypted"
	"github.com/smimefilter/smimefilter/internal/pgptest"
	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/pgpmime"
	"github.com/smimefilter/smimefilter/smime"
)

// corpusTools are the decryptors every corpus message goes through, each
// with a key of its own making.
var corpusTools = []string{pgptest.GPGRSA, pgptest.Sq, pgptest.RNP25519}

// TestCopiesDecryptWithTools: every corpus message is encrypted once; a copy
// for a key made by GnuPG, Sequoia or RNP decrypts with that tool, and with
// go-crypto, to exactly the entity S/MIME would have encrypted (8-bit text,
// CRLF, multipart/signed and opaque signed data that still verify). The
// 25 MiB message goes through GnuPG only.
func TestCopiesDecryptWithTools(t *testing.T) {
	var rs []*recipient
	for _, name := range corpusTools {
		rs = append(rs, toolRecipient(t, name))
	}
	ca := smimetest.DefaultCA(t)
	for _, m := range smimetest.Corpus(t) {
		if m.Encrypted {
			continue
		}
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			s, h, ct := sealMessage(t, m.Raw, pgpmime.Options{})
			for _, r := range rs {
				if m.Large && r.Name != pgptest.GPGRSA {
					continue
				}
				msg := copyFor(t, s, ct, r.keys(t)...)
				checkOuter(t, h, msg, false)
				armored := parsePGPMIME(t, msg).armored
				got, err := r.Decrypt(armored)
				if err != nil {
					t.Errorf("%s: %v", r.Name, err)
					continue
				}
				if !bytes.Equal(got, m.Inner) {
					t.Errorf("%s: decrypted entity differs: %s", r.Name, diffAt(got, m.Inner))
					continue
				}
				if m.Signed {
					if err := smimetest.VerifySigned(t, got, ca); err != nil {
						t.Errorf("%s: signature no longer verifies: %v", r.Name, err)
					}
				}
				if m.Large {
					continue
				}
				gotGo, lit, err := pgptest.DecryptGo(armored, r)
				if err != nil {
					t.Errorf("go-crypto for %s: %v", r.Name, err)
				} else if !bytes.Equal(gotGo, m.Inner) {
					t.Errorf("go-crypto for %s: %s", r.Name, diffAt(gotGo, m.Inner))
				} else if !lit.IsBinary || lit.FileName != "" || lit.Time != 0 {
					t.Errorf("literal packet: binary %v, name %q, time %d; want binary, no name, 0", lit.IsBinary, lit.FileName, lit.Time)
				}
			}
			body, err := s.OpenBody(bytes.NewReader(ct))
			if err != nil {
				t.Fatal(err)
			}
			var back bytes.Buffer
			h.WriteTo(&back)
			if _, err := io.Copy(&back, body); err != nil {
				t.Fatalf("reading OpenBody: %v", err)
			}
			if !bytes.Equal(back.Bytes(), m.Raw) {
				t.Errorf("header + OpenBody differs from the message: %s", diffAt(back.Bytes(), m.Raw))
			}
		})
	}
}

// TestKeyTypes: each tool's other key type (GnuPG Cv25519, RNP RSA) and
// every key in one copy; with wildcard key IDs too, which GnuPG, Sequoia and
// go-crypto resolve by trying their secret keys.
func TestKeyTypes(t *testing.T) {
	var rs []*recipient
	for _, n := range pgptest.StandardKeys {
		rs = append(rs, toolRecipient(t, n))
	}
	raw := []byte("From: a@example.test\r\nSubject: key types\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe \xe2\x80\x94 caf\xc3\xa9\r\n")
	want := []byte("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe \xe2\x80\x94 caf\xc3\xa9\r\n")
	for _, hide := range []bool{false, true} {
		s, _, ct := sealMessage(t, raw, pgpmime.Options{HideRecipients: hide})
		var all []*packet.PublicKey
		for _, r := range rs {
			all = append(all, r.keys(t)...)
		}
		for _, keys := range [][]*packet.PublicKey{nil, all} {
			for i, r := range rs {
				ks := keys
				if ks == nil {
					ks = r.keys(t)
				}
				armored := parsePGPMIME(t, copyFor(t, s, ct, ks...)).armored
				ids, _ := packetsOf(t, armored)
				if len(ids) != len(ks) {
					t.Errorf("%d key packets for %d keys", len(ids), len(ks))
				}
				for j, id := range ids {
					if want := ks[j].KeyId; hide && id != 0 || !hide && id != want {
						t.Errorf("hide %v: key packet %d names %016x", hide, j, id)
					}
				}
				got, err := r.Decrypt(armored)
				if hide && r.Tool == "rnp" {
					// RNP 0.16 (Debian 12) does not try its keys on a
					// wildcard key ID: Options.HideRecipients says so.
					t.Logf("%s with wildcard key IDs: %v", r.Name, err)
					continue
				}
				if err != nil {
					t.Errorf("%s (hidden %v, %d keys): %v", r.Name, hide, len(ks), err)
				} else if !bytes.Equal(got, want) {
					t.Errorf("%s (hidden %v, %d keys): %s", r.Name, hide, len(ks), diffAt(got, want))
				}
				if _, _, err := pgptest.DecryptGo(armored, rs[i]); err != nil {
					t.Errorf("go-crypto for %s: %v", r.Name, err)
				}
			}
		}
	}
}

// TestTwoRecipientsTwoCopies: one message, two recipients with their own
// keys: two copies of one encryption, each with one key packet naming only
// its recipient (gpg --list-packets), sharing the encrypted data byte for
// byte; each opens with its recipient's key only. With HideRecipients the
// key IDs are the wildcard.
func TestTwoRecipientsTwoCopies(t *testing.T) {
	alice, bob := toolRecipient(t, pgptest.GPGRSA), toolRecipient(t, pgptest.GPGCv25519)
	raw := []byte("From: c@example.test\r\nTo: alice@example.test\r\nBcc: bob@example.test\r\nSubject: both\r\n\r\n" + strings.Repeat("shared line\r\n", 20000))
	for _, hide := range []bool{false, true} {
		s, _, ct := sealMessage(t, raw, pgpmime.Options{HideRecipients: hide})
		var datas [][]byte
		for _, pair := range [][2]*recipient{{alice, bob}, {bob, alice}} {
			r, other := pair[0], pair[1]
			armored := parsePGPMIME(t, copyFor(t, s, ct, r.keys(t)...)).armored
			pkesks := pgptest.KeyPackets(t, armored)
			want := r.keys(t)[0].KeyIdString()
			if hide {
				want = "0000000000000000"
			}
			if len(pkesks) != 1 || pkesks[0].Version != 3 || pkesks[0].KeyID != strings.ToLower(want) {
				t.Errorf("hide %v: copy for %s has key packets %+v, want one v3 for %s", hide, r.Name, pkesks, want)
			}
			_, data := packetsOf(t, armored)
			if !bytes.Equal(data, ct) {
				t.Errorf("copy for %s: encrypted data differs from the sealed ciphertext", r.Name)
			}
			datas = append(datas, data)
			if _, _, err := pgptest.DecryptGo(armored, r); err != nil {
				t.Errorf("go-crypto, %s's key: %v", r.Name, err)
			}
			if _, _, err := pgptest.DecryptGo(armored, other); err == nil {
				t.Errorf("copy for %s opens with %s's key", r.Name, other.Name)
			}
		}
		if !bytes.Equal(datas[0], datas[1]) {
			t.Error("the copies' encrypted data differ")
		}
	}
}

// checkOuter checks a copy's header: the fields that stay outside as
// OuterFields gives them, then MIME-Version and the multipart/encrypted
// Content-Type, and nothing else.
func checkOuter(t testing.TB, h *smime.Header, msg []byte, hp bool) {
	t.Helper()
	outer := h.OuterFields(hp)
	if !bytes.HasPrefix(msg, outer) {
		t.Fatalf("copy does not start with the outer fields:\n%q\nwant prefix\n%q", msg[:min(len(msg), len(outer)+100)], outer)
	}
	nl := string(h.Newline())
	rest := string(msg[len(outer):])
	re := regexp.MustCompile(`^MIME-Version: 1\.0` + nl + `Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";` + nl +
		` boundary="pgp-[0-9a-f]{24}"` + nl + nl)
	if !re.MatchString(rest) {
		t.Errorf("copy's MIME header:\n%q", rest[:min(len(rest), 200)])
	}
}

// TestHeaderProtection: with RFC 9788 header protection the outer Subject
// is "[...]", the protected fields and hp="cipher" are inside, and the outer
// fields are those of the S/MIME copy.
func TestHeaderProtection(t *testing.T) {
	r := toolRecipient(t, pgptest.GPGCv25519)
	raw := []byte("From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: the secret plan\r\nKeywords: plan\r\nMessage-ID: <1@example.test>\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nbody\r\n")
	s, h, ct := sealMessage(t, raw, pgpmime.Options{HeaderProtection: true})
	msg := copyFor(t, s, ct, r.keys(t)...)
	checkOuter(t, h, msg, true)
	p := parsePGPMIME(t, msg)
	if got := p.header.Get("Subject"); got != "[...]" {
		t.Errorf("outer Subject %q, want [...]", got)
	}
	if got := p.header.Get("Keywords"); got != "" {
		t.Errorf("outer Keywords %q, want none", got)
	}
	inner, err := r.Decrypt(p.armored)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Subject: the secret plan\r\n", "Keywords: plan\r\n", "From: Alice <alice@example.test>\r\n",
		"HP-Outer: Subject: [...]\r\n", `hp="cipher"`,
	} {
		if !bytes.Contains(inner, []byte(want)) {
			t.Errorf("inner entity lacks %q:\n%s", want, inner)
		}
	}
	if want := append(h.EntityPrefix(true), "body\r\n"...); !bytes.Equal(inner, want) {
		t.Errorf("inner entity: %s", diffAt(inner, want))
	}
	// The same outer fields as S/MIME's, which adds its own MIME fields.
	var sm bytes.Buffer
	if _, err := smime.Encrypt(&sm, h, []*x509.Certificate{smimetest.NewRecipient(t, "bob@example.test").Cert}, smime.Options{HeaderProtection: true}); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(sm.Bytes(), h.OuterFields(true)) || !bytes.HasPrefix(sm.Bytes()[len(h.OuterFields(true)):], []byte("MIME-Version: 1.0\r\n")) {
		t.Errorf("S/MIME outer header %q does not start with OuterFields", sm.Bytes())
	}
}

// TestLineEnds: a message read with bare LFs gets bare LFs in the lines the
// copy adds; GnuPG still decrypts the entity byte for byte.
func TestLineEnds(t *testing.T) {
	r := toolRecipient(t, pgptest.GPGRSA)
	raw := []byte("From: a@example.test\nSubject: lf\nContent-Type: text/plain\n\nline one\nline two\n")
	s, h, ct := sealMessage(t, raw, pgpmime.Options{})
	msg := copyFor(t, s, ct, r.keys(t)...)
	if bytes.Contains(msg, []byte("\r")) {
		t.Errorf("CR in a bare-LF copy:\n%q", msg)
	}
	checkOuter(t, h, msg, false)
	got, err := r.Decrypt(parsePGPMIME(t, msg).armored)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte("Content-Type: text/plain\n\nline one\nline two\n"); !bytes.Equal(got, want) {
		t.Errorf("decrypted %q, want %q", got, want)
	}
}

// TestOpenBodyShapes: header + OpenBody gives back the message as received,
// for every header shape, with and without header protection.
func TestOpenBodyShapes(t *testing.T) {
	msgs := map[string]string{
		"plain":           "From: a@example.test\r\nSubject: s\r\n\r\n" + strings.Repeat("line of text\r\n", 3000),
		"not a field":     "From: a@example.test\r\nTo: b@example.test,\r\nc@example.test\r\nSubject: s\r\n\r\nbody\r\n",
		"mbox From_ line": "From a@example.test Mon Jun  2 10:00:00 2025\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nbody",
		"bare LF":         "Subject: s\nContent-Type: text/plain\n\nbody\n",
		"header only":     "Subject: s\r\nContent-Type: text/plain",
		"empty":           "",
		"8-bit":           "Subject: s\r\n\r\n\x00\xff\xfe\r\n\x80",
	}
	for name, raw := range msgs {
		for _, hp := range []bool{false, true} {
			s, h, ct := sealMessage(t, []byte(raw), pgpmime.Options{HeaderProtection: hp})
			body, err := s.OpenBody(bytes.NewReader(ct))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var back bytes.Buffer
			h.WriteTo(&back)
			if _, err := io.Copy(&back, body); err != nil {
				t.Errorf("%s (hp %v): %v", name, hp, err)
			}
			if back.String() != raw {
				t.Errorf("%s (hp %v): header + OpenBody = %q, want the message", name, hp, back.String())
			}
		}
	}
}

// TestOpenBodyTampered: OpenBody fails, at the latest at the end, on
// ciphertext that was altered, cut short or extended: the MDC and the
// length are checked.
func TestOpenBodyTampered(t *testing.T) {
	raw := []byte("Subject: s\r\n\r\n" + strings.Repeat("0123456789abcdef", 10000))
	s, _, ct := sealMessage(t, raw, pgpmime.Options{})
	flip := func(i int) []byte {
		b := bytes.Clone(ct)
		b[i] ^= 0x01
		return b
	}
	for name, src := range map[string][]byte{
		"byte flipped in the middle": flip(len(ct) / 2),
		"byte flipped in the MDC":    flip(len(ct) - 3),
		"byte flipped at the start":  flip(40),
		"short":                      ct[:len(ct)-1],
		"long":                       append(bytes.Clone(ct), 0),
	} {
		body, err := s.OpenBody(bytes.NewReader(src))
		if err == nil {
			_, err = io.Copy(io.Discard, body)
		}
		if err == nil {
			t.Errorf("%s: OpenBody read to the end without an error", name)
		}
	}
	body, err := s.OpenBody(bytes.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		t.Errorf("untouched ciphertext: %v", err)
	}
}

// TestGoRoundTripTampered: go-crypto, reading a copy whose encrypted data
// was altered, reports the MDC mismatch.
func TestGoRoundTripTampered(t *testing.T) {
	r := toolRecipient(t, pgptest.Sq)
	s, _, ct := sealMessage(t, []byte("Subject: s\r\n\r\n"+strings.Repeat("x", 5000)), pgpmime.Options{})
	bad := bytes.Clone(ct)
	bad[len(bad)-10] ^= 0x80
	var out bytes.Buffer
	if err := s.WriteCopy(&out, bytes.NewReader(bad), r.keys(t)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pgptest.DecryptGo(parsePGPMIME(t, out.Bytes()).armored, r); err == nil {
		t.Error("go-crypto decrypted a tampered copy without an error")
	}
	if _, err := r.Decrypt(parsePGPMIME(t, out.Bytes()).armored); err == nil {
		t.Error("sq decrypted a tampered copy without an error")
	}
}

// tee sends what the Seal writes both to the spool and to a live copy, as
// the daemon's sealOut does.
type tee struct {
	spool bytes.Buffer
	live  *pgpmime.LiveCopy
}

func (w *tee) Write(p []byte) (int, error) {
	w.spool.Write(p)
	if w.live != nil {
		if _, err := w.live.Write(p); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// TestLiveCopy: a copy written while the message is sealed, started after
// part of the ciphertext was written (replayed from the spool), decrypts
// like one made afterwards; closing it early is an error.
func TestLiveCopy(t *testing.T) {
	r := toolRecipient(t, pgptest.RNPRSA)
	raw := []byte("From: a@example.test\r\nSubject: live\r\n\r\n" + strings.Repeat("streamed while it arrives\r\n", 10000))
	h := headerOf(t, raw)
	body := raw[bytes.Index(raw, []byte("\r\n\r\n"))+4:]
	out := &tee{}
	s, err := pgpmime.NewSeal(out, h, pgpmime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	half := len(body) / 2
	if _, err := s.Write(body[:half]); err != nil {
		t.Fatal(err)
	}
	var live bytes.Buffer
	lc, err := s.NewLiveCopy(&live, r.keys(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Write(out.spool.Bytes()); err != nil {
		t.Fatal(err)
	}
	out.live = lc
	if _, err := s.Write(body[half:]); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lc.Close(); err != nil {
		t.Fatal(err)
	}
	checkOuter(t, h, live.Bytes(), false)
	armored := parsePGPMIME(t, live.Bytes()).armored
	got, err := r.Decrypt(armored)
	if err != nil {
		t.Fatal(err)
	}
	want := append(h.EntityPrefix(false), body...)
	if !bytes.Equal(got, want) {
		t.Errorf("live copy: %s", diffAt(got, want))
	}
	if _, data := packetsOf(t, armored); !bytes.Equal(data, out.spool.Bytes()) {
		t.Error("live copy's encrypted data differs from the spool's")
	}

	// Closed before the seal: refused, not a truncated message.
	s2, err := pgpmime.NewSeal(io.Discard, h, pgpmime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Destroy()
	lc2, err := s2.NewLiveCopy(io.Discard, r.keys(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := lc2.Close(); err == nil {
		t.Error("LiveCopy.Close before the seal's Close succeeded")
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.NewLiveCopy(io.Discard, r.keys(t)); err == nil {
		t.Error("NewLiveCopy on a closed seal succeeded")
	}
}

// TestSealMisuse: a copy needs a closed, living seal, keys, and exactly the
// ciphertext it wrote.
func TestSealMisuse(t *testing.T) {
	r := toolRecipient(t, pgptest.Sq)
	s, _, ct := sealMessage(t, []byte("Subject: s\r\n\r\nbody"+strings.Repeat("y", 100)), pgpmime.Options{})
	for name, src := range map[string][]byte{
		"short": ct[:len(ct)-1],
		"long":  append(bytes.Clone(ct), 0),
	} {
		if err := s.WriteCopy(io.Discard, bytes.NewReader(src), r.keys(t)); err == nil {
			t.Errorf("%s ciphertext: WriteCopy succeeded", name)
		}
	}
	var out bytes.Buffer
	if err := s.WriteCopy(&out, bytes.NewReader(ct), nil); !errors.Is(err, pgpmime.ErrNoRecipients) || out.Len() != 0 {
		t.Errorf("no keys: got %v and %d bytes, want ErrNoRecipients and nothing written", err, out.Len())
	}
	signOnly := *r.keys(t)[0]
	signOnly.PubKeyAlgo = packet.PubKeyAlgoEdDSA
	if err := s.WriteCopy(&out, bytes.NewReader(ct), []*packet.PublicKey{&signOnly}); err == nil || out.Len() != 0 {
		t.Errorf("signing key: got %v and %d bytes, want an error and nothing written", err, out.Len())
	}
	s.Destroy()
	if err := s.WriteCopy(io.Discard, bytes.NewReader(ct), r.keys(t)); err == nil {
		t.Error("WriteCopy after Destroy succeeded")
	}
	if _, err := s.OpenBody(bytes.NewReader(ct)); err == nil {
		t.Error("OpenBody after Destroy succeeded")
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Error("Write after Destroy succeeded")
	}

	var buf bytes.Buffer
	unclosed, err := pgpmime.NewSeal(&buf, headerOf(t, []byte("Subject: s\r\n\r\n")), pgpmime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer unclosed.Destroy()
	if err := unclosed.WriteCopy(io.Discard, &buf, r.keys(t)); err == nil {
		t.Error("WriteCopy before Close succeeded")
	}
	if _, err := pgpmime.NewSeal(io.Discard, nil, pgpmime.Options{}); err == nil {
		t.Error("NewSeal with a nil header succeeded")
	}
	if _, err := pgpmime.NewSeal(io.Discard, headerOf(t, nil), pgpmime.Options{Rand: bytes.NewReader(nil)}); err == nil {
		t.Error("NewSeal without randomness succeeded")
	}
}

// TestCopyIsPassedThrough: a copy fed back to the filter (a forward, a
// re-injection) counts as encrypted as a whole and would pass unchanged.
func TestCopyIsPassedThrough(t *testing.T) {
	r := toolRecipient(t, pgptest.Sq)
	s, _, ct := sealMessage(t, []byte("Subject: s\r\n\r\n"+strings.Repeat("z", 70000)), pgpmime.Options{})
	msg := copyFor(t, s, ct, r.keys(t)...)
	h := headerOf(t, msg)
	i := bytes.Index(msg, []byte("\r\n\r\n")) + 4
	chk := encrypted.NewChecker(h.Get("Content-Type"), h.Get("Content-Transfer-Encoding"))
	chk.Write(msg[i:])
	if ok, reason := chk.Result(); !ok {
		t.Errorf("the copy does not count as encrypted: %s", reason)
	}
}
