package pgpmime

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

// crc24Bitwise is RFC 4880 §6.1's sample implementation, one bit at a time.
func crc24Bitwise(crc uint32, p []byte) uint32 {
	for _, b := range p {
		crc ^= uint32(b) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= crc24Poly
			}
		}
	}
	return crc & 0xFFFFFF
}

// TestCRC24: the table-driven CRC is the RFC's, for the standard check
// string (CRC-24/OpenPGP of "123456789" is 0x21CF02) and random data fed in
// pieces.
func TestCRC24(t *testing.T) {
	if got := crc24(crc24Init, []byte("123456789")); got != 0x21CF02 {
		t.Errorf("crc24(123456789) = %06x, want 21cf02", got)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		data := make([]byte, rng.IntN(3000))
		fillRand(rng, data)
		want := crc24Bitwise(crc24Init, data)
		got := uint32(crc24Init)
		for _, piece := range split(rng, data) {
			got = crc24(got, piece)
		}
		if got != want {
			t.Fatalf("%d bytes: crc24 %06x, bitwise %06x", len(data), got, want)
		}
	}
}

func fillRand(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

// split cuts data into random pieces, empty ones included.
func split(rng *rand.Rand, data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		var n int
		switch rng.IntN(4) {
		case 0:
			n = 0
		case 1:
			n = 1 + rng.IntN(armorLineBytes*2)
		case 2:
			n = rng.IntN(armorLineBytes * armorBatchLines * 3)
		default:
			n = len(data)
		}
		n = min(n, len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// goCryptoArmor is what go-crypto's armor.Encode writes for data, its LFs
// turned into nl: the reference output, byte for byte.
func goCryptoArmor(t testing.TB, data []byte, nl string) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, "PGP MESSAGE", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(b.Bytes(), []byte("\n"), []byte(nl))
}

// ourArmor armors data written in the given pieces.
func ourArmor(t testing.TB, pieces [][]byte, nl string) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := newArmorWriter(&b, []byte(nl))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pieces {
		if n, err := w.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkArmor compares the armor of data written in each way of cutting it
// with go-crypto's, for both line ends.
func checkArmor(t *testing.T, data []byte, cuts ...[][]byte) {
	t.Helper()
	for _, nl := range []string{"\n", "\r\n"} {
		want := goCryptoArmor(t, data, nl)
		for _, pieces := range cuts {
			got := ourArmor(t, pieces, nl)
			if bytes.Equal(got, want) {
				continue
			}
			n := 0
			for n < min(len(got), len(want)) && got[n] == want[n] {
				n++
			}
			t.Fatalf("%d bytes in %d writes, nl %q: armor differs from go-crypto's at byte %d of %d/%d:\n got %q\nwant %q",
				len(data), len(pieces), nl, n, len(got), len(want), got[max(0, n-20):min(len(got), n+20)], want[max(0, n-20):min(len(want), n+20)])
		}
	}
}

// TestArmorMatchesGoCrypto: for random data of lengths around the line and
// batch sizes, written whole and in arbitrary pieces, the armor is
// go-crypto's byte for byte (LF), and the same with CRLF line ends.
func TestArmorMatchesGoCrypto(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	lengths := []int{1, 2, 3, 4, 47, 48, 49, 95, 96, 97, 1000}
	for _, lines := range []int{armorBatchLines - 1, armorBatchLines, armorBatchLines + 1, 3 * armorBatchLines} {
		n := lines * armorLineBytes
		lengths = append(lengths, n-1, n, n+1)
	}
	for range 20 {
		lengths = append(lengths, 1+rng.IntN(100000))
	}
	for _, n := range lengths {
		data := make([]byte, n)
		fillRand(rng, data)
		checkArmor(t, data, [][]byte{data}, split(rng, data), split(rng, data), split(rng, data))
	}
}

// TestArmorEmpty: with no data (a copy always has a key packet, so only in
// principle) there is no data line at all, where go-crypto writes an empty
// one; go-crypto reads it back as empty.
func TestArmorEmpty(t *testing.T) {
	got := ourArmor(t, nil, "\n")
	if want := "-----BEGIN PGP MESSAGE-----\n\n=twTO\n-----END PGP MESSAGE-----"; string(got) != want {
		t.Errorf("empty armor %q, want %q", got, want)
	}
	block, err := armor.Decode(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	if data, err := io.ReadAll(block.Body); err != nil || len(data) != 0 || block.Type != "PGP MESSAGE" {
		t.Errorf("go-crypto reads %s %q, %v", block.Type, data, err)
	}
}

// FuzzArmor: any data, cut at any points, armors as go-crypto does.
func FuzzArmor(f *testing.F) {
	f.Add([]byte("x"), []byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 100), []byte{47, 1, 0, 52})
	f.Add(bytes.Repeat([]byte("0123456789abcdef"), 4000), []byte{200, 3, 255, 48})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		if len(data) == 0 {
			return // TestArmorEmpty: go-crypto writes an empty line there
		}
		var pieces [][]byte
		rest := data
		for _, c := range cuts {
			// A cut byte c is a piece of c*c/4 bytes: small and large
			// pieces both.
			n := min(int(c)*int(c)/4, len(rest))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		pieces = append(pieces, rest)
		checkArmor(t, data, pieces)
	})
}

// failAfter accepts n bytes, then fails.
type failAfter struct{ n int }

var errSink = errors.New("sink full")

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n := f.n
		f.n = 0
		return n, errSink
	}
	f.n -= len(p)
	return len(p), nil
}

// TestArmorErrors: a write error is returned, wrapped, and sticks; a closed
// armor writes nothing more.
func TestArmorErrors(t *testing.T) {
	if _, err := newArmorWriter(&failAfter{n: 3}, []byte("\n")); !errors.Is(err, errSink) {
		t.Errorf("header to a failing writer: %v, want %v", err, errSink)
	}
	if _, err := newArmorWriter(io.Discard, nil); err == nil {
		t.Error("no line end accepted")
	}
	w, err := newArmorWriter(&failAfter{n: 1000}, []byte("\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 100000)
	if _, err := w.Write(big); !errors.Is(err, errSink) {
		t.Errorf("Write to a failing writer: %v, want %v", err, errSink)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, errSink) {
		t.Errorf("second Write: %v, want the same error", err)
	}
	if err := w.Close(); !errors.Is(err, errSink) {
		t.Errorf("Close: %v, want the same error", err)
	}
	w.release()

	w, err = newArmorWriter(io.Discard, []byte("\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close: %v, want ErrClosed", err)
	}
	if err := w.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
}

// BenchmarkArmor is the armor alone, 64 KiB writes as a live copy gets
// them from the seal, against go-crypto's.
//
//	go test -run '^$' -bench 'BenchmarkArmor' -benchmem ./pgpmime/
func BenchmarkArmor(b *testing.B) {
	data := make([]byte, 64<<10)
	fillRand(rand.New(rand.NewPCG(5, 6)), data)
	const size = 8 << 20
	b.Run("ours", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			w, _ := newArmorWriter(io.Discard, []byte("\r\n"))
			for range size / len(data) {
				w.Write(data)
			}
			w.Close()
		}
	})
	b.Run("go-crypto", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			w, _ := armor.Encode(io.Discard, "PGP MESSAGE", nil)
			for range size / len(data) {
				w.Write(data)
			}
			w.Close()
		}
	})
	b.Run("crc24", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			crc := uint32(crc24Init)
			for range size / len(data) {
				crc = crc24(crc, data)
			}
		}
	})
}
