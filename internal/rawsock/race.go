//go:build race

package rawsock

import "syscall"

const raceEnabled = true

// Under the race detector the calls go through syscall.Read and
// syscall.Write after all: those record that a write happens before the
// read that returns its bytes, which the tests' in-process servers rely on
// (the other end is an ordinary net.Conn, annotated the same way). Their
// scheduler bookkeeping does not matter there. The daemon built without
// -race (e2e, cmd tests) and this package's tests run without -race in
// .ci/run exercise the raw calls.
func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return n, errnoOf(err)
}

func write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return err.(syscall.Errno)
}
