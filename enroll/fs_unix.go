//go:build unix

package enroll

import (
	"fmt"
	"os"
	"syscall"
)

// flock takes the lock that serializes every process using the state
// directory (the daemon, and the command line's certs remove/cancel/list):
// exclusive to change, shared to read.
func flock(f *os.File, exclusive bool) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("enroll: lock %s: %w", f.Name(), err)
		}
		return nil
	}
}

func funlock(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
		return fmt.Errorf("enroll: unlock %s: %w", f.Name(), err)
	}
	return nil
}

// matchOwner gives a new file the owner of the state directory when root
// creates it: an administrator running "smimefilter certs remove" as root
// must not leave files the daemon's own user cannot replace.
func matchOwner(f *os.File, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return f.Chown(int(st.Uid), int(st.Gid))
}
