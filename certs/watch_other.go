//go:build !linux

package certs

import "errors"

// inotify is a Linux facility; elsewhere Watch rescans periodically.
type inotify struct {
	changed chan struct{}
	lost    chan int32
	failed  chan error
}

func newInotify(string) (*inotify, error) {
	return nil, errors.New("inotify is not available on this system")
}

func (*inotify) add(string) error          { return errors.ErrUnsupported }
func (*inotify) onLost(string, int32) bool { return false }
func (*inotify) close()                    {}
