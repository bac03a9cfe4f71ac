package smime

import (
	"bytes"
	"encoding/asn1"
	"encoding/base64"
	"strings"
	"testing"
)

func TestEnvelopedDataVersion(t *testing.T) {
	for _, tt := range []struct {
		versions []int64
		want     int64
	}{
		{[]int64{0}, 0},
		{[]int64{0, 0, 0}, 0},
		{[]int64{0, 2}, 2}, // subjectKeyIdentifier rid
		{[]int64{2}, 2},
	} {
		var infos []recipientInfo
		for _, v := range tt.versions {
			infos = append(infos, recipientInfo{version: v})
		}
		if got := envelopedDataVersion(infos); got != tt.want {
			t.Errorf("versions %v: got %d, want %d", tt.versions, got, tt.want)
		}
	}
}

// TestOctetStringHeader compares every length form with encoding/asn1.
func TestOctetStringHeader(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20, 16<<20 - 1, 16 << 20} {
		want, err := asn1.Marshal(make([]byte, n))
		if err != nil {
			t.Fatal(err)
		}
		var b [maxOctetStringHL]byte
		hl := putOctetStringHeader(b[:], n)
		if !bytes.Equal(b[:hl], want[:len(want)-n]) {
			t.Errorf("length %d: header % x, want % x", n, b[:hl], want[:len(want)-n])
		}
	}
}

// TestBase64Lines: any split of the input gives the standard encoding in
// lines of 76 characters and CRLF.
func TestBase64Lines(t *testing.T) {
	for _, size := range []int{0, 1, 56, 57, 58, 114, lineBytes*linesPerFlush - 1, lineBytes * linesPerFlush, lineBytes*linesPerFlush + 1, 100000} {
		for _, chunk := range []int{1, 57, 1000, 1 << 20} {
			in := make([]byte, size)
			for i := range in {
				in[i] = byte(i * 31)
			}
			var out bytes.Buffer
			w := newBase64Lines(&out)
			for p := in; len(p) > 0; {
				n := min(chunk, len(p))
				if _, err := w.Write(p[:n]); err != nil {
					t.Fatal(err)
				}
				p = p[n:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			enc := base64.StdEncoding.EncodeToString(in)
			var want strings.Builder
			for len(enc) > 0 {
				n := min(76, len(enc))
				want.WriteString(enc[:n] + "\r\n")
				enc = enc[n:]
			}
			if out.String() != want.String() {
				t.Fatalf("size %d chunk %d: output differs", size, chunk)
			}
		}
	}
}
