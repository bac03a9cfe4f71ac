package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseFileFormats(t *testing.T) {
	a := selfSigned(t, leafTemplate("a@example.org"))
	b := selfSigned(t, leafTemplate("b@example.org"))
	c := selfSigned(t, leafTemplate("c@example.org"))
	want := []string{fpOf(a), fpOf(b), fpOf(c)}

	// OpenSSL's -print_certs style: text around the blocks.
	annotated := []byte("subject=CN = test leaf\nissuer=CN = test leaf\n" + string(pemOf(a)) +
		"\nBag Attributes\n    friendlyName: b\n" + string(pemOf(b, c)) + "trailing text\n")
	crlf := bytes.ReplaceAll(pemOf(a, b, c), []byte("\n"), []byte("\r\n"))
	trusted := pem.EncodeToMemory(&pem.Block{Type: "TRUSTED CERTIFICATE",
		Bytes: append(slices.Clone(a.Raw), 0x30, 0x03, 0x02, 0x01, 0x00)})

	tests := []struct {
		name  string
		data  []byte
		want  []string
		isPEM bool
	}{
		{"PEM with several certificates", pemOf(a, b, c), want, true},
		{"PEM with text around blocks", annotated, want, true},
		{"PEM with CRLF", crlf, want, true},
		{"DER", derOf(a), want[:1], false},
		{"DER concatenated", derOf(a, b, c), want, false},
		{"PKCS #7 DER", pkcs7Of(t, a, b, c), want, false},
		{"PKCS #7 PEM", pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: pkcs7Of(t, a, b, c)}), want, true},
		{"OpenSSL TRUSTED CERTIFICATE", trusted, want[:1], true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := slices.Clone(tc.data)
			certs, skipped, isPEM := parseFile("f", tc.data)
			if len(skipped) != 0 {
				t.Errorf("skipped = %v, want none", skipped)
			}
			var got []string
			for _, c := range certs {
				got = append(got, fpOf(c))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("certificates = %v, want %v", got, tc.want)
			}
			if isPEM != tc.isPEM {
				t.Errorf("isPEM = %v, want %v", isPEM, tc.isPEM)
			}
			if !bytes.Equal(tc.data, orig) {
				t.Error("parseFile modified its input")
			}
		})
	}
}

func TestParseFileBad(t *testing.T) {
	a := selfSigned(t, leafTemplate("a@example.org"))
	keyPEM := privateKeyPEM(t)
	keyDER, _ := pem.Decode(keyPEM)
	corruptBlock := []byte("-----BEGIN CERTIFICATE-----\nMIIB!!!not base64!!!\n-----END CERTIFICATE-----\n")
	badCertBlock := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}})

	tests := []struct {
		name      string
		data      []byte
		wantCerts int
		wantErrs  []error // one Skipped entry per error, in order
	}{
		{"empty", nil, 0, []error{ErrParse}},
		{"whitespace", []byte(" \n\t\n"), 0, []error{ErrParse}},
		{"garbage", []byte("hello, world"), 0, []error{ErrParse}},
		{"truncated DER", a.Raw[:len(a.Raw)/2], 0, []error{ErrParse}},
		{"private key PEM next to a certificate", append(pemOf(a), keyPEM...), 1, []error{ErrPrivateKey}},
		{"private key PEM before a certificate", append(slices.Clone(keyPEM), pemOf(a)...), 1, []error{ErrPrivateKey}},
		{"private key DER (PKCS #8)", keyDER.Bytes, 0, []error{ErrPrivateKey}},
		{"private key DER (PKCS #1)", x509.MarshalPKCS1PrivateKey(leafKey()), 0, []error{ErrPrivateKey}},
		{"public key block", append(pemOf(a), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})...), 1, []error{ErrNotCertificate}},
		{"undecodable PEM block among good ones", append(append(pemOf(a), corruptBlock...), pemOf(a)...), 2, []error{ErrParse}},
		{"certificate block that does not parse", append(badCertBlock, pemOf(a)...), 1, []error{ErrParse}},
		{"BEGIN without a block", []byte("text -----BEGIN nothing"), 0, []error{ErrParse}},
		{"PKCS #7 with no certificates", pkcs7Of(t), 0, []error{ErrParse}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certs, skipped, _ := parseFile("f", tc.data)
			if len(certs) != tc.wantCerts {
				t.Errorf("got %d certificates, want %d", len(certs), tc.wantCerts)
			}
			if len(skipped) != len(tc.wantErrs) {
				t.Fatalf("skipped = %v, want %d entries", skipped, len(tc.wantErrs))
			}
			for i, want := range tc.wantErrs {
				if !errors.Is(skipped[i].Err, want) {
					t.Errorf("skipped[%d].Err = %v, want it to wrap %v", i, skipped[i].Err, want)
				}
				if skipped[i].File != "f" {
					t.Errorf("skipped[%d].File = %q, want %q", i, skipped[i].File, "f")
				}
			}
		})
	}
}

// TestLoadFilesMixed: one directory with every kind of file. Good
// certificates load; every bad thing is reported with its file; nothing
// stops the load.
func TestLoadFilesMixed(t *testing.T) {
	dir := t.TempDir()
	a := selfSigned(t, leafTemplate("a@example.org"))
	b := selfSigned(t, leafTemplate("b@example.org"))
	c := selfSigned(t, leafTemplate("c@example.org"))
	d := selfSigned(t, leafTemplate("d@example.org"))
	e := selfSigned(t, leafTemplate("e@example.org"))
	hidden := selfSigned(t, leafTemplate("hidden@example.org"))
	sub := selfSigned(t, leafTemplate("sub@example.org"))

	writeFile(t, dir, "a.pem", pemOf(a))
	writeFile(t, dir, "b.der", derOf(b))
	writeFile(t, dir, "c-and-key.pem", append(pemOf(c), privateKeyPEM(t)...))
	writeFile(t, dir, "corrupt.crt", []byte("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"))
	writeFile(t, dir, "d.p7b", pkcs7Of(t, d))
	writeFile(t, dir, "dup.pem", pemOf(a))
	writeFile(t, dir, "e-no-extension", pemOf(e))
	writeFile(t, dir, "garbage.cer", []byte{0x30, 0x82, 0xff})
	writeFile(t, dir, ".hidden.pem", pemOf(hidden))
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "subdir"), "sub.pem", pemOf(sub))
	if err := os.Symlink("subdir", filepath.Join(dir, "link-to-dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a.pem", filepath.Join(dir, "link-to-a.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", filepath.Join(dir, "dangling.pem")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.pem"), 0o644); err != nil {
		t.Fatal(err)
	}

	s := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})

	for _, want := range []string{"a@example.org", "b@example.org", "c@example.org", "d@example.org", "e@example.org"} {
		if got := s.Lookup(want); len(got) != 1 {
			t.Errorf("Lookup(%q) = %v, want 1 certificate", want, fingerprints(got))
		}
	}
	for _, absent := range []string{"hidden@example.org", "sub@example.org"} {
		if got := s.Lookup(absent); got != nil {
			t.Errorf("Lookup(%q) = %v, want nil: hidden files and subdirectories are ignored", absent, fingerprints(got))
		}
	}
	if got := s.Lookup("a@example.org"); len(got) == 1 && got[0].File != filepath.Join(dir, "a.pem") {
		t.Errorf("a's File = %q, want the first file in directory order", got[0].File)
	}

	wantSkipped := []struct {
		file string
		err  error
	}{
		{"c-and-key.pem", ErrPrivateKey},
		{"corrupt.crt", ErrParse},
		{"dangling.pem", ErrRead},
		{"dup.pem", ErrDuplicate},
		{"fifo.pem", ErrRead},
		{"garbage.cer", ErrParse},
		{"link-to-a.pem", ErrDuplicate},
	}
	got := s.Skipped()
	if len(got) != len(wantSkipped) {
		t.Fatalf("Skipped =\n%s\nwant %d entries", skippedString(got), len(wantSkipped))
	}
	for i, w := range wantSkipped {
		if got[i].File != filepath.Join(dir, w.file) || !errors.Is(got[i].Err, w.err) {
			t.Errorf("Skipped[%d] = %v, want %s wrapping %v", i, got[i], w.file, w.err)
		}
	}

	// Same directory, same result, same order.
	again := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})
	if !slices.Equal(fingerprints(s.Certs()), fingerprints(again.Certs())) {
		t.Error("Certs order differs between two loads")
	}
	if skippedString(s.Skipped()) != skippedString(again.Skipped()) {
		t.Error("Skipped differs between two loads")
	}
}

func skippedString(sk []Skipped) string {
	var b strings.Builder
	for _, s := range sk {
		b.WriteString(s.String() + "\n")
	}
	return b.String()
}

func TestLoadDirectoryErrors(t *testing.T) {
	file := writeFile(t, t.TempDir(), "not-a-dir", []byte("x"))
	for name, dir := range map[string]string{
		"missing": filepath.Join(t.TempDir(), "missing"),
		"file":    file,
		"empty":   "",
	} {
		t.Run(name, func(t *testing.T) {
			if s, err := Load(Options{Dir: dir}); err == nil {
				t.Errorf("Load(%q) = %v, nil; want an error", dir, s)
			}
		})
	}
}

func TestLoadLargeFileSkipped(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "big.pem", bytes.Repeat([]byte("x"), maxFileSize+1))
	writeFile(t, dir, "ok.pem", pemOf(selfSigned(t, leafTemplate("a@example.org"))))
	s := mustLoad(t, Options{Dir: dir, Now: func() time.Time { return t0 }})
	if sk := s.Skipped(); len(sk) != 1 || !errors.Is(sk[0].Err, ErrRead) {
		t.Errorf("Skipped = %v, want big.pem with ErrRead", sk)
	}
	if len(s.Certs()) != 1 {
		t.Errorf("Certs = %d, want 1", len(s.Certs()))
	}
}

// FuzzParseFile: whatever a file contains, parsing neither panics nor
// modifies it, and everything it reports is well-formed.
func FuzzParseFile(f *testing.F) {
	a := selfSigned(f, leafTemplate("a@example.org"))
	b := selfSigned(f, leafTemplate("b@example.org"))
	f.Add(pemOf(a, b))
	f.Add(derOf(a, b))
	f.Add(pkcs7Of(f, a, b))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PKCS7", Bytes: pkcs7Of(f, a)}))
	f.Add(append(pemOf(a), privateKeyPEM(f)...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{0x30, 0x80, 0x02, 0x01, 0x00, 0x00, 0x00})
	f.Add([]byte{})
	sentinels := []error{ErrParse, ErrPrivateKey, ErrNotCertificate}
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := slices.Clone(data)
		certs, skipped, _ := parseFile("fuzz", data)
		if !bytes.Equal(data, orig) {
			t.Fatal("input modified")
		}
		for _, c := range certs {
			if c == nil || len(c.Raw) == 0 {
				t.Fatal("nil or empty certificate returned")
			}
		}
		for _, s := range skipped {
			if s.File != "fuzz" || s.Err == nil {
				t.Fatalf("malformed Skipped %+v", s)
			}
			if !slices.ContainsFunc(sentinels, func(e error) bool { return errors.Is(s.Err, e) }) {
				t.Fatalf("Skipped.Err %v wraps no sentinel", s.Err)
			}
		}
		if len(certs) == 0 && len(skipped) == 0 {
			t.Fatal("nothing found and nothing reported")
		}
	})
}
