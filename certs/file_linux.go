package certs

import (
	"io/fs"
	"os"
	"syscall"
)

// openNoBlock opens path for reading without blocking: should the entry
// have become a FIFO since it was examined, open(2) would otherwise wait
// for a writer. O_NONBLOCK does not affect reads of regular files.
func openNoBlock(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}

// fileIdentity adds what tells a replaced file from a rewritten one with
// the same size and mtime: inode, device and change time.
func fileIdentity(fi fs.FileInfo) []int64 {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return []int64{int64(st.Dev), int64(st.Ino), int64(st.Ctim.Sec), int64(st.Ctim.Nsec)}
}
