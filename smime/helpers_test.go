package smime_test

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"testing"

	"github.com/smimefilter/smimefilter/internal/smimetest"
	"github.com/smimefilter/smimefilter/smime"
)

const maxHeader = 1 << 20

// encryptMessage runs a whole message through ReadHeader and Encrypt the way
// the daemon does and returns the enveloped message.
func encryptMessage(t testing.TB, raw []byte, certs []*x509.Certificate, opts smime.Options) []byte {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := smime.ReadHeader(br, maxHeader)
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	var out bytes.Buffer
	w, err := smime.Encrypt(&out, h, certs, opts)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if _, err := io.Copy(w, br); err != nil {
		t.Fatalf("writing body: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out.Bytes()
}

// envelopeOf returns the DER payload of an enveloped message.
func envelopeOf(t testing.TB, msg []byte) []byte {
	t.Helper()
	der, err := smimetest.ExtractDER(msg)
	if err != nil {
		t.Fatalf("ExtractDER: %v", err)
	}
	return der
}

// splitMessage returns the header block (with its blank line) and the body.
func splitMessage(t testing.TB, msg []byte) (header, body []byte) {
	t.Helper()
	i := bytes.Index(msg, []byte("\r\n\r\n"))
	if i < 0 {
		t.Fatalf("no blank line in output:\n%s", msg)
	}
	return msg[:i+4], msg[i+4:]
}

// diffAt describes where two byte strings part, for messages that would
// otherwise print megabytes.
func diffAt(got, want []byte) string {
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	lo := max(0, i-40)
	return fmt.Sprintf("got %d bytes, want %d, first difference at byte %d:\n got: %q\nwant: %q",
		len(got), len(want), i, got[lo:min(len(got), i+40)], want[lo:min(len(want), i+40)])
}

func mimeParse(v string) (string, map[string]string, error) { return mime.ParseMediaType(v) }

func decodeBase64Body(b []byte) ([]byte, error) {
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b)))
	n, err := base64.StdEncoding.Decode(out, b)
	return out[:n], err
}

func headerOf(t testing.TB, raw []byte) *smime.Header {
	t.Helper()
	h, err := smime.ReadHeader(bufio.NewReader(bytes.NewReader(raw)), maxHeader)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
