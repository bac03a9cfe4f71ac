package enroll

import (
	"bytes"
	"errors"
	"net/mail"
	"path/filepath"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// FuzzVerifyRequest: whatever arrives at the enrollment address, reading
// it as an S/MIME request returns a credential or one of the refusals,
// and never panics.
func FuzzVerifyRequest(f *testing.F) {
	alice := smimetest.NewRecipient(f, "alice@example.test")
	f.Add(signGo(f, alice, nil))
	f.Add([]byte(header(alice.Addr) + signedEntity))
	f.Add(opaqueSigned(alice.Addr, []byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80, 0, 0, 0, 0}))
	f.Add(multipartSigned(alice.Addr, []byte("x"), []byte{0x30, 0x03, 0x02, 0x01, 0x01}))
	now := time.Now()
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, err := mail.ReadMessage(bytes.NewReader(msg))
		if err != nil {
			return
		}
		var body bytes.Buffer
		body.ReadFrom(m.Body)
		c, err := SMIME{}.VerifyRequest(&Request{Header: m.Header, Body: body.Bytes()}, now)
		switch {
		case err == nil && (c == nil || c.Certificate == nil || len(c.Addresses) == 0):
			t.Fatalf("accepted without a certificate or address: %+v", c)
		case err != nil && !errors.Is(err, ErrUnsigned) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUnusableCertificate):
			t.Fatalf("refusal %v wraps no sentinel", err)
		}
	})
}

// FuzzHandleMessage: any message gets a verdict or an engine error, and
// the state stays readable.
func FuzzHandleMessage(f *testing.F) {
	alice := smimetest.NewRecipient(f, "alice@example.test")
	f.Add("alice@example.test", signGo(f, alice, nil))
	f.Add("alice@example.test", codeMessage(alice.Addr, "confirm ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567"))
	f.Add("", []byte("Subject: x\r\n\r\n"))
	e, err := Open(Options{Dir: filepath.Join(f.TempDir(), "state"), Address: enrollAddr,
		Delivers: func(string) bool { return true }, MaxRequestsPerSenderPerDay: 1 << 30})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { e.Close() })
	f.Fuzz(func(t *testing.T, from string, msg []byte) {
		res, err := e.HandleMessage(from, bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("engine error: %v", err)
		}
		if res.Err != nil && len(res.Err.Error()) > maxReason+3 {
			t.Fatalf("refusal text of %d bytes", len(res.Err.Error()))
		}
		if _, err := e.List(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzSignedContent: the BER reader never panics or reads out of bounds.
func FuzzSignedContent(f *testing.F) {
	f.Add([]byte{0x30, 0x80, 0x06, 0x01, 0x00, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x01, 0x31, 0x00,
		0x30, 0x80, 0x06, 0x01, 0x00, 0xa0, 0x80, 0x24, 0x80, 0x04, 0x01, 'a', 0x04, 0x01, 'b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, der []byte) {
		signedContent(der)
	})
}

// TestSignedContentSegments: a constructed, indefinite OCTET STRING is
// read whole.
func TestSignedContentSegments(t *testing.T) {
	der := []byte{0x30, 0x80, 0x06, 0x01, 0x00, 0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x01, 0x31, 0x00,
		0x30, 0x80, 0x06, 0x01, 0x00, 0xa0, 0x80, 0x24, 0x80, 0x04, 0x01, 'a', 0x04, 0x02, 'b', 'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	got, err := signedContent(der)
	if err != nil || string(got) != "abc" {
		t.Fatalf("signedContent = %q, %v; want abc", got, err)
	}
}
