package encrypted

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// fuzzHeaders are the header values a fuzzed body is checked under.
var fuzzHeaders = []struct{ ct, cte string }{
	{ctEnveloped, "base64"},
	{ctPKCS7, "binary"},
	{ctAuth, "base64"},
	{"text/plain", ""},
	{"text/plain", "base64"},
	{"text/plain", "quoted-printable"},
	{ctPGPMIME, ""},
	{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary=x`, "7bit"},
}

// FuzzChecker: no input panics the checker, and neither the verdict nor its
// reason depends on how the body is split into writes.
func FuzzChecker(f *testing.F) {
	pkesk := pkt(tagPKESK, append([]byte{3}, bytes.Repeat([]byte{7}, 20)...))
	seipd := pkt(tagSEIPD, append([]byte{1}, cipher...))
	arm := armored(append(pkesk, seipd...), true, "Version: 1")
	good := contentInfo(oidEnvelopedData, version0, tlv(0x31, ktri), eci(encrypted))
	indef := ind(0x30, tlv(0x06, oidEnvelopedData), ind(0xa0, ind(0x30, version0, ind(0x31, ind(0x30, version0)),
		ind(0x30, tlv(0x06, oidData), algAES, ind(0xa0, ind(0x24, tlv(0x04, cipher)), tlv(0x04, cipher))))))
	auth := contentInfo(oidAuthEnvelopedData, version0, tlv(0x31, ktri), eci(encrypted), tlv(0x04, cipher[:16]))
	for _, s := range []struct {
		header int
		body   []byte
	}{
		{0, b64Lines(good, 76)},
		{0, b64Lines(indef, 64)},
		{1, good},
		{1, indef},
		{2, b64Lines(auth, 76)},
		{3, arm},
		{3, armored(append(pkesk, partialPkt(tagSEIPD, 2, append([]byte{1}, cipher...))...), false)},
		{3, append([]byte("\r\n"), armored(append(pkesk, oldPkt(tagSED, 3, cipher)...), true)...)},
		{4, b64Lines(arm, 76)},
		{5, escapeAll(arm)},
		{6, thunderbird(arm)},
		{7, []byte("--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--x\r\nContent-Type: application/octet-stream\r\n\r\n" + string(arm) + "--x--\r\n")},
	} {
		// Seeds the checker accepts, so that mutations start from the
		// paths that go deepest.
		h := fuzzHeaders[s.header]
		c := NewChecker(h.ct, h.cte)
		c.Write(s.body)
		if ok, reason := c.Result(); !ok {
			f.Fatalf("seed %d refused: %s", s.header, reason)
		}
		f.Add(uint8(s.header), s.body, uint64(1))
	}
	f.Fuzz(func(t *testing.T, header uint8, body []byte, seed uint64) {
		h := fuzzHeaders[int(header)%len(fuzzHeaders)]
		check := func(chunks [][]byte) (bool, string) {
			c := NewChecker(h.ct, h.cte)
			for _, p := range chunks {
				if n, err := c.Write(p); n != len(p) || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", len(p), n, err, len(p))
				}
			}
			return c.Result()
		}
		ok, reason := check([][]byte{body})
		if !ok && reason == "" {
			t.Fatal("no reason for a refused body")
		}
		var bytewise, random [][]byte
		for i := range body {
			bytewise = append(bytewise, body[i:i+1])
		}
		rng := rand.New(rand.NewPCG(seed, 0))
		for p := body; len(p) > 0; {
			n := min(len(p), rng.IntN(70))
			random = append(random, p[:n])
			p = p[n:]
		}
		for name, chunks := range map[string][][]byte{"one byte at a time": bytewise, "random chunks": random} {
			if ok2, reason2 := check(chunks); ok2 != ok || reason2 != reason {
				t.Errorf("%s: got %v %q, whole body gave %v %q", name, ok2, reason2, ok, reason)
			}
		}
	})
}
