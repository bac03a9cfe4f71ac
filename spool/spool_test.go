package spool

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// TestSpool: whatever the sizes, every reader gives back exactly what was
// written; what exceeds the memory limit goes to a file that has no name.
func TestSpool(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size     int
		memLimit int
		inFile   bool
	}{
		{"empty", 0, 1 << 20, false},
		{"small", 1000, 1 << 20, false},
		{"exactly the limit", 3 * chunkSize, 3 * chunkSize, false},
		{"one byte over", 3*chunkSize + 1, 3 * chunkSize, true},
		{"large", 5 << 20, 256 << 10, true},
		{"limit not a chunk multiple", 200000, 100000, true},
		{"no memory", 5000, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			data := make([]byte, tc.size)
			rng := rand.New(rand.NewPCG(1, uint64(tc.size)))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			s := New(dir, tc.memLimit)
			defer s.Close()
			for p := data; len(p) > 0; {
				n := min(len(p), 1+rng.IntN(100000))
				if w, err := s.Write(p[:n]); w != n || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", n, w, err)
				}
				p = p[n:]
			}
			if s.Len() != int64(tc.size) {
				t.Errorf("Len() = %d, want %d", s.Len(), tc.size)
			}
			if s.InFile() != tc.inFile {
				t.Errorf("InFile() = %v, want %v", s.InFile(), tc.inFile)
			}
			entries, err := os.ReadDir(dir)
			if err != nil || len(entries) != 0 {
				t.Errorf("spool directory holds %v (%v): a spool file must have no name", entries, err)
			}
			for i := range 2 {
				got, err := io.ReadAll(s.Reader())
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("reader %d: got %d bytes, want %d, equal %v", i, len(got), len(data), bytes.Equal(got, data))
				}
			}
		})
	}
}

func TestSpoolUnwritableDir(t *testing.T) {
	s := New("/nonexistent/spool", 10)
	defer s.Close()
	if _, err := s.Write(make([]byte, 20)); err == nil {
		t.Fatal("Write past the memory limit into a missing directory succeeded")
	}
	if _, err := s.Write([]byte{1}); err == nil {
		t.Fatal("Write after a failed Write succeeded")
	}
}

func TestPrivateDir(t *testing.T) {
	base := t.TempDir()
	dir, err := PrivateDir(base)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Errorf("got mode %v, want a directory with 0700", fi.Mode())
	}
}

// TestSpoolDirRemoved: a spool directory removed under the daemon (by a
// cleaner of old temporary files) is made again.
func TestSpoolDirRemoved(t *testing.T) {
	dir, err := PrivateDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	s := New(dir, 0)
	defer s.Close()
	if _, err := s.Write([]byte("ciphertext")); err != nil {
		t.Fatalf("Write after the directory was removed: %v", err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory not made again private: %v, %v", fi, err)
	}
}
