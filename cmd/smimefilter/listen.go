package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// listener returns the LMTP listener: the one systemd passed (socket
// activation), else one of our own. A socket from systemd that is not what
// the config names is a configuration error: the administrator would
// otherwise believe Postfix reaches the daemon where it does not.
func listener(c *Config) (net.Listener, bool, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	if len(ls) > 0 {
		if len(ls) != 1 || ls[0] == nil {
			return nil, true, errConfig{fmt.Errorf("socket activation: want exactly one stream socket, got %d: check smimefilter.socket", len(ls))}
		}
		l := ls[0]
		if err := matchActivated(c, l.Addr()); err != nil {
			l.Close()
			return nil, true, err
		}
		return l, true, nil
	}
	switch {
	case c.Listen.Socket != "":
		l, err := listenUnix(c.Listen.Socket, c.mode, c.gid)
		return l, false, err
	case c.Listen.Address != "":
		l, err := net.Listen("tcp", c.Listen.Address)
		if err != nil {
			return nil, false, fmt.Errorf("listening on %s: %w", c.Listen.Address, err)
		}
		return l, false, nil
	}
	return nil, false, errConfig{fmt.Errorf("%s: listen: no socket or address set, and no socket passed by systemd", c.path)}
}

// errConfig marks an error that is the configuration's fault (exit 2, which
// the unit's RestartPreventExitStatus keeps from restarting in a loop).
type errConfig struct{ error }

func (e errConfig) Unwrap() error { return e.error }

func matchActivated(c *Config, addr net.Addr) error {
	got := addr.String()
	switch {
	case c.Listen.Socket != "":
		if addr.Network() != "unix" || filepath.Clean(got) != filepath.Clean(c.Listen.Socket) {
			return errConfig{fmt.Errorf("%s: listen.socket is %s but systemd passed %s %s: make the config and smimefilter.socket agree, or remove listen.socket", c.path, c.Listen.Socket, addr.Network(), got)}
		}
	case c.Listen.Address != "":
		want, err := net.ResolveTCPAddr("tcp", c.Listen.Address)
		ta, ok := addr.(*net.TCPAddr)
		if err != nil || !ok || !ta.IP.Equal(want.IP) || ta.Port != want.Port {
			return errConfig{fmt.Errorf("%s: listen.address is %s but systemd passed %s %s: make the config and smimefilter.socket agree, or remove listen.address", c.path, c.Listen.Address, addr.Network(), got)}
		}
	}
	return nil
}

// listenUnix binds path, replacing a stale socket left by a crash but never
// one a live process still serves.
func listenUnix(path string, mode os.FileMode, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by a running process (another smimefilter?)", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("probing existing socket %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	// Bind with a umask that gives nobody access until the mode and group
	// below are set: no window where the socket is world-writable.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("setting group of %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("setting mode of %s: %w", path, err)
	}
	return l, nil
}
