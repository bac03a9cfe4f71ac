package main

import (
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifier speaks sd_notify(3) when systemd (Type=notify) asked for it by
// setting NOTIFY_SOCKET, and is silent otherwise.
type notifier struct {
	log *slog.Logger
	// stopping is set with STOPPING=1: a daemon shutting down closes its
	// listeners, and the watchdog has nothing left to vouch for.
	stopping atomic.Bool
}

func newNotifier(log *slog.Logger) *notifier { return &notifier{log: log} }

func (n *notifier) send(state string) {
	if strings.HasPrefix(state, "STOPPING=1") {
		n.stopping.Store(true)
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", "state", state, "error", err)
	}
}

func (n *notifier) ready(status string) { n.send("READY=1\nSTATUS=" + status) }

// watchdog pings systemd (WATCHDOG=1, with the status line) at half the
// WatchdogSec interval, each time only after check passed: a daemon that
// no longer serves mail falls silent, and systemd restarts it. check gets
// a quarter of the interval, so a slow answer still leaves the ping on
// time. A failing check is logged when it starts failing and when it
// passes again, not at every tick.
func (n *notifier) watchdog(check func(timeout time.Duration) error, status func() string) (stop func()) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		var failing error
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if n.stopping.Load() {
				return
			}
			if err := check(interval / 4); err != nil {
				if failing == nil {
					n.log.Error("watchdog: self-check failed, not telling systemd that the daemon is alive", "error", err)
				}
				failing = err
				continue
			}
			if failing != nil {
				n.log.Info("watchdog: self-check passes again")
				failing = nil
			}
			n.send("WATCHDOG=1\nSTATUS=" + status())
		}
	}()
	return func() { close(done); <-finished }
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd 253+
// wants with RELOADING=1 (Type=notify-reload); older versions ignore it.
func monotonicUsec() string {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return strconv.FormatInt(ts.Sec*1_000_000+ts.Nsec/1000, 10)
}
