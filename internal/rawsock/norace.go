//go:build !race

package rawsock

import (
	"syscall"
	"unsafe"
)

const raceEnabled = false

// read and write are read(2) and write(2) on a non-blocking socket,
// issued without the scheduler's bookkeeping (see the package comment).
// p is never empty.
func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}
