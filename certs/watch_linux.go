package certs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// watchMask: the events after which the directory may read differently.
// IN_CLOSE_WRITE rather than IN_MODIFY, so that a file is not read while
// it is being written; IN_MOVED_TO for atomic rename-into-place;
// IN_ATTRIB for permission changes and for touch(1) as a way to ask for
// a reload. The *_SELF events tell that the directory itself went away.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_CREATE |
	unix.IN_MOVED_FROM | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// inotify watches one directory. Events are read by a goroutine and
// delivered, coalesced, on changed; lost carries the watch descriptor
// whose directory disappeared; failed reports a read error, after which
// nothing more is delivered.
type inotify struct {
	fd      int
	f       *os.File // the same descriptor, in Go's poller so Close ends a Read
	wd      int32    // current watch, -1 when none; used by Watch's goroutine only
	changed chan struct{}
	lost    chan int32
	failed  chan error
	done    chan struct{}
	wg      sync.WaitGroup
}

func newInotify(dir string) (*inotify, error) {
	// Non-blocking, so that os.NewFile puts it in the runtime poller and
	// close() can interrupt the reader.
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	w := &inotify{
		fd:      fd,
		f:       os.NewFile(uintptr(fd), "inotify"),
		wd:      -1,
		changed: make(chan struct{}, 1),
		lost:    make(chan int32),
		failed:  make(chan error, 1),
		done:    make(chan struct{}),
	}
	if err := w.add(dir); err != nil {
		w.f.Close()
		return nil, err
	}
	w.wg.Go(w.read)
	return w, nil
}

func (w *inotify) add(dir string) error {
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		return fmt.Errorf("inotify_add_watch %s: %w", dir, err)
	}
	w.wd = int32(wd)
	return nil
}

// onLost handles the disappearance of the watched directory and reports
// whether dir is watched again. Events for an earlier watch (the
// IN_IGNORED that follows a removal) are stale and change nothing.
func (w *inotify) onLost(dir string, wd int32) bool {
	if wd != w.wd {
		return w.wd >= 0
	}
	// After IN_MOVE_SELF the watch follows the directory to its new name;
	// drop it, the path is what counts.
	_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
	w.wd = -1
	return w.add(dir) == nil
}

func (w *inotify) close() {
	close(w.done)
	w.f.Close() // ends the pending Read with os.ErrClosed
	w.wg.Wait()
}

func (w *inotify) read() {
	// Room for many events per read: each is 16 bytes plus a name of at
	// most NAME_MAX+1.
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				select {
				case w.failed <- err:
				default:
				}
			}
			return
		}
		for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
			// struct inotify_event: int wd; uint32_t mask, cookie, len;
			// char name[len].
			wd := int32(binary.NativeEndian.Uint32(b[0:4]))
			mask := binary.NativeEndian.Uint32(b[4:8])
			nameLen := int(binary.NativeEndian.Uint32(b[12:16]))
			b = b[min(len(b), unix.SizeofInotifyEvent+nameLen):]

			if mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				select {
				case w.lost <- wd:
				case <-w.done:
					return
				}
				continue
			}
			// Any other event, and IN_Q_OVERFLOW (events were dropped):
			// reload. Names are not examined: hidden names matter too,
			// a Kubernetes-style mount swaps its "..data" link.
			select {
			case w.changed <- struct{}{}:
			default: // a reload is already pending
			}
		}
	}
}
