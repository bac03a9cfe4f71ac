package pgpmime

import (
	"bufio"
	"bytes"
	"io"
	"slices"
	"testing"

	"github.com/smimefilter/smimefilter/smime"
)

// TestPlaintextCleared: the plaintext the Seal gathers before handing it to
// go-crypto is cleared when the Seal is closed, and when it is destroyed
// before that.
func TestPlaintextCleared(t *testing.T) {
	h, err := smime.ReadHeader(bufio.NewReader(bytes.NewReader([]byte("Subject: s\r\n\r\n"))), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte("secret "), 1000) // less than a chunk: gathered
	for _, end := range []string{"Close", "Destroy"} {
		s, err := NewSeal(io.Discard, h, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(secret); err != nil {
			t.Fatal(err)
		}
		buf := *s.inBuf
		if !bytes.Contains(buf, secret) {
			t.Fatalf("%s: the plaintext is not gathered: the test looks in the wrong place", end)
		}
		if end == "Close" {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
		s.Destroy()
		if i := slices.IndexFunc(buf, func(b byte) bool { return b != 0 }); i >= 0 {
			t.Errorf("after %s: plaintext left in the buffer at %d", end, i)
		}
	}
}
